"""The broker and the database go away mid-job: the API answers 503, and the job still ends with one result each.

Each test runs its own API, worker (and sweeper) on a private Redis (see ``private_stack``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import col, select

from fakescope.db.models import ItemStatus, JobItem
from tests.utils.stack import PG_ADMIN_URL, HoldPoint, PrivateStack, ServiceEnv, png_bytes, private_stack, wait_until

pytestmark = pytest.mark.slow

UNAVAILABLE = {
    "broker": "the queue broker is unavailable or busy; retry shortly",
    "database": "the database is unavailable or busy; retry shortly",
}


def _files(seed: int, n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{i}.png", png_bytes(seed + i), "image/png")) for i in range(n)]


def _done(c: httpx.Client, job_id: str) -> int:
    return c.get(f"/v1/jobs/{job_id}").json()["counts"]["done"]


def _job_held_mid_way(svc: ServiceEnv, st: PrivateStack, c: httpx.Client, seed: int, n: int) -> tuple[HoldPoint, str]:
    """Starts a classify worker behind a hold point and submits ``n`` images in chunks of three; returns
    once two chunks are answered and the third is started and held, so that a fault let loose now meets
    the job mid-way every time (``release_all`` lets the held chunk go on)."""
    hold = HoldPoint(svc.tmp / f"hold-{uuid.uuid4().hex[:8]}")
    st.start_worker("classify", "classify-1", settings=hold.env)
    r = c.post("/v1/jobs", files=_files(seed, n))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    hold.hold_after(2, job_id)
    assert _done(c, job_id) == 6
    return hold, job_id


def _assert_one_result_each(svc: ServiceEnv, st: PrivateStack, job_id: str, n: int) -> None:
    job = st.wait_job(job_id, timeout=180)
    assert job["state"] == "succeeded", job
    assert job["counts"]["done"] == n and job["counts"]["queued"] == 0
    with svc.session() as session:
        per_position = session.exec(
            select(JobItem.position, func.count()).where(JobItem.job_id == job_id).group_by(col(JobItem.position))
        ).all()
        items = session.exec(select(JobItem).where(col(JobItem.job_id) == job_id)).all()
    assert sorted(per_position) == [(p, 1) for p in range(n)]
    assert all(i.status == ItemStatus.DONE and i.prediction in ("real", "fake") for i in items)
    # No run died, so no start counts toward the poison limit beyond the one that finished (a run cut short
    # by the outage gave its start back, or its retry did not count one; a start the outage kept from
    # being counted leaves 0).
    assert {i.attempts for i in items} <= {0, 1}


def _wait_for_worker_to_lose_redis(st: PrivateStack, name: str) -> None:
    """Waits for worker ``name``'s consumer to log the lost connection; on a timeout the assertion carries
    the worker's log, so that a worker that never noticed is told apart from one that noticed late. The
    bound is generous: the worker's main process may spend a while in the Redis client's own reconnect
    back-off (an acknowledgement or an event sent into the outage) before its event loop gets to it."""
    try:
        wait_until(lambda: "Connection to broker lost" in st.log(name), 120, "the worker to lose Redis")
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- {name}.log (tail) ---\n{st.log(name)[-6000:]}") from None


def test_redis_restarted_without_its_data_mid_job(service_env: ServiceEnv) -> None:
    n = 60
    tight = {
        "FAKESCOPE_CHUNK_SIZE": "3",
        "FAKESCOPE_TASK_TIME_LIMIT_S": "20",
        "FAKESCOPE_VISIBILITY_TIMEOUT_S": "25",
        # The sweeper re-sends what the empty Redis forgot once it has waited this long.
        "FAKESCOPE_SWEEP_AFTER_S": "5",
        "FAKESCOPE_SWEEP_EVERY_S": "1",
    }
    with private_stack(service_env, "redis-restart", sweeper=True, settings=tight) as st:
        assert st.broker is not None
        with st.client() as c:
            # Redis dies mid-job every time, and the worker finishes its held chunk without a broker.
            hold, job_id = _job_held_mid_way(service_env, st, c, 32000, n)
            st.broker.kill()
            hold.release_all()

            # No broker: submissions are refused with a clear 503; reads still work.
            retry = {"Idempotency-Key": "submitted-during-the-outage"}
            r = c.post("/v1/jobs", files=_files(32100, 2), headers=retry)
            assert r.status_code == 503, r.text
            assert r.json()["detail"] == UNAVAILABLE["broker"] and r.headers["Retry-After"] == "5"
            assert c.get(f"/v1/jobs/{job_id}").status_code == 200

            # Back once the worker has seen it gone, so it has to reconnect rather than being restarted.
            _wait_for_worker_to_lose_redis(st, "classify-1")
            st.broker.start()  # same port, empty
            _assert_one_result_each(service_env, st, job_id, n)
            # The refused request left nothing behind: its retry is a new job, and it completes.
            r = c.post("/v1/jobs", files=_files(32100, 2), headers=retry)
            assert r.status_code == 202, r.text
            assert "Idempotent-Replayed" not in r.headers
            _assert_one_result_each(service_env, st, r.json()["id"], 2)
            assert c.post("/v1/jobs", files=_files(32100, 2), headers=retry).headers["Idempotent-Replayed"] == "true"
        # The worker lived through it: the same process reconnected.
        assert st.proc("classify-1").poll() is None


class TcpProxy:
    """Forwards a loopback port to Postgres; :meth:`cut` drops the listener and every open connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    restore = start

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, set()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def test_postgres_unreachable_for_a_few_seconds_mid_job(service_env: ServiceEnv) -> None:
    n = 90
    host_port = PG_ADMIN_URL.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))
    proxy.start()
    db = service_env.env["FAKESCOPE_DATABASE_URL"].replace(host_port, f"127.0.0.1:{proxy.port}")
    try:
        with (
            private_stack(
                service_env, "pg-cut", settings={"FAKESCOPE_DATABASE_URL": db, "FAKESCOPE_CHUNK_SIZE": "3"}
            ) as st,
            st.client() as c,
        ):
            # The held chunk's write meets the outage every time.
            hold, job_id = _job_held_mid_way(service_env, st, c, 33000, n)
            proxy.cut()
            hold.release_all()
            r = c.get(f"/v1/jobs/{job_id}")
            assert r.status_code == 503, r.text
            assert r.json()["detail"] == UNAVAILABLE["database"] and r.headers["Retry-After"] == "5"
            r = c.post("/v1/jobs", files=_files(33200, 1))
            assert r.status_code == 503, r.text
            with service_env.session() as session:  # directly, not through the proxy
                left = session.exec(
                    select(func.count()).where(JobItem.job_id == job_id, JobItem.status == ItemStatus.QUEUED)
                ).one()
            assert left == n - 6  # nothing is written while the database is away
            # Back once the held chunk's write has met the outage and is waiting to retry.
            wait_until(lambda: "transient error, retrying" in st.log("classify-1"), 60, "the outage to be met")
            proxy.restore()
            wait_until(lambda: c.get(f"/v1/jobs/{job_id}").status_code == 200, 30, "the API to recover")
            _assert_one_result_each(service_env, st, job_id, n)
    finally:
        proxy.cut()
