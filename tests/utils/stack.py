"""The job service's dev stack, one harness for the tests and the benchmarks: a fresh Postgres
database, a Redis db with private queue names, an S3 server on loopback (moto, or
``$FAKESCOPE_TEST_S3_ENDPOINT``), the environment that points processes at them, and real API, worker
and Flower processes (``serve.stack.Stack``).

Loaded for every suite by the root conftest (``pytest_plugins``); the stack is built once per session
and shared, whichever folder asks first. ``ops/`` benchmarks build theirs with :func:`create_env` and
:func:`process_env` (``python -m ops.bench.bench_service`` from the repository root).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
import redis
from PIL import Image
from sqlmodel import Session

from fakescope.db.engine import get_engine, new_session
from fakescope.settings import Settings
from fakescope.storage import ObjectStore, get_store
from serve.stack import Stack

PG_ADMIN_URL = os.environ.get("FAKESCOPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FAKESCOPE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
FLOWER_AUTH = "flower:test-only-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError):
            last = predicate()
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def png_bytes(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class ServiceEnv:
    """Database, broker and object store of the session, without processes."""

    settings: Settings
    env: dict[str, str]
    tmp: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    # The moto server's process (None when the S3 endpoint came from outside): a benchmark counts its CPU.
    s3_pid: int | None = None

    def session(self) -> Session:
        return new_session(self.settings.sqlalchemy_url)

    @property
    def store(self) -> ObjectStore:
        return get_store(self.settings)

    def close(self) -> None:
        """Drops what :func:`create_env` made (queues, database, S3 server)."""
        _undo(self.cleanups)


def _undo(cleanups: list[Callable[[], None]]) -> None:
    """Runs ``cleanups``, last made first, each whatever the others do, and forgets them."""
    while cleanups:
        with contextlib.suppress(Exception):
            cleanups.pop()()


@dataclass
class ServiceStack:
    """The running processes on top of a :class:`ServiceEnv`."""

    svc: ServiceEnv
    stack: Stack
    api_url: str
    flower_url: str
    keys: dict[str, str]
    classify_worker: str = "classify-1"
    # Each worker process serves Prometheus metrics on its own port (kept across restarts).
    metrics_ports: dict[str, int] = field(default_factory=dict)

    def metrics_port(self, name: str) -> int:
        return self.metrics_ports.setdefault(name, free_port())

    def logs(self) -> str:
        out = []
        for f in sorted(self.stack.log_dir.glob("*.log")):
            out.append(f"==== {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(out)

    def client(self, tenant: str = "a") -> httpx.Client:
        return httpx.Client(base_url=self.api_url, headers={"X-API-Key": self.keys[tenant]}, timeout=60)

    def wait_job(self, job_id: str, timeout: float = 120, tenant: str = "a") -> dict[str, Any]:
        with self.client(tenant) as c:

            def finished() -> dict[str, Any] | None:
                j = c.get(f"/v1/jobs/{job_id}").json()
                return j if j["state"] not in ("queued", "running", "awaiting_upload") else None

            try:
                return wait_until(finished, timeout, f"job {job_id} to finish", interval=0.5)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{self.logs()}") from None

    def unacked_jobs(self) -> list[str | None]:
        """The job ids of the task messages delivered to a worker and not acknowledged (Kombu's Redis
        transport keeps them in its ``unacked`` hash until the visibility timeout restores them): what
        a killed worker leaves behind, seen directly instead of by waiting for nothing to happen."""
        assert self.svc.settings.broker_url is not None
        broker = redis.Redis.from_url(self.svc.settings.broker_url)
        return [_job_of(json.loads(raw)[0]) for raw in broker.hvals("unacked")]

    def ensure_classify_worker(self) -> None:
        """Starts a fresh classify worker if a test left none running (a failure between a kill and
        the restart), so that one test's failure is not every later test's."""
        proc = self.stack.procs.get(self.classify_worker)
        if proc is not None and proc.poll() is None:
            return
        self.classify_worker = f"classify-{int(self.classify_worker.rsplit('-', 1)[1]) + 1}"
        self.start_worker("classify", self.classify_worker)

    def flower_workers(self) -> dict[str, Any]:
        user, pw = FLOWER_AUTH.split(":")
        r = httpx.get(f"{self.flower_url}/api/workers", params={"refresh": "1"}, auth=(user, pw), timeout=30)
        r.raise_for_status()
        return r.json()

    def worker_ready(self, name: str) -> bool:
        """Whether the worker called ``name`` answers a ping on the broker."""
        from fakescope.tasks import make_celery

        app = make_celery(self.svc.settings)
        try:
            replies = app.control.ping(timeout=1.0) or []
        finally:
            app.close()
        return any(name in r for reply in replies for r in reply)

    def start_worker(self, pool: str, name: str) -> None:
        self.stack.start_worker(pool, name=name, metrics_port=self.metrics_port(name))
        wait_until(lambda: self.worker_ready(f"{name}@"), 300, f"worker {name}", interval=1)


def _job_of(message: dict[str, Any]) -> str | None:
    """The ``job_id`` argument of a Celery task message (protocol 2's body: [args, kwargs, embed])."""
    body = json.loads(base64.b64decode(message["body"])) if message.get("body") else None
    return str(body[1].get("job_id")) if isinstance(body, list) and len(body) > 1 else None


def _start_moto(tmp: Path) -> tuple[str, subprocess.Popen[bytes], Callable[[], None]]:
    port = free_port()
    log = (tmp / "moto.log").open("wb")
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url, timeout=2).status_code < 500, 60, "moto_server")

    def stop() -> None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        log.close()

    return url, proc, stop


def create_env(
    tmp: Path,
    *,
    name: str = "test",
    settings: Mapping[str, str] | None = None,
    postgres_url: str = PG_ADMIN_URL,
    redis_url: str = REDIS_URL,
    redis_db: int = int(os.environ.get("FAKESCOPE_TEST_REDIS_DB", "11")),
    s3: str | None = os.environ.get("FAKESCOPE_TEST_S3_ENDPOINT"),
) -> ServiceEnv:
    """A fresh database ``fakescope_<name>_<token>`` on ``postgres_url``, private queue names on a Redis
    db, a bucket on an S3 server (``s3``, or a moto server started here, logging to ``tmp/moto.log``),
    and the ``FAKESCOPE_*`` environment pointing at them, with ``settings`` on top. ``close()`` removes
    them all."""
    token = secrets.token_hex(4)
    cleanups: list[Callable[[], None]] = []
    s3_pid = None
    try:
        dbname = f"fakescope_{name}_{token}"
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')

        def drop_db() -> None:
            get_engine.cache_clear()
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

        cleanups.append(drop_db)
        if not s3:
            s3, moto, stop_moto = _start_moto(tmp)
            s3_pid = moto.pid
            cleanups.append(stop_moto)
        broker = f"{redis_url.rstrip('/')}/{redis_db}"
        queues = {pool: f"{pool}-{name}-{token}" for pool in ("classify", "explain", "webhooks")}

        def drop_queues() -> None:
            r = redis.Redis.from_url(broker)
            r.delete(*queues.values())
            r.close()

        cleanups.append(drop_queues)
        env = {
            "FAKESCOPE_DATABASE_URL": postgres_url.rsplit("/", 1)[0] + f"/{dbname}",
            "FAKESCOPE_BROKER_URL": broker,
            "FAKESCOPE_S3_ENDPOINT": s3,
            "FAKESCOPE_S3_ACCESS_KEY": "testing",
            "FAKESCOPE_S3_SECRET_KEY": "fakescope-test-s3-secret-7f3a91",  # distinctive: the logs are searched for it
            "FAKESCOPE_S3_BUCKET": f"fakescope-{name}-{token}",
            "FAKESCOPE_QUEUE_CLASSIFY": queues["classify"],
            "FAKESCOPE_QUEUE_EXPLAIN": queues["explain"],
            "FAKESCOPE_QUEUE_WEBHOOKS": queues["webhooks"],
            "FAKESCOPE_DATA_DIR": str(tmp / "data"),
            **(settings or {}),
        }
        # As the processes started with env read it: every variable.
        return ServiceEnv(Settings.from_env(env), env, tmp, cleanups, s3_pid)
    except BaseException:
        _undo(cleanups)  # whatever was made before the failure (the database, the S3 server) goes with it
        raise


# What the tests' processes run with, on top of create_env's endpoints.
TEST_SETTINGS = {
    "FAKESCOPE_CHUNK_SIZE": "10",
    "FAKESCOPE_EXPLAIN_CHUNK_SIZE": "4",
    # Short enough that a message of a SIGKILLed worker comes back within the test, and still
    # above the task time limit, as in production.
    "FAKESCOPE_TASK_TIME_LIMIT_S": "90",
    "FAKESCOPE_VISIBILITY_TIMEOUT_S": "100",
    "FAKESCOPE_RESTORE_INTERVAL_S": "1",
    "FAKESCOPE_FLOWER_BASIC_AUTH": FLOWER_AUTH,
    # The tests' webhook receivers listen on loopback; everything else private stays refused.
    "FAKESCOPE_CALLBACK_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
    "FAKESCOPE_CALLBACK_BACKOFF_S": "0.2",
    # Image URLs: the tests' own HTTP servers on loopback, over http, with a short deadline.
    "FAKESCOPE_FETCH_ALLOW_HTTP": "true",
    "FAKESCOPE_FETCH_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
    "FAKESCOPE_FETCH_DEADLINE_S": "3",
    "FAKESCOPE_FETCH_READ_TIMEOUT_S": "2",
    "FAKESCOPE_FETCH_MAX_BYTES": str(2 * 1024**2),
}


def build_env(tmp: Path, checkpoint: Path) -> ServiceEnv:
    """The test session's :func:`create_env`: :data:`TEST_SETTINGS` and the tiny checkpoint."""
    return create_env(tmp, settings={**TEST_SETTINGS, "FAKESCOPE_CHECKPOINT": str(checkpoint)})


def process_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of the stack's processes: this one's, less its ``FAKESCOPE_*`` (the service's
    settings come from ``extra`` only, never from whatever the shell had), offline, one thread each."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKESCOPE_")}
    env.update(extra)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return env


_state: dict[str, Any] = {}


def _cleanup_all() -> None:
    stack = _state.pop("stack", None)
    if stack is not None:
        stack.stack.stop_all()
    svc = _state.pop("svc", None)
    if svc is not None:
        svc.close()


def get_service_env(request: pytest.FixtureRequest) -> ServiceEnv:
    if "svc" not in _state:
        tmp = request.getfixturevalue("tmp_path_factory").mktemp("service")
        checkpoint = request.getfixturevalue("tiny_checkpoint")
        request.config.add_cleanup(_cleanup_all)
        svc = build_env(tmp, checkpoint)
        _state["svc"] = svc
        stack = Stack(env=process_env(svc.env), log_dir=tmp / "logs")
        stack.prestart()  # migrations and the bucket: the same prestart step production runs
    return _state["svc"]


def get_service_stack(request: pytest.FixtureRequest) -> ServiceStack:
    if "stack" not in _state:
        from fakescope.service.tenants import create_api_key

        svc = get_service_env(request)
        api_port, flower_port = free_port(), free_port()
        env = process_env({**svc.env, "FAKESCOPE_PUBLIC_URL": f"http://127.0.0.1:{api_port}"})
        stack = Stack(env=env, log_dir=svc.tmp / "logs")
        with svc.session() as session:
            keys = {t: create_api_key(session, tenant_name=f"tenant-{t}")[1] for t in ("a", "b")}
        st = ServiceStack(
            svc=svc,
            stack=stack,
            api_url=f"http://127.0.0.1:{api_port}",
            flower_url=f"http://127.0.0.1:{flower_port}",
            keys=keys,
        )
        _state["stack"] = st
        stack.start_api(port=api_port)
        stack.start_worker("classify", name=st.classify_worker, metrics_port=st.metrics_port(st.classify_worker))
        stack.start_worker("explain", name="explain-1", metrics_port=st.metrics_port("explain-1"))
        stack.start_worker("webhooks", name="webhooks-1", metrics_port=st.metrics_port("webhooks-1"))
        stack.start_flower(port=flower_port)
        try:
            wait_until(lambda: httpx.get(f"{st.api_url}/readyz", timeout=5).status_code == 200, 90, "API /readyz")
            wait_until(
                lambda: all(st.worker_ready(f"{w}-1@") for w in ("classify", "explain", "webhooks")), 180, "workers", 1
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{st.logs()}") from None
    return _state["stack"]


@pytest.fixture
def service_env(request: pytest.FixtureRequest) -> ServiceEnv:
    return get_service_env(request)


@pytest.fixture
def service_stack(request: pytest.FixtureRequest) -> Iterator[ServiceStack]:
    st = get_service_stack(request)
    yield st
    st.ensure_classify_worker()


# Fault tests: a private broker, private processes and tight settings, on the session's database and bucket.


@dataclass
class PrivateRedis:
    """A ``redis-server`` of one test on its own port, without persistence: killed, its data is gone."""

    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=self.log.parent, start_new_session=True
            )
        wait_until(lambda: redis.Redis(port=self.port, socket_timeout=1).ping(), 30, f"redis on :{self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@dataclass
class PrivateStack(ServiceStack):
    """A :class:`ServiceStack` of one fault test; workers may get settings of their own."""

    broker: PrivateRedis | None = None
    stacks: list[Stack] = field(default_factory=list)

    def start_worker(
        self, pool: str, name: str, *, wait: bool = True, settings: Mapping[str, str] | None = None
    ) -> None:
        """Starts worker ``name`` of ``pool`` with ``settings`` (``FAKESCOPE_*``) on top of the stack's;
        with ``wait``, returns once it answers a ping."""
        stack = Stack(env={**self.stack.env, **(settings or {})}, log_dir=self.stack.log_dir)
        self.stacks.append(stack)
        stack.start_worker(pool, name=name)
        if wait:
            try:
                wait_until(lambda: self.worker_ready(f"{name}@"), 300, f"worker {name}", interval=1)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{self.logs()}") from None

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        for stack in [self.stack, *self.stacks]:
            stack.stop(name, sig=sig)

    def proc(self, name: str) -> subprocess.Popen[bytes]:
        return next(s.procs[name] for s in [self.stack, *self.stacks] if name in s.procs)

    def pid(self, name: str) -> int:
        """The process (and process group) id of ``name``."""
        return self.proc(name).pid

    def log(self, name: str) -> str:
        return (self.stack.log_dir / f"{name}.log").read_text(errors="replace")


@dataclass
class HoldPoint:
    """The test's side of the workers' hold point (``workers.runtime.hold_point``).

    A worker started with :attr:`env` stops each chunk task once its start is committed, until the test
    releases it: the test kills the worker while it provably holds a started chunk, with no timing luck.
    """

    folder: Path
    seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        return {"FAKESCOPE_TEST_HOLD_DIR": str(self.folder)}

    def next_held(self, timeout: float = 120) -> tuple[str, dict[str, Any]]:
        """Waits for a task not seen before to stop at the hold point; returns its id and its job and items."""

        def arrived() -> Path | None:
            return next((f for f in sorted(self.folder.glob("*.reached")) if f.stem not in self.seen), None)

        reached: Path = wait_until(arrived, timeout, "a task at the hold point", interval=0.01)
        self.seen.add(reached.stem)
        return reached.stem, json.loads(reached.read_text())

    def release(self, task_id: str) -> None:
        (self.folder / f"{task_id}.release").touch()

    def release_all(self) -> None:
        """Lets the held task and every later one go on."""
        (self.folder / "release").touch()

    def hold_after(self, chunks: int, job_id: str | None = None) -> tuple[str, dict[str, Any]]:
        """Lets ``chunks`` tasks through, one at a time, and returns the next, held: with one worker
        process, the ones let through have finished when it arrives. With ``job_id``, tasks of other
        jobs (a sweeper re-sends any job's overdue chunks in the session's database) go on uncounted."""
        passed = 0
        while True:
            task_id, info = self.next_held()
            if job_id is not None and info.get("job_id") != job_id:
                self.release(task_id)
                continue
            if passed == chunks:
                return task_id, info
            self.release(task_id)
            passed += 1


@contextlib.contextmanager
def private_stack(
    svc: ServiceEnv,
    name: str,
    *,
    api: bool = True,
    sweeper: bool = False,
    settings: Mapping[str, str] | None = None,
) -> Iterator[PrivateStack]:
    """API (and sweeper) on a private Redis with ``settings`` (``FAKESCOPE_*`` overrides); start workers
    with ``start_worker``.

    Its own broker keeps the test's short visibility timeout away from the session's messages: Kombu
    restores every unacknowledged message of a Redis database, whichever queue it came from.
    """
    from fakescope.service.tenants import create_api_key

    log_dir = svc.tmp / f"logs-{name}"
    log_dir.mkdir(parents=True, exist_ok=True)
    broker = PrivateRedis(free_port(), log_dir / "redis.log")
    broker.start()
    api_port = free_port()
    token = secrets.token_hex(4)
    env = {
        **svc.env,
        "FAKESCOPE_BROKER_URL": broker.url,
        "FAKESCOPE_QUEUE_CLASSIFY": f"classify-{token}",
        "FAKESCOPE_QUEUE_EXPLAIN": f"explain-{token}",
        "FAKESCOPE_QUEUE_WEBHOOKS": f"webhooks-{token}",
        "FAKESCOPE_PUBLIC_URL": f"http://127.0.0.1:{api_port}",
        "FAKESCOPE_LOG_FORMAT": "text",
        **(settings or {}),
    }
    cfg = Settings.from_env(env)
    with new_session(cfg.sqlalchemy_url) as session:
        key = create_api_key(session, tenant_name=f"{name}-{token}")[1]
    stack = Stack(env=process_env(env), log_dir=log_dir)
    st = PrivateStack(
        svc=ServiceEnv(settings=cfg, env=env, tmp=svc.tmp),
        stack=stack,
        api_url=f"http://127.0.0.1:{api_port}",
        flower_url="",
        keys={"a": key},
        broker=broker,
    )
    try:
        if api:
            stack.start_api(port=api_port)
        if sweeper:
            stack.start_sweeper()
        if api:
            try:
                wait_until(lambda: httpx.get(f"{st.api_url}/readyz", timeout=5).status_code == 200, 90, "API /readyz")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{st.logs()}") from None
        yield st
    finally:
        for s in [*st.stacks, stack]:
            s.stop_all()
        broker.kill()
