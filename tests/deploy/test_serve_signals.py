"""`fakescope serve` itself, killed (SIGKILL) or hung up on (SIGHUP): its API and workers go with it.

The probe of the untrusted-input issue: killed by either, serve left its children running (API,
workers, sweeper) and the port kept answering. ``test_serve_children.py`` holds the mechanism on a
stand-in parent; this runs the real command with its real children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.deploy.test_serve_children import _alive
from tests.utils.stack import free_port, process_env, wait_until


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            children = {int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()}
        except FileNotFoundError:
            continue
        found |= children
        todo.extend(children)
    return found


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are a Linux feature")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_item12_serve_takes_its_api_and_workers_with_it(
    sig: signal.Signals, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = process_env({"FAKESCOPE_DATA_DIR": str(tmp_path / "data"), "FAKESCOPE_CHECKPOINT": str(tiny_checkpoint)})
    cmd = [sys.executable, "-m", "fakescope.cli", "serve", "--port", str(port), "--flower-port", "0"]
    cmd += ["--classify-workers", "1", "--explain-workers", "1", "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: set[int] = set()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 180, "the embedded API")
        children = _descendants(proc.pid)
        assert len(children) >= 3, children  # the API, a classify and an explain worker (and their pools)
        proc.send_signal(sig)
        proc.wait(60)
        wait_until(lambda: not any(_alive(c) for c in children), 60, "every child of serve to exit")
        assert not _answers(port), "the API's port still answers"
    finally:
        # Whatever the outcome, nothing this test started outlives it (a pid is checked to be still
        # one of its processes, by the data folder in its environment, before it is killed).
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for pid in children:
            with contextlib.suppress(OSError):
                if _alive(pid) and str(tmp_path).encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    os.kill(pid, signal.SIGKILL)
