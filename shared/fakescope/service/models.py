"""The model registry: detector versions, their lineage, the gate that guards promotion, and rollback.

A version is a row of ``model_versions`` and a folder in the object store under ``models/<version>/``:
``checkpoint/`` (what the classify workers load), ``train/`` (the fine-tune's last epoch, what a
resumed run continues from) and ``MODEL_CARD.md``. At most one version is ``promoted``; with none, the
shipped checkpoint (``FAKESCOPE_CHECKPOINT``, the implicit first version :data:`SHIPPED`) answers.

Torch-free: the API imports it. The fine-tune itself is :mod:`fakescope.service.training` (workers).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from fakescope.db.models import Feedback, ModelStatus, ModelTrainCreate, ModelVersion, ShadowScore, utcnow
from fakescope.storage import ObjectStore

__all__ = [
    "SHIPPED",
    "ModelConflict",
    "ModelNotFound",
    "checkpoint_prefix",
    "download_folder",
    "gate_refusals",
    "get_version",
    "list_versions",
    "model_prefix",
    "promote",
    "promoted",
    "request_training",
    "rollback",
    "set_shadow",
    "shadow_stats",
    "shadowing",
    "upload_folder",
]

logger = logging.getLogger(__name__)

# The name of the checkpoint the service ships with (or FAKESCOPE_CHECKPOINT): the version that answers
# while none is promoted, and the base of the first fine-tune.
SHIPPED = "shipped"


class ModelNotFound(LookupError):
    """No version of that name."""


class ModelConflict(ValueError):
    """The version is not in a state that allows it (``str(e)`` is the API's detail)."""


def model_prefix(version: str) -> str:
    return f"models/{version}/"


def checkpoint_prefix(version: str) -> str:
    """Where the checkpoint folder of ``version`` lives in the object store."""
    return f"models/{version}/checkpoint/"


def _new_version_name(now: datetime) -> str:
    return f"m{now.astimezone(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def promoted(session: Session) -> ModelVersion | None:
    """The promoted version; None: the shipped checkpoint answers."""
    return session.exec(select(ModelVersion).where(ModelVersion.status == ModelStatus.PROMOTED)).first()


def get_version(session: Session, *, version: str) -> ModelVersion:
    row = session.exec(select(ModelVersion).where(ModelVersion.version == version)).first()
    if row is None:
        raise ModelNotFound(version)
    return row


def list_versions(session: Session, *, offset: int = 0, limit: int = 100) -> tuple[list[ModelVersion], int]:
    """Newest first, and how many there are."""
    count = session.exec(select(func.count()).select_from(ModelVersion)).one()
    rows = session.exec(
        select(ModelVersion).order_by(col(ModelVersion.created_at).desc()).offset(offset).limit(limit)
    ).all()
    return list(rows), int(count)


def request_training(
    session: Session, *, body: ModelTrainCreate, requested_by: str, epochs: int, recipe: dict[str, Any]
) -> ModelVersion:
    """A new version in ``training``, from ``body.base`` (default: the promoted one, else the shipped).

    The caller enqueues its first epoch after this commits.

    Raises:
        ModelNotFound: the named base does not exist.
        ModelConflict: the named base has no weights (still training, or failed).
    """
    base = body.base
    if base is None:
        live = promoted(session)
        base = live.version if live is not None else SHIPPED
    elif base != SHIPPED:
        row = get_version(session, version=base)
        if row.status in (ModelStatus.TRAINING, ModelStatus.FAILED):
            raise ModelConflict(f"version {base} is {row.status}: it has no weights to start from")
    source = body.source.strip()
    if not source:
        raise ModelConflict("source is empty")
    row = ModelVersion(
        version=_new_version_name(utcnow()),
        base_version=base,
        source=source,
        recipe={**recipe, "epochs": epochs},
        command=body.command,
        requested_by=requested_by,
        progress={"epochs_done": 0, "epochs": epochs},
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    logger.info("model %s: fine-tune of %s on %s asked by %s", row.version, base, source, requested_by)
    return row


def gate_refusals(metrics: dict[str, Any], margin: float) -> list[str]:
    """Why the candidate may not be promoted: each set where its AUC is below the live model's by more
    than ``margin`` (none: it may). A candidate never compared is refused."""
    sets: dict[str, Any] = metrics.get("sets") or {}
    if not sets:
        return ["the candidate was never compared with the live model"]
    out = []
    for name, s in sets.items():
        live, cand = s["live"]["auc"], s["candidate"]["auc"]
        if live is None or cand is None:
            out.append(f"{name}: AUC undefined (one label only)")
        elif cand < live - margin:
            out.append(f"{name}: AUC {cand:.3f} against the live model's {live:.3f} (margin {margin})")
    return out


def promote(session: Session, *, version: str, margin: float) -> ModelVersion:
    """Makes ``version`` the one the classify workers load (at their next chunk); the promoted one retires.

    Raises:
        ModelNotFound: no such version.
        ModelConflict: it is not a candidate (or retired), it was compared with another version than the
            live one, or the gate refuses it (the detail says on which set and by how much).
    """
    row = get_version(session, version=version)
    if row.status == ModelStatus.PROMOTED:
        return row
    if row.status not in (ModelStatus.CANDIDATE, ModelStatus.RETIRED):
        raise ModelConflict(f"version {version} is {row.status}: only a candidate can be promoted")
    live = promoted(session)
    live_name = live.version if live is not None else SHIPPED
    if row.status == ModelStatus.CANDIDATE:
        compared = row.metrics.get("compared_with")
        if compared != live_name:
            raise ModelConflict(
                f"version {version} was compared with {compared}, but {live_name} is live: "
                f"train it again from {live_name}"
            )
        refusals = gate_refusals(row.metrics, margin)
        if refusals:
            raise ModelConflict(f"the gate refuses {version}: " + "; ".join(refusals))
    _swap(session, live, row)
    return row


def rollback(session: Session) -> ModelVersion | None:
    """Retires the promoted version and promotes the one promoted before it (None: back to the shipped).

    Raises:
        ModelConflict: nothing is promoted: the shipped checkpoint already answers.
    """
    live = promoted(session)
    if live is None:
        raise ModelConflict("nothing is promoted: the shipped checkpoint already answers")
    before = session.exec(
        select(ModelVersion)
        .where(
            ModelVersion.status == ModelStatus.RETIRED,
            col(ModelVersion.promoted_at).is_not(None),
            col(ModelVersion.promoted_at) < live.promoted_at,
        )
        .order_by(col(ModelVersion.promoted_at).desc())
    ).first()
    # The version rolled back to keeps its first promotion time: rolling back again walks further back,
    # past it, instead of returning to the one just retired.
    _swap(session, live, before, stamp=False)
    return before


def _swap(session: Session, live: ModelVersion | None, new: ModelVersion | None, stamp: bool = True) -> None:
    """One transaction: the live version retires before the new one is promoted (the unique index
    allows one promoted row at any moment). ``stamp``: the new one's promotion time is now."""
    if live is not None:
        session.exec(update(ModelVersion).where(col(ModelVersion.id) == live.id).values(status=ModelStatus.RETIRED))
    if new is not None:
        session.exec(
            update(ModelVersion)
            .where(col(ModelVersion.id) == new.id)
            .values(
                status=ModelStatus.PROMOTED,
                shadowing=False,
                **({"promoted_at": utcnow()} if stamp or new.promoted_at is None else {}),
            )
        )
    session.commit()
    for row in (live, new):
        if row is not None:
            session.refresh(row)
    logger.info("promoted %s (was %s)", new.version if new else SHIPPED, live.version if live is not None else SHIPPED)


def shadowing(session: Session) -> ModelVersion | None:
    """The candidate that shadows live traffic, if one does."""
    return session.exec(select(ModelVersion).where(col(ModelVersion.shadowing).is_(True))).first()


def set_shadow(session: Session, *, version: str, on: bool) -> ModelVersion:
    """Starts (or stops) ``version`` shadowing live traffic; at most one version shadows at a time.

    Raises:
        ModelNotFound: no such version.
        ModelConflict: only a candidate can shadow.
    """
    row = get_version(session, version=version)
    if on and row.status != ModelStatus.CANDIDATE:
        raise ModelConflict(f"version {version} is {row.status}: only a candidate can shadow")
    if on:
        session.exec(update(ModelVersion).where(col(ModelVersion.shadowing).is_(True)).values(shadowing=False))
    session.exec(update(ModelVersion).where(col(ModelVersion.id) == row.id).values(shadowing=on))
    session.commit()
    session.refresh(row)
    return row


def shadow_stats(session: Session, *, version: str) -> dict[str, Any] | None:
    """How ``version``'s shadow scores compare with the live answers: agreement at 0.5 overall and by
    the live verdict, and against the platform's labels where feedback gave one (None: no scores)."""
    rows = session.exec(
        select(ShadowScore.live_probability, ShadowScore.fake_probability, Feedback.label)
        .join(Feedback, col(Feedback.item_id) == col(ShadowScore.item_id), isouter=True)
        .where(ShadowScore.version == version)
    ).all()
    if not rows:
        return None
    by_live: dict[str, dict[str, int]] = {"fake": {"n": 0, "agree": 0}, "real": {"n": 0, "agree": 0}}
    labelled = {"n": 0, "live_correct": 0, "shadow_correct": 0}
    agree = 0
    for live_p, shadow_p, label in rows:
        live_fake, shadow_fake = live_p >= 0.5, shadow_p >= 0.5
        same = live_fake == shadow_fake
        agree += same
        side = by_live["fake" if live_fake else "real"]
        side["n"] += 1
        side["agree"] += same
        if label is not None:
            labelled["n"] += 1
            labelled["live_correct"] += live_fake == (label == "fake")
            labelled["shadow_correct"] += shadow_fake == (label == "fake")
    return {"n": len(rows), "agreement": agree / len(rows), "by_live_verdict": by_live, "labelled": labelled}


def upload_folder(store: ObjectStore, folder: Path, prefix: str, names: Sequence[str] | None = None) -> int:
    """Puts every file under ``folder`` (or only ``names``, relative paths) at ``prefix`` + its relative path."""
    files = [folder / n for n in names] if names is not None else sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        store.put(prefix + path.relative_to(folder).as_posix(), path.read_bytes())
    return len(files)


def download_folder(store: ObjectStore, prefix: str, folder: Path) -> int:
    """Writes every object under ``prefix`` into ``folder`` (each file whole, by rename)."""
    keys = store.list(prefix)
    for key in keys:
        rel = key[len(prefix) :]
        if not rel or rel.startswith("/") or ".." in Path(rel).parts:
            continue
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(store.get(key))
        tmp.replace(path)
    return len(keys)
