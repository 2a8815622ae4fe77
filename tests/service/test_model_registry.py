"""Fine-tune, gate, promote and roll back, over real processes, broker, database and object store.

A tiny random detector is fine-tuned through the API on a labelled folder of generated images, its
train worker SIGKILLed in the middle of the run; the run resumes from the last stored epoch and
finishes. A candidate trained on mislabelled images is refused by the gate; the good one is promoted
while a job runs, and the job's items each have one result, scored by the version that was live when
their chunk started.
"""

from __future__ import annotations

import io
import json
import secrets
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from fakescope.cli import main as cli_main
from fakescope.db.models import ItemStatus, JobItem, ModelVersion
from fakescope.detector import Detector
from fakescope.service import models as registry
from fakescope.service.tenants import create_api_key
from tests.utils.stack import HoldPoint, PrivateStack, ServiceEnv, private_stack, wait_until

pytestmark = pytest.mark.slow

SEEDS = 95_000  # this module's image seeds: 95_000-95_999


def _image(seed: int, fake: bool) -> bytes:
    """A smooth colour field; a fake one carries a checkerboard, the kind of trace a generator leaves."""
    rng = np.random.default_rng(seed)
    img = np.kron(rng.uniform(40, 210, size=(4, 4, 3)), np.ones((8, 8, 1)))
    if fake:
        img = img + ((np.indices((32, 32)).sum(0) % 2)[..., None] * 60 - 30)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _labelled(folder: Path, first_seed: int, n: int, *, flipped: bool = False) -> Path:
    """``n`` images under REAL/ and FAKE/, half each; ``flipped``: every label wrong."""
    for i in range(n):
        fake = i % 2 == 1
        label = "FAKE" if fake != flipped else "REAL"
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"{first_seed + i}.png").write_bytes(_image(first_seed + i, fake))
    return folder


def _wait_status(c: httpx.Client, version: str, st: PrivateStack, timeout: float = 300) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        m = c.get(f"/v1/models/{version}").json()
        return m if m["status"] != "training" else None

    try:
        return wait_until(settled, timeout, f"model {version} to finish training", interval=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{st.logs()}") from None


def test_fine_tune_resumes_after_a_kill_is_gated_and_promoted_while_a_job_runs(
    service_env: ServiceEnv, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = _labelled(tmp_path / "platform", SEEDS, 200)
    mislabelled = _labelled(tmp_path / "mislabelled", SEEDS + 200, 200, flipped=True)
    reference = _labelled(tmp_path / "reference", SEEDS + 400, 60)
    token = secrets.token_hex(4)
    admin = f"models-admin-{token}"
    with service_env.session() as session:
        admin_key = create_api_key(session, tenant_name=admin)[1]
    train_hold = HoldPoint(tmp_path / "hold-train")
    classify_hold = HoldPoint(tmp_path / "hold-classify")
    settings = {
        "FAKESCOPE_QUEUE_TRAIN": f"train-{token}",
        "FAKESCOPE_MODELS_ADMIN_TENANTS": admin,
        "FAKESCOPE_MODELS_REFERENCE": str(reference),
        "FAKESCOPE_MODELS_BATCH_SIZE": "16",
        "FAKESCOPE_MODELS_LR": "0.003",
        "FAKESCOPE_MODELS_PICKUP_TTL_S": "0",
        "FAKESCOPE_MODELS_SHADOW_SHARE": "1",
        # A SIGKILLed worker's epoch comes back after the visibility timeout, above the time limit.
        "FAKESCOPE_TASK_TIME_LIMIT_S": "45",
        "FAKESCOPE_VISIBILITY_TIMEOUT_S": "50",
    }
    try:
        with private_stack(service_env, "models", settings=settings) as st:
            st.keys["admin"] = admin_key
            st.start_worker("train", "train-1", wait=False, settings=train_hold.env)
            with st.client("admin") as c, st.client() as tenant:
                body = {"source": str(platform), "base": "shipped", "epochs": 3}
                assert tenant.post("/v1/models/train", json=body).json() == {
                    "detail": "Only the service's admin tenants manage models"
                }
                r = c.post("/v1/models/train", json=body)
                assert r.status_code == 202, r.text
                good = r.json()["version"]

                # Epoch 1 runs and is stored; the worker is killed once epoch 2 has started.
                first, held = train_hold.next_held()
                assert held == {"job_id": good, "item_ids": ["0"]}
                train_hold.release(first)
                _, held = train_hold.next_held()
                assert held == {"job_id": good, "item_ids": ["1"]}
                before = c.get(f"/v1/models/{good}").json()
                assert before["status"] == "training" and before["progress"]["epochs_done"] == 1
                assert service_env.store.exists(f"models/{good}/train/train_state.pt")
                st.stop("train-1", sig=signal.SIGKILL)
                train_hold.release_all()
                st.start_worker("train", "train-2", settings=train_hold.env)

                done = _wait_status(c, good, st)
                assert done["status"] == "candidate", done
                history = done["progress"]["history"]
                assert [h["epoch"] for h in history] == [1, 2, 3]
                # Epoch 1 was not trained again: the resumed run carried its record from the stored state.
                assert history[0] == before["progress"]["history"][0]
                card = json.loads(service_env.store.get(f"models/{good}/checkpoint/config.json"))
                assert [h["epoch"] for h in card["training"]["history"]] == [1, 2, 3]
                assert card["training"]["history"][0]["seconds"] == history[0]["seconds"]
                assert done["metrics"]["gate"]["passes"], done["metrics"]
                assert set(done["metrics"]["sets"]) == {"holdout", "reference"}

                # The mislabelled candidate learns its own (wrong) labels; the reference set catches it.
                r = c.post("/v1/models/train", json={"source": str(mislabelled), "base": "shipped", "epochs": 3})
                bad = r.json()["version"]
                assert _wait_status(c, bad, st)["status"] == "candidate"
                refused = c.post(f"/v1/models/{bad}/promote")
                assert refused.status_code == 409
                assert refused.json()["detail"].startswith(f"the gate refuses {bad}: reference: AUC")

                # Shadow: the good candidate scores every live item too (share 1), beside the shipped answers.
                assert c.post(f"/v1/models/{bad}/shadow").status_code == 200
                r = c.post(f"/v1/models/{good}/shadow")
                assert r.status_code == 200 and r.json()["shadowing"], r.text
                assert not c.get(f"/v1/models/{bad}").json()["shadowing"]  # one shadow at a time
                st.start_worker("classify", "classify-m1", settings=classify_hold.env)
                classify_hold.release_all()
                shadowed = [(f"s{i}.png", _image(SEEDS + 700 + i, i % 2 == 1)) for i in range(10)]
                with st.client() as jobs:
                    r = jobs.post("/v1/jobs", files=[("files", (n, b, "image/png")) for n, b in shadowed])
                    shadow_job = r.json()["id"]
                    assert st.wait_job(shadow_job)["state"] == "succeeded"
                    fb = jobs.post(f"/v1/jobs/{shadow_job}/items/1/feedback", json={"label": "fake"})
                    assert fb.status_code in (200, 201), fb.text
                stats = wait_until(
                    lambda: (m := c.get(f"/v1/models/{good}").json())["shadow"] and m["shadow"]["n"] == 10 and m,
                    120,
                    "shadow scores of the 10 items",
                )["shadow"]
                by_live = stats["by_live_verdict"]
                assert by_live["fake"]["n"] + by_live["real"]["n"] == 10
                assert 0 <= stats["agreement"] <= 1 and stats["labelled"]["n"] == 1
                assert set(stats["labelled"].values()) <= {0, 1}  # counts of the one labelled item
                r = c.post(f"/v1/models/{good}/shadow", params={"on": "false"})
                assert r.status_code == 200 and not r.json()["shadowing"]
                (classify_hold.folder / "release").unlink()

                # A job across the promotion: its first chunk is held with the shipped model in hand.
                images = [(f"{i}.png", _image(SEEDS + 600 + i, i % 2 == 1)) for i in range(30)]
                with st.client() as jobs:
                    r = jobs.post("/v1/jobs", files=[("files", (n, b, "image/png")) for n, b in images])
                assert r.status_code == 202, r.text
                job_id = r.json()["id"]
                _, first_chunk = classify_hold.hold_after(0, job_id)
                promoted = c.post(f"/v1/models/{good}/promote")
                assert promoted.status_code == 200, promoted.text
                assert promoted.json()["status"] == "promoted"
                classify_hold.release_all()
                job = st.wait_job(job_id, timeout=180)
                assert job["state"] == "succeeded", job

            shipped = Detector.load(tiny_checkpoint, device="cpu").model_version
            with service_env.session() as session:
                items = session.exec(select(JobItem).where(col(JobItem.job_id) == uuid.UUID(job_id))).all()
            assert sorted(it.position for it in items) == list(range(30))
            assert all(it.status == ItemStatus.DONE and it.attempts == 1 for it in items)
            by_version: dict[str | None, set[str]] = {}
            for it in items:
                by_version.setdefault(it.model_version, set()).add(str(it.id))
            assert by_version[shipped] == set(first_chunk["item_ids"])
            assert set(by_version) == {shipped, done["model_version"]}

            # The CLI, as an operator runs it: the comparison, then the one-command rollback.
            monkeypatch.setenv("FAKESCOPE_API_KEY", admin_key)
            assert cli_main(["models", "show", good, "--api", st.api_url]) == 0
            assert cli_main(["models", "rollback", "--api", st.api_url]) == 0
            with st.client("admin") as c:
                assert c.get(f"/v1/models/{good}").json()["status"] == "retired"
                assert c.post("/v1/models/rollback").json() == {
                    "detail": "nothing is promoted: the shipped checkpoint already answers"
                }
    finally:
        # The registry is the session database's: leave the shipped checkpoint answering for later tests.
        with service_env.session() as session:
            for _ in range(20):
                if registry.promoted(session) is not None:
                    registry.rollback(session)


def _row(name: str, compared_with: str, live_auc: float | None, cand_auc: float | None) -> ModelVersion:
    sets = {"holdout": {"n": 10, "live": {"auc": live_auc}, "candidate": {"auc": cand_auc}}}
    return ModelVersion(
        version=name,
        base_version=compared_with,
        status="candidate",
        source="/nowhere",
        requested_by="test",
        metrics={"compared_with": compared_with, "sets": sets},
    )


def test_the_registry_keeps_one_promoted_version_and_rolls_back_in_order(service_env: ServiceEnv) -> None:
    token = secrets.token_hex(3)
    a, b, c = (f"t{token}-{x}" for x in "abc")
    with service_env.session() as session:
        try:
            session.add_all([_row(a, "shipped", 0.6, 0.9), _row(b, "shipped", 0.6, 0.9), _row(c, a, 0.9, 0.5)])
            session.commit()
            assert registry.promote(session, version=a, margin=0.02).status == "promoted"
            # b was compared with the shipped model, but a answers now.
            with pytest.raises(registry.ModelConflict, match=f"was compared with shipped, but {a} is live"):
                registry.promote(session, version=b, margin=0.02)
            with pytest.raises(registry.ModelConflict, match=r"holdout: AUC 0\.500 against the live model's 0\.900"):
                registry.promote(session, version=c, margin=0.02)
            # Within the margin it passes: 0.5 is 0.4 below 0.9.
            assert registry.promote(session, version=c, margin=0.45).status == "promoted"
            assert registry.get_version(session, version=a).status == "retired"
            # A second promoted row is refused by the database itself, whatever the code does.
            with pytest.raises(IntegrityError):
                session.exec(update(ModelVersion).where(col(ModelVersion.version) == b).values(status="promoted"))
            session.rollback()
            back = registry.rollback(session)
            assert back is not None and back.version == a
            assert registry.get_version(session, version=c).status == "retired"
            # Further back: whatever was promoted before a in this database (the shipped checkpoint when
            # nothing was), never c again.
            further = registry.rollback(session)
            assert further is None or further.version not in (a, b, c)
            for _ in range(20):
                if registry.promoted(session) is not None:
                    registry.rollback(session)
            with pytest.raises(registry.ModelConflict, match="nothing is promoted"):
                registry.rollback(session)
        finally:
            session.rollback()
            for _ in range(20):  # bounded: a rollback that walks in circles must fail the test, not hang it
                if registry.promoted(session) is not None:
                    registry.rollback(session)
            assert registry.promoted(session) is None
    assert registry.gate_refusals({"sets": {"ref": {"live": {"auc": 0.7}, "candidate": {"auc": None}}}}, 0.02) == [
        "ref: AUC undefined (one label only)"
    ]
    assert registry.gate_refusals({}, 0.02) == ["the candidate was never compared with the live model"]
