"""`fakescope serve`'s children do not outlive it: killed by SIGKILL (no handler of its own runs), its
API and workers are signalled by the kernel (SIGHUP is handled like Ctrl-C, in ``serve.stack.main``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils.stack import wait_until

# A stand-in for `fakescope serve`: the same Stack spawns one long-lived child, then waits.
PARENT = """
import sys, time
from pathlib import Path
from serve.stack import Stack
stack = Stack(env={}, log_dir=Path(sys.argv[1]))
child = stack._spawn("child", ["-c", "import time; time.sleep(300)"])
print(child.pid, flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) is gone for this purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are a Linux feature")
def test_a_sigkilled_parent_takes_its_children_with_it(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()
    parent.wait(10)
    wait_until(lambda: not _alive(child), 10, "the child to die with its parent")
