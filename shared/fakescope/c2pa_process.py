"""Native C2PA reads in a helper process that is killed when a read overruns.

c2pa-rs cannot be interrupted from Python: a read abandoned in a thread kept a core busy (and the GIL
held beside the model) long after its image was answered. Here each worker process keeps one helper
process, started on its first read (importing c2pa costs about half a second, too much to pay per
read), that reads one file at a time from a pipe. A read that has not answered within its timeout
gets the helper SIGKILLed and reaped before the caller goes on; the next read starts a fresh one.

The helper also bounds itself, in case its parent cannot: before each read it lowers its CPU-time
limit to what that read may spend (the kernel stops it past that, parent or not), its address space is
capped, and it exits when its parent closes the pipe (a parent that died). Run as
``python -m fakescope.c2pa_process``, it is the helper.
"""

from __future__ import annotations

import io
import json
import math
import os
import resource
import select
import struct
import subprocess
import sys
import threading
import time
from typing import Any, BinaryIO

__all__ = ["C2paReadError", "C2paReaderFailed", "read_manifest_store"]

# Starting the helper (interpreter and c2pa's native library) is not the file's cost: it has its own wait.
STARTUP_TIMEOUT_S = 30.0
# Address space of the helper: c2pa-rs holds the file and hashes it; the largest input is 64 MiB.
MEMORY_LIMIT_BYTES = 2 * 1024**3
_READY = b"R"
_LENGTH = struct.Struct(">I")


class C2paReadError(Exception):
    """c2pa-rs refused the file: the message is its own."""


class C2paReaderFailed(Exception):
    """The helper died reading the file (a crash, its own CPU or memory cap) or did not start: the
    file's manifest was not read, which says nothing about the manifest."""


# ----------------------------------------------------------------------------------------------
# The helper's side


def _c2pa_settings(trust_anchors_pem: str | None) -> dict[str, Any]:
    """Reader settings: no network, ever, and the operator's trust list when there is one.

    c2pa-rs fetches a manifest from the URL a file names when none is embedded, and can fetch OCSP
    responses; on a service reading uploads either is a request an attacker chooses.
    """
    # Without a trust list every signer is "untrusted"; c2pa-rs would list that as a failure on every
    # manifest, and ``trusted: None`` already says no list was asked.
    verify = {"remote_manifest_fetch": False, "ocsp_fetch": False, "verify_trust": trust_anchors_pem is not None}
    settings: dict[str, Any] = {"verify": verify}
    if trust_anchors_pem is not None:
        settings["trust"] = {"trust_anchors": trust_anchors_pem}
    return settings


def _read_json(c2pa: Any, data: bytes, mime: str, trust_anchors_pem: str | None) -> tuple[str | None, str | None]:
    """(the manifest store as c2pa-rs's JSON or None when there is none, why the trust list was unusable).

    A trust list c2pa-rs cannot parse is the operator's error, not the file's: the file is then read
    without it, so a broken configuration neither hides tampering nor marks every upload tampered.
    """
    trust_error = None
    try:
        context = c2pa.Context.from_dict(_c2pa_settings(trust_anchors_pem))
    except c2pa.C2paError as exc:
        if trust_anchors_pem is None:
            raise
        trust_error = str(exc)
        context = c2pa.Context.from_dict(_c2pa_settings(None))
    with context:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, context)
        if reader is None:
            return None, trust_error
        with reader:
            return reader.json(), trust_error


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    return data if len(data) == n else None


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    import c2pa  # type: ignore[import-untyped]  # (no stubs) here only, never in the caller's process

    stdout.write(_READY)
    stdout.flush()
    while (head := _read_exact(stdin, _LENGTH.size)) is not None:
        request = json.loads(_read_exact(stdin, _LENGTH.unpack(head)[0]) or b"null")
        data = _read_exact(stdin, request["size"])
        if data is None:
            return
        # The kernel stops this process (SIGXCPU) once the read has spent its own CPU time and a second.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        spent = usage.ru_utime + usage.ru_stime
        resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(spent + request["cpu_s"]) + 1, resource.RLIM_INFINITY))
        answer: dict[str, Any]
        try:
            answer = {"ok": _read_json(c2pa, data, request["mime"], request["trust"])}
        except (c2pa.C2paError, OSError, ValueError, TypeError) as exc:
            answer = {"error": str(exc) or type(exc).__name__.lstrip("_")}
        body = json.dumps(answer).encode()
        stdout.write(_LENGTH.pack(len(body)) + body)
        stdout.flush()


# ----------------------------------------------------------------------------------------------
# The caller's side


class _Helper:
    """One helper process and the lock that gives it one read at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        # A request sent and its answer not read whole: the pipe is out of step and the helper must go.
        # Set before anything can be interrupted, cleared only by a read that completed.
        self.dirty = False

    def _start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fakescope.c2pa_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.proc = proc
        try:
            self._receive(proc, len(_READY), time.monotonic() + STARTUP_TIMEOUT_S)
        except TimeoutError:
            raise C2paReaderFailed(f"the c2pa reader did not start in {STARTUP_TIMEOUT_S:g} s") from None
        return proc

    def kill(self) -> None:
        """SIGKILLs and reaps the helper; safe to repeat when an earlier call was itself interrupted."""
        proc = self.proc
        if proc is None:
            return
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        self.proc = None

    @staticmethod
    def _receive(proc: subprocess.Popen[bytes], n: int, deadline: float) -> bytes:
        assert proc.stdout is not None
        fd, out = proc.stdout.fileno(), b""
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, n - len(out))
            if not chunk:
                raise C2paReaderFailed(f"the c2pa reader died ({_exit_reason(proc.wait())})")
            out += chunk
        return out

    def read(self, data: bytes, mime: str, trust_anchors_pem: str | None, timeout_s: float) -> dict[str, Any]:
        if self.proc is not None and (self.dirty or self.proc.poll() is not None):
            self.kill()
        self.dirty = True
        try:
            proc = self.proc if self.proc is not None else self._start()
            request = json.dumps({"mime": mime, "trust": trust_anchors_pem, "size": len(data), "cpu_s": timeout_s})
            assert proc.stdin is not None
            proc.stdin.write(_LENGTH.pack(len(request)) + request.encode() + data)
            proc.stdin.flush()
            deadline = time.monotonic() + timeout_s
            size = _LENGTH.unpack(self._receive(proc, _LENGTH.size, deadline))[0]
            answer: dict[str, Any] = json.loads(self._receive(proc, size, deadline))
        except BaseException as exc:
            # Whatever stopped the read (its timeout, the helper dying, the per-image time limit, a
            # task's soft limit), the helper goes, and with it whatever it was reading.
            self.kill()
            if isinstance(exc, TimeoutError):
                raise TimeoutError(f"c2pa read did not finish in {timeout_s:g} s; the reader was stopped") from None
            if isinstance(exc, BrokenPipeError):
                raise C2paReaderFailed("the c2pa reader died") from None
            raise
        self.dirty = False
        return answer


def _exit_reason(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit status {code}"


_HELPER = _Helper()


def _forget_helper() -> None:
    # A forked child must not talk to its parent's helper, nor hold its pipes open.
    global _HELPER
    old, _HELPER = _HELPER, _Helper()
    if old.proc is not None:
        for pipe in (old.proc.stdin, old.proc.stdout):
            if pipe is not None:
                pipe.close()


os.register_at_fork(after_in_child=_forget_helper)


def read_manifest_store(
    data: bytes, mime: str, trust_anchors_pem: str | None, timeout_s: float
) -> tuple[str | None, str | None]:
    """c2pa-rs's JSON of the file's manifest store (None without one), and why the trust list was
    unusable (None when it was, or there is none), read in the helper process.

    Raises:
        TimeoutError: the read took longer than ``timeout_s``; the helper was killed.
        C2paReadError: c2pa-rs refused the file.
        C2paReaderFailed: the helper died reading it, or did not start.
    """
    helper = _HELPER
    # Blocking, and bounded: whoever holds the helper lets go within its own timeout (and a plain
    # lock's ``with`` has no Python frame where the time limit's exception could land holding it).
    with helper.lock:
        answer = helper.read(data, mime, trust_anchors_pem, timeout_s)
    if "error" in answer:
        raise C2paReadError(answer["error"])
    raw, trust_error = answer["ok"]
    return raw, trust_error


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
