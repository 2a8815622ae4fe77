"""One command for the whole job service on one machine: API, the worker pools and Flower.

``fakescope serve`` (or ``python -m serve.stack``) runs the prestart step (migrations, bucket,
bootstrap key), then starts each process as a child and stops them all on Ctrl-C. Endpoints come
from ``FAKESCOPE_*`` settings; with none set it runs on the embedded defaults (SQLite, a local
folder for objects, the filesystem broker), so a newcomer can try the API at once.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fakescope.settings import Settings

__all__ = ["Stack", "main"]

logger = logging.getLogger(__name__)

# The folder that holds api/, workers/ and this package (a source checkout's root): the children's
# working directory, and on their path, so they import these packages as the parent does.
REPO_ROOT = Path(__file__).resolve().parents[1]


# prctl(2): ask the kernel to signal a child when its parent dies.
_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """Runs in each child before it starts (Linux): SIGTERM it when ``parent`` dies, even by SIGKILL,
    so a killed ``fakescope serve`` leaves no API still answering on its port nor workers consuming."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Stack:
    """Child processes of the service, each logging to ``log_dir/<name>.log``."""

    env: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    settings: Settings = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # What every child will read from env, read once here: a misspelt variable stops the runner
        # before it starts anything, rather than each child in its own log.
        self.settings = Settings.from_env(self.env)

    def _spawn(
        self, name: str, args: Sequence[str], extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        env = {**self.env, **(extra_env or {})}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        # Own process group: stopping (or SIGKILLing) a worker takes its pool children with it.
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=functools.partial(_die_with, os.getpid()) if sys.platform == "linux" else None,
        )
        log.close()
        self.procs[name] = proc
        logger.info("started %s (pid %s): %s", name, proc.pid, " ".join(args))
        return proc

    def prestart(self) -> None:
        subprocess.run([sys.executable, "-m", "api.prestart"], cwd=REPO_ROOT, env=self._env(), check=True)

    def _env(self) -> dict[str, str]:
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        return env

    def start_api(self, host: str = "127.0.0.1", port: int = 8000, name: str = "api") -> subprocess.Popen[bytes]:
        return self._spawn(name, ["-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port)])

    def start_worker(
        self,
        pool: str,
        name: str | None = None,
        concurrency: int = 1,
        gpu: str | None = None,
        metrics_port: int | None = None,
        threads: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """A worker of ``pool`` (classify, explain, webhooks or train) consuming that pool's queue only."""
        queue = str(getattr(self.settings, f"queue_{pool}"))
        name = name or pool
        args = [
            "-m", "celery", "-A", "workers.celery_app", "worker",
            "-Q", queue, "-n", f"{name}@%h", "-c", str(concurrency), "-P", "prefork",
            "-E", "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        ]  # fmt: skip
        extra = {"FAKESCOPE_WORKER_POOL": pool}
        if gpu is not None:
            extra["CUDA_VISIBLE_DEVICES"] = gpu
        if metrics_port is not None:
            extra["FAKESCOPE_METRICS_PORT"] = str(metrics_port)
        if threads is not None:
            extra.update(dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS"), str(threads)))
        return self._spawn(name, args, extra)

    def start_flower(self, host: str = "127.0.0.1", port: int = 5555, name: str = "flower") -> subprocess.Popen[bytes]:
        args = ["-m", "celery", "-A", "workers.celery_app", "flower", f"--address={host}", f"--port={port}"]
        if auth := self.settings.flower_basic_auth:
            args.append(f"--basic-auth={auth}")
        return self._spawn(name, args)

    def start_sweeper(self, name: str = "sweeper") -> subprocess.Popen[bytes]:
        return self._spawn(name, ["-m", "fakescope.cli", "sweep"])

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def local_secrets(data_dir: Path) -> dict[str, str]:
    """The secrets of a ``fakescope serve`` data folder, made on first use and kept (mode 0600) in
    ``secrets.json``: the key that signs local object URLs and Flower's basic-auth credentials. No
    default secret is ever shared between two installations."""
    path = data_dir / "secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    wanted = {
        "FAKESCOPE_SECRET_KEY": lambda: secrets.token_urlsafe(32),
        "FAKESCOPE_FLOWER_BASIC_AUTH": lambda: "admin:" + secrets.token_urlsafe(12),
    }
    if any(name not in stored for name in wanted):
        stored.update({name: make() for name, make in wanted.items() if name not in stored})
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(stored, indent=2) + "\n")
        tmp.replace(path)
    return stored


def main(argv: Sequence[str] | None = None) -> int:
    """``fakescope serve``: the whole stack in the foreground."""
    p = argparse.ArgumentParser(prog="fakescope serve", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--flower-port", type=int, default=5555, help="0 disables Flower")
    p.add_argument(
        "--classify-workers",
        type=int,
        default=min(os.cpu_count() or 1, 4),
        help="classify worker processes on the CPU (default: one per core, at most 4), the cores split between them",
    )
    p.add_argument("--explain-workers", type=int, default=1, help="explain worker processes")
    p.add_argument(
        "--train-workers", type=int, default=1, help="train worker processes: fine-tunes (fakescope models train)"
    )
    p.add_argument("--gpus", default="", help="comma-separated GPU ids: one classify worker pinned to each")
    p.add_argument("--log-dir", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    env = dict(os.environ)
    env.setdefault("FAKESCOPE_PUBLIC_URL", f"http://{args.host}:{args.port}")
    if not env.get("FAKESCOPE_BOOTSTRAP_API_KEY"):
        env["FAKESCOPE_BOOTSTRAP_API_KEY"] = "fks_dev_" + secrets.token_urlsafe(16)
        print(f"API key for this run (tenant 'default'): {env['FAKESCOPE_BOOTSTRAP_API_KEY']}", flush=True)
    data_dir = Path(env.get("FAKESCOPE_DATA_DIR", ".fakescope")).resolve()
    env["FAKESCOPE_DATA_DIR"] = str(data_dir)
    for name, value in local_secrets(data_dir).items():
        if not env.get(name):
            env[name] = value
    stack = Stack(env=env, log_dir=args.log_dir or data_dir / "logs")
    stack.prestart()
    stack.start_api(args.host, args.port)
    gpus = [g for g in args.gpus.split(",") if g.strip()]
    if gpus:
        for g in gpus:
            stack.start_worker("classify", name=f"classify-gpu{g}", gpu=g)
    else:
        # Processes rather than threads: on 2 cores two 1-thread workers classify 120 images/s end to end,
        # one 2-thread worker 78 (ops/bench/README.md); torch's threads wait on each other at 32x32.
        threads = max(1, (os.cpu_count() or 1) // max(1, args.classify_workers))
        for i in range(args.classify_workers):
            stack.start_worker("classify", name=f"classify-{i}", threads=threads)
    for i in range(args.explain_workers):
        stack.start_worker("explain", name=f"explain-{i}")
    # Webhook deliveries wait on receivers, not on the CPU: their own small pool, so a slow receiver
    # holds neither a request nor a classify worker.
    stack.start_worker("webhooks", name="webhooks-0", concurrency=2, threads=1)
    # Fine-tunes run one epoch a task on their own queue: a long one never holds a classify worker.
    for i in range(args.train_workers):
        stack.start_worker("train", name=f"train-{i}")
    stack.start_sweeper()
    if args.flower_port:
        stack.start_flower(args.host, args.flower_port)
        print(
            f"Flower on http://{args.host}:{args.flower_port} (user:password {env['FAKESCOPE_FLOWER_BASIC_AUTH']}, "
            f"kept in {data_dir / 'secrets.json'})",
            flush=True,
        )
    print(f"API on http://{args.host}:{args.port}/docs, logs in {stack.log_dir}; Ctrl-C stops.", flush=True)

    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)  # the terminal closed: stop the children too, as on Ctrl-C
    try:
        while not stopping:
            dead = [n for n, pr in stack.procs.items() if pr.poll() is not None]
            if dead:
                logger.error("process exited: %s (see %s)", ", ".join(dead), stack.log_dir)
                return 1
            time.sleep(1)
    finally:
        stack.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
