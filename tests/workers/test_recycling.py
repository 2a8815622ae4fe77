"""Worker pool processes are recycled, through a real classify worker: whatever a task left behind in
its process (an abandoned native read, a grown heap) goes with that process.

The probe of the untrusted-input issue: an abandoned C2PA read kept a core busy in a worker process
that was never recycled. (That the read itself is stopped: ``test_faults.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.test_serve_children import _alive
from tests.deploy.test_serve_signals import _descendants
from tests.utils.stack import ServiceEnv, png_bytes, private_stack, wait_until

pytestmark = pytest.mark.slow


def _pool(pid: int) -> set[int]:
    """The prefork pool processes of the Celery worker ``pid`` (its direct children)."""
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def test_item4_pool_processes_are_replaced_after_their_task_budget(service_env: ServiceEnv) -> None:
    with private_stack(service_env, "recycling", settings={"FAKESCOPE_CHUNK_SIZE": "2"}) as st:
        st.start_worker("classify", "classify-1", settings={"FAKESCOPE_WORKER_MAX_TASKS_PER_CHILD": "1"})
        main = st.pid("classify-1")
        first = wait_until(lambda: _pool(main), 30, "the worker's pool process")
        with st.client() as c:
            files = [("files", (f"{i}.png", png_bytes(91_500 + i), "image/png")) for i in range(6)]
            r = c.post("/v1/jobs", files=files)
            assert r.status_code == 202, r.text
        job = st.wait_job(r.json()["id"], timeout=180)
        assert job["counts"]["done"] == 6, job
        # Three chunks, one task each per pool process: the first process, and what it started, are gone.
        wait_until(lambda: not any(_alive(p) for p in first), 60, "the first pool process to be replaced")
        now = wait_until(lambda: _pool(main), 30, "a pool process")
        assert now and not (now & first), (first, now)
        assert not (_descendants(main) & first)
