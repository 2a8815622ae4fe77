"""`fakescope serve` on its embedded defaults, as the README offers it to a newcomer: SQLite, the local
object folder, the filesystem broker and the in-process rate limiter, with no Redis, Postgres or S3.

The whole path runs for real: the command starts its API and worker processes, the client packs a
shard and PUTs it to the API's signed local object URL, a worker consumes the task from the filesystem
broker, the rows land in SQLite, and the overlay is drawn from the local object folder on first GET.
"""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from fakescope.client import FakescopeClient
from tests.utils.stack import free_port, png_bytes, process_env, wait_until


@pytest.mark.slow
def test_serve_runs_a_job_end_to_end_on_embedded_defaults(tiny_checkpoint: Path, tmp_path: Path) -> None:
    port = free_port()
    env = process_env({"FAKESCOPE_DATA_DIR": str(tmp_path / "data"), "FAKESCOPE_CHECKPOINT": str(tiny_checkpoint)})
    cmd = [sys.executable, "-m", "fakescope.cli", "serve", "--port", str(port), "--flower-port", "0"]
    cmd += ["--classify-workers", "1", "--explain-workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    threading.Thread(target=lambda: out.extend(proc.stdout or []), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 180, "the embedded API")
        key = wait_until(
            lambda: re.search(r"API key for this run \(tenant 'default'\): (\S+)", "".join(out)), 30, "key"
        )
        src = tmp_path / "in"
        src.mkdir()
        for i in range(6):
            (src / f"{i}.png").write_bytes(png_bytes(51_000 + i))
        (src / "bad.png").write_bytes(b"not an image")
        with FakescopeClient(url, key.group(1)) as fs:
            job = fs.submit([src], explain=True)
            job = fs.wait(job["id"], timeout=300)
            assert job["state"] == "partially_succeeded", job
            assert job["counts"]["done"] == 6 and job["counts"]["failed"] == 1
            results = list(fs.results(job["id"]))
            assert sorted(r["name"] for r in results) == [f"{i}.png" for i in range(6)]
            for r in results[:2]:
                o = httpx.get(r["overlay_url"], timeout=30)
                assert o.status_code == 200 and Image.open(io.BytesIO(o.content)).format == "PNG"
                assert httpx.get(r["image_url"], timeout=30).content == (src / r["name"]).read_bytes()
            (failure,) = list(fs.failures(job["id"]))
            assert failure["name"] == "bad.png" and "not an image" in failure["error"]
        assert (tmp_path / "data").is_dir() and any((tmp_path / "data").rglob("*.db"))  # SQLite, in the data folder
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, "".join(out)[-3000:]
