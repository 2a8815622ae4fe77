"""The vlm backend through the real explain worker: tiny CLIP + tiny Idefics2 + LoRA, real broker.

The session's service stack (tests/utils/stack.py) runs an explain worker on the default
evidence backend; this test starts a second API and worker pair on private queues, configured with the
tiny models through the same environment variables production uses, and runs a job through them.
"""

from __future__ import annotations

import io
import secrets
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")
pytest.importorskip("celery", reason="job service not installed")

from fakescope.detector import Detector
from fakescope.explain.clip_scorer import ClipScorer
from fakescope.explain.taxonomy import BY_NAME
from serve.stack import Stack
from tests.utils.stack import ServiceStack, free_port, png_bytes, service_stack, wait_until  # noqa: F401

pytestmark = pytest.mark.slow


def _decode(seed: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png_bytes(seed))).convert("RGB"))


def test_explain_worker_runs_the_vlm_backend(
    service_stack: ServiceStack,  # noqa: F811
    tiny_checkpoint: Path,
    tiny_clip: Path,
    tiny_idefics2: Path,
    tiny_lora: Path,
) -> None:
    detector = Detector.load(tiny_checkpoint, device="cpu")
    seeds = list(range(9500, 9700))
    probs = detector.predict(np.stack([_decode(s) for s in seeds]))
    fakes = [s for s, p in zip(seeds, probs, strict=True) if p >= 0.5][:2]
    assert len(fakes) == 2, "the tiny checkpoint gave too few fakes to test with"

    # A stack of its own on private queues: its API, a classify worker and the vlm explain worker share
    # the session's database, bucket and broker, but no other worker can take (and time out) its tasks.
    token = secrets.token_hex(3)
    api_port = free_port()
    env = {
        **service_stack.stack.env,
        "FAKESCOPE_QUEUE_CLASSIFY": f"classify-vlm-{token}",
        "FAKESCOPE_QUEUE_EXPLAIN": f"explain-vlm-{token}",
        "FAKESCOPE_PUBLIC_URL": f"http://127.0.0.1:{api_port}",
        "FAKESCOPE_EXPLAIN_BACKEND": "vlm",
        "FAKESCOPE_CLIP_MODEL": str(tiny_clip),
        "FAKESCOPE_VLM_MODEL": str(tiny_idefics2),
        "FAKESCOPE_VLM_LORA": str(tiny_lora),
        "FAKESCOPE_VLM_MAX_NEW_TOKENS": "8",
        # Model loading on a busy CI core takes longer than the stack's limit on a task.
        "FAKESCOPE_TASK_TIME_LIMIT_S": "400",
        "FAKESCOPE_VISIBILITY_TIMEOUT_S": "450",
    }
    vlm_stack = Stack(env=env, log_dir=service_stack.stack.log_dir)
    api_url = f"http://127.0.0.1:{api_port}"
    try:
        vlm_stack.start_api(port=api_port, name="api-vlm")
        vlm_stack.start_worker("classify", name="classify-vlm")
        vlm_stack.start_worker("explain", name="explain-vlm")
        wait_until(lambda: httpx.get(f"{api_url}/readyz", timeout=5).status_code == 200, 120, "API /readyz")
        files = [("files", (f"{s}.png", png_bytes(s), "image/png")) for s in fakes]
        headers = {"X-API-Key": service_stack.keys["a"]}
        with httpx.Client(base_url=api_url, headers=headers, timeout=60) as c:
            r = c.post("/v1/jobs", files=files, data={"explain": "true"})
            assert r.status_code == 202, r.text

            def finished() -> dict | None:
                j = c.get(f"/v1/jobs/{r.json()['id']}").json()
                return j if j["state"] not in ("queued", "running") else None

            try:
                job = wait_until(finished, 600, "the vlm job", interval=1)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{service_stack.logs()}") from None
            assert job["state"] == "succeeded", job
            results = {x["name"]: x for x in c.get(f"/v1/jobs/{job['id']}/results").json()["data"]}
    finally:
        vlm_stack.stop_all()

    # The same CLIP verdicts, computed here on the same decoded images, name the same artifacts.
    verdicts = ClipScorer.load(str(tiny_clip), device="cpu").score([_decode(s) for s in fakes])
    for s, v in zip(fakes, verdicts, strict=True):
        item = results[f"{s}.png"]
        assert item["explain_status"] == "done", item
        expl = item["explanation"]
        assert list(expl) == [name for name, _ in (v.artifacts or v.ranked[:1])]
        assert 1 <= len(expl) <= 5 and all(name in BY_NAME for name in expl)
        assert all(reason.strip() for reason in expl.values())
