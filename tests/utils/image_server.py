"""An HTTP server on loopback that serves what image URLs can do to a fetcher: an image, redirects
(to itself and to metadata addresses), an endless body, a trickle, a non-image, a 404."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.utils.stack import png_bytes

IMAGES = {f"/img/{i}.png": png_bytes(61_100 + i) for i in range(3)}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stop = threading.Event()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes, content_type: str = "image/png", **headers: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path in IMAGES:
            self._send(200, IMAGES[path])
        elif path == "/redirect":
            self._send(302, b"", Location="/img/0.png")
        elif path == "/redirect-loop":
            self._send(302, b"", Location="/redirect-loop")
        elif path == "/to-metadata":
            self._send(302, b"", Location="http://169.254.169.254/latest/meta-data/")
        elif path == "/text":
            # Says it is an image; its bytes say otherwise.
            self._send(200, b"<html>not an image</html>", "image/png")
        elif path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            chunk = IMAGES["/img/0.png"][:8] + b"\0" * 65528
            while not self.stop.is_set():
                try:
                    self.wfile.write(chunk)
                except OSError:
                    return
        elif path == "/slow":
            body = IMAGES["/img/1.png"]
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(len(body)):
                if self.stop.is_set():
                    return
                try:
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.25)
        else:
            self._send(404, b"not found", "text/plain")


@contextmanager
def image_server() -> Iterator[str]:
    """Serves on 127.0.0.1 on a free port; yields its base URL (``http://127.0.0.1:PORT``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    _Handler.stop.clear()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _Handler.stop.set()
        server.shutdown()
        server.server_close()
