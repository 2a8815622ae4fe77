"""HTTP peers that are slow on purpose: a receiver that trickles its answer, a sender that never sends
its body."""

from __future__ import annotations

import contextlib
import io
import socket
import time

__all__ = ["answer_before_body", "trickle"]


def trickle(wfile: io.BufferedIOBase, *, every_s: float = 0.2, most: int = 3000) -> None:
    """Writes a response body one byte every ``every_s`` seconds, up to ``most`` bytes or until the
    client hangs up: each read is quick, the body never ends."""
    with contextlib.suppress(OSError):
        for _ in range(most):
            wfile.write(b"x")
            wfile.flush()
            time.sleep(every_s)


def answer_before_body(url: str, key: str, length: int, *, content_type: str) -> bytes:
    """Sends the headers of a ``POST /v1/jobs`` declaring ``length`` bytes of ``content_type`` body, and
    none of the body: what the API at ``url`` answers while it waits for them (empty when it waits for
    the body instead)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
        )
        s.sendall(head.encode())
        s.settimeout(15)
        got = b""
        with contextlib.suppress(TimeoutError):
            while not got.endswith(b"}"):  # the JSON detail closes the answer
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        return got
