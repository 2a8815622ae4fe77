"""What the train pool does: one epoch of a registered fine-tune per task, then the gate's comparison.

A fine-tune is a chain of tasks, one per epoch, each sending the next once its epoch is in the object
store (``models/<version>/train/``) and counted in the registry row. A worker killed mid-epoch loses
that epoch only: its message is delivered again (late acknowledgement) and the epoch starts over from
the last one stored, on whichever train worker takes it. Every task is bounded by the pool's time
limit, so a long fine-tune never outlives the broker's visibility timeout.

After the last epoch the candidate is assembled, scored beside its base on the held-out part of the
platform's images and on the reference set (``FAKESCOPE_MODELS_REFERENCE``), and stored with its model
card; the row becomes a ``candidate``. This module imports torch (through fakescope.finetune): workers only.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from fakescope.db.models import ModelStatus, ModelVersion, utcnow
from fakescope.detector import resolve_checkpoint
from fakescope.finetune import (
    TRAIN_FILES,
    FineTune,
    assemble_candidate,
    compare,
    fingerprint,
    model_version,
    run_epoch,
    split_source,
)
from fakescope.service.models import (
    SHIPPED,
    checkpoint_prefix,
    download_folder,
    gate_refusals,
    model_prefix,
    upload_folder,
)
from fakescope.settings import Settings
from fakescope.storage import ObjectStore

__all__ = ["fail_training", "local_checkpoint", "train_epoch"]

logger = logging.getLogger(__name__)

CARD_FILE = "MODEL_CARD.md"


def local_checkpoint(store: ObjectStore, settings: Settings, version: str) -> Path:
    """The checkpoint folder of ``version`` on this machine: the shipped one, or the registry's copy
    downloaded once under ``data_dir/models/<version>`` (whole, by rename, so a reader never sees half)."""
    if version == SHIPPED:
        return resolve_checkpoint(settings.checkpoint)
    dest = (settings.data_dir / "models" / version).resolve()
    if dest.is_dir():
        return dest
    tmp = dest.with_name(f".{version}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    if not download_folder(store, checkpoint_prefix(version), tmp):
        raise FileNotFoundError(f"version {version} has no checkpoint in the object store")
    tmp.replace(dest)
    return dest


def _source(store: ObjectStore, source: str, work: Path) -> Path:
    """The labelled images as a local folder: the folder named, or an object-store prefix copied once."""
    if not source.startswith("s3://"):
        path = Path(source)
        if not path.is_dir():
            raise FileNotFoundError(f"source {source} is not a folder on the train worker")
        return path
    dest = work / "source"
    if not (work / "source.done").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        prefix = source.removeprefix("s3://").lstrip("/")
        if not download_folder(store, prefix, dest):
            raise FileNotFoundError(f"source {source}: nothing under that prefix")
        (work / "source.done").touch()
    return dest


def fail_training(session: Session, *, version: str, reason: str) -> None:
    """Marks a fine-tune failed with ``reason`` (it stays in the registry, never promotable)."""
    session.exec(
        update(ModelVersion)
        .where(col(ModelVersion.version) == version, col(ModelVersion.status) == ModelStatus.TRAINING)
        .values(status=ModelStatus.FAILED, error=reason[:2000], finished_at=utcnow())
    )
    session.commit()


def train_epoch(
    session: Session,
    store: ObjectStore,
    settings: Settings,
    *,
    version: str,
    epoch: int,
    enqueue_next: Callable[[str, int], Any],
    on_started: Callable[[], None] | None = None,
) -> str:
    """Runs epoch ``epoch`` (from 0) of ``version``'s fine-tune, stores it and sends the next; after the
    last, compares and stores the candidate. Returns what it did, for the log.

    Safe to deliver twice: an epoch already counted is not trained again (only the send of the next one,
    which a crash could have lost, is repeated), and a version no longer training is left alone.
    """
    row = session.exec(select(ModelVersion).where(ModelVersion.version == version)).first()
    if row is None or row.status != ModelStatus.TRAINING:
        return "not training"
    epochs = int(row.progress.get("epochs") or row.recipe["epochs"])
    done = int(row.progress.get("epochs_done", 0))
    work = (settings.data_dir / "train" / version).resolve()
    work.mkdir(parents=True, exist_ok=True)
    source = _source(store, row.source, work)
    train_dir, hold_dir, counts = split_source(source, work, settings.models.holdout_share)
    if row.data_fingerprint is None:
        row.data_fingerprint = fingerprint(source)
        row.progress = {**row.progress, "images": counts}
        session.add(row)
        session.commit()
    base = local_checkpoint(store, settings, row.base_version or SHIPPED)
    ft = FineTune(
        base=base,
        train_dir=train_dir,
        out=work / "out",
        epochs=epochs,
        batch_size=int(row.recipe.get("batch_size", settings.models.batch_size)),
        lr=float(row.recipe.get("lr", settings.models.lr)),
        threads=settings.models.threads,
        route=row.recipe.get("route"),
    )
    if epoch == done:
        # The object store is the truth: whatever this machine kept of an earlier try is replaced.
        shutil.rmtree(ft.out, ignore_errors=True)
        ft.out.mkdir(parents=True)
        if epoch > 0:
            download_folder(store, model_prefix(version) + "train/", ft.out)
        if on_started is not None:
            on_started()
        rec = run_epoch(ft, epoch, counts["train_real"] + counts["train_fake"])
        upload_folder(store, ft.out, model_prefix(version) + "train/", TRAIN_FILES)
        if not _count_epoch(session, version, epoch, rec):
            return f"epoch {epoch + 1} was counted by another delivery"
        done = epoch + 1
        logger.info("model %s: epoch %s/%s, loss %.4f", version, done, epochs, rec["train_loss"])
    elif epoch != done - 1:
        return f"epoch {epoch + 1} is stale ({done} of {epochs} done)"
    if done < epochs:
        enqueue_next(version, done)
        return f"epoch {done} of {epochs} stored"
    _finish(session, store, settings, row=row, ft=ft, hold_dir=hold_dir, work=work)
    return "candidate stored"


def _count_epoch(session: Session, version: str, epoch: int, rec: dict[str, Any]) -> bool:
    """Records epoch ``epoch`` as done, unless another delivery already did (row lock: one wins)."""
    row = session.exec(select(ModelVersion).where(ModelVersion.version == version).with_for_update()).one()
    if int(row.progress.get("epochs_done", 0)) != epoch or row.status != ModelStatus.TRAINING:
        session.rollback()
        return False
    history = [*row.progress.get("history", []), {k: rec[k] for k in ("epoch", "train_loss", "train_acc", "seconds")}]
    row.progress = {
        **row.progress,
        "epochs_done": epoch + 1,
        "loss": rec["train_loss"],
        "history": history,
        "updated_at": utcnow().isoformat(),
    }
    session.add(row)
    session.commit()
    return True


def _finish(
    session: Session,
    store: ObjectStore,
    settings: Settings,
    *,
    row: ModelVersion,
    ft: FineTune,
    hold_dir: Path,
    work: Path,
) -> None:
    if not (ft.out / "model.safetensors").is_file():
        download_folder(store, model_prefix(row.version) + "train/", ft.out)
    candidate = assemble_candidate(ft, work / "candidate")
    sets = {"holdout": hold_dir}
    if settings.models.reference:
        sets["reference"] = Path(settings.models.reference)
    compared = compare(ft.base, candidate, sets)
    metrics: dict[str, Any] = {"compared_with": row.base_version or SHIPPED, "sets": compared}
    refusals = gate_refusals(metrics, settings.models.gate_margin)
    metrics["gate"] = {"margin": settings.models.gate_margin, "passes": not refusals, "refusals": refusals}
    mv = model_version(candidate)
    card = candidate / CARD_FILE
    card.write_text(_card(row, metrics, mv))
    upload_folder(store, candidate, checkpoint_prefix(row.version))
    store.put(model_prefix(row.version) + CARD_FILE, card.read_bytes(), "text/markdown")
    session.refresh(row)
    row.metrics = metrics
    row.model_version = mv
    row.status = ModelStatus.CANDIDATE
    row.finished_at = utcnow()
    session.add(row)
    session.commit()
    logger.info("model %s: candidate %s; gate %s", row.version, mv, refusals or "passes")


def _card(row: ModelVersion, metrics: dict[str, Any], mv: str) -> str:
    lines = [
        f"# Model card: {row.version}",
        "",
        f"- model_version (what scored items record): `{mv}`",
        f"- fine-tuned from: `{row.base_version}`, on `{row.source}` (data fingerprint `{row.data_fingerprint}`)",
        f"- recipe: `{row.recipe}`",
        f"- asked by: {row.requested_by}" + (f", with `{row.command}`" if row.command else ""),
        f"- images: {row.progress.get('images')}",
        "",
        f"Compared with `{metrics['compared_with']}` (AUC, accuracy at 0.5):",
        "",
        "| set | n | live AUC | candidate AUC | live acc | candidate acc | agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in metrics["sets"].items():
        lines.append(
            f"| {name} | {s['n']} | {_f(s['live']['auc'])} | {_f(s['candidate']['auc'])} | "
            f"{_f(s['live']['accuracy'])} | {_f(s['candidate']['accuracy'])} | {_f(s['agreement'])} |"
        )
    gate = metrics["gate"]
    lines += ["", "Gate: " + ("passes" if gate["passes"] else "refuses: " + "; ".join(gate["refusals"]))]
    return "\n".join(lines) + "\n"


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
