"""Fine-tuning a detector on a platform's own labelled images, one epoch at a time, and comparing it.

The service's train pool (fakescope.service.training) runs a fine-tune as a chain of epoch tasks; this
module is the part that needs no service: split a ``REAL/``/``FAKE/`` folder into what is trained on
and what the gate holds out, run epoch N of the shipped recipe through :func:`fakescope.train.train`
(``init_from`` the base for the first, ``resume`` after), assemble the candidate checkpoint (for a
routed base: the base with one route's member replaced) and score two detectors side by side.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from fakescope.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointMeta
from fakescope.data import LABELS, iter_labelled, label_of
from fakescope.detector import ROUTES_FILE, Detector, RoutedDetector, load_detector, member_folder
from fakescope.imageio import IMAGE_SUFFIXES
from fakescope.metrics import binary_metrics
from fakescope.train import STATE_FILE, TrainConfig, train

__all__ = [
    "TRAIN_FILES",
    "FineTune",
    "assemble_candidate",
    "compare",
    "fingerprint",
    "run_epoch",
    "score_folder",
    "split_source",
]

logger = logging.getLogger(__name__)

# What a resumed epoch needs from the last one: its weights, its record and the optimiser's state.
TRAIN_FILES = (WEIGHTS_FILE, CONFIG_FILE, STATE_FILE)


def _held_out(name: str, share: float) -> bool:
    """Whether an image (by its relative path) is held out for the gate: by a hash of the name, so the
    same image always lands on the same side, whichever worker splits and however the source grows."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def fingerprint(source: Path) -> str:
    """SHA-256 over every labelled image's relative path, label and bytes: the data a version learnt from."""
    h = hashlib.sha256()
    for name, label, data in iter_labelled(source):
        h.update(f"{name}\0{label}\0".encode())
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def split_source(source: Path, work: Path, share: float) -> tuple[Path, Path, dict[str, int]]:
    """Links ``source``'s labelled images into ``work/train`` and ``work/holdout`` (``REAL``/``FAKE``
    each); returns both folders and the counts. Done once per work folder."""
    train_dir, hold_dir = work / "train", work / "holdout"
    done = work / "split.json"
    if done.is_file():
        return train_dir, hold_dir, json.loads(done.read_text())
    for d in (train_dir, hold_dir):
        shutil.rmtree(d, ignore_errors=True)
    counts = {"train_real": 0, "train_fake": 0, "holdout_real": 0, "holdout_fake": 0}
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(source).as_posix()
        label = _label(rel)
        if label is None:
            continue
        side = "holdout" if _held_out(rel, share) else "train"
        dest = work / side / label.upper() / rel.replace("/", "__")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path.resolve(), dest)
        counts[f"{side}_{label}"] += 1
    for label in ("real", "fake"):
        if not counts[f"train_{label}"] or not counts[f"holdout_{label}"]:
            raise ValueError(f"{source}: too few {label.upper()} images to train on and hold some out ({counts})")
    done.write_text(json.dumps(counts))
    return train_dir, hold_dir, counts


def _label(rel: str) -> str | None:
    if PurePosixPath(rel).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    idx = label_of(rel)
    return None if idx is None else LABELS[idx]


@dataclass(frozen=True)
class FineTune:
    """One fine-tune: the base checkpoint folder, the images trained on, the recipe."""

    base: Path
    train_dir: Path
    out: Path
    epochs: int
    batch_size: int = 64
    lr: float = 1e-3
    threads: int | None = None
    route: str | None = None  # for a routed base: the member fine-tuned (None: its first route)
    seed: int = 0

    def member(self) -> Path:
        return member_folder(self.base, self.route)

    def config(self, n_images: int) -> TrainConfig:
        """The shipped (fast) recipe from the base's own architecture and preprocessing, few epochs."""
        meta = CheckpointMeta.from_dict(json.loads((self.member() / CONFIG_FILE).read_text()))
        held = max(2, n_images // 10)
        return TrainConfig(
            data=[str(self.train_dir)],
            out=str(self.out),
            variant=meta.variant,
            model_overrides=meta.arch.to_dict(),
            recipe="fast",
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            val_size=held,
            calib_size=held,
            seed=self.seed,
            device="auto",
            threads=self.threads,
            input_size=meta.preprocess.input_size[0],
            resize=meta.preprocess.resize,
            interpolation=meta.preprocess.interpolation,
            init_from=str(self.member()),
        )


def run_epoch(ft: FineTune, epoch: int, n_images: int) -> dict[str, Any]:
    """Trains epoch ``epoch`` (from 0): the first starts from the base, later ones resume from
    ``ft.out`` (its :data:`TRAIN_FILES` as the previous epoch left them). Returns the epoch's record;
    after the last, ``ft.out`` is the calibrated checkpoint."""
    cfg = ft.config(n_images)
    if epoch > 0:
        if not (ft.out / STATE_FILE).is_file():
            raise FileNotFoundError(f"epoch {epoch + 1} resumes from {ft.out / STATE_FILE}, which is missing")
        cfg = replace(cfg, init_from=None, resume=True)
    train(replace(cfg, stop_after=epoch + 1))
    history = json.loads((ft.out / CONFIG_FILE).read_text())["training"]["history"]
    if len(history) != epoch + 1:
        raise RuntimeError(f"epoch {epoch + 1}: the run's record has {len(history)} epochs")
    return dict(history[-1])


def assemble_candidate(ft: FineTune, dest: Path) -> Path:
    """The candidate checkpoint folder at ``dest``: the trained member, or for a routed base the base's
    folder with that route's member replaced (the other routes answer as before)."""
    shutil.rmtree(dest, ignore_errors=True)
    if (ft.base / ROUTES_FILE).is_file():
        shutil.copytree(ft.base, dest, symlinks=False)
        target = dest / ft.member().relative_to(ft.base)
        shutil.rmtree(target)
    else:
        target = dest
    target.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy2(ft.out / name, target / name)
    return dest


def score_folder(det: Detector | RoutedDetector, folder: Path, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, fake probabilities)`` of every labelled image under ``folder``, each image answered
    by the member its size routes it to, as the service answers it."""
    members = det.members
    labels: list[int] = []
    probs: list[float] = []
    pending: dict[int, tuple[list[int], list[np.ndarray]]] = {}

    def flush(route: int) -> None:
        slots, arrays = pending.pop(route)
        for slot, p in zip(slots, members[route].predict(np.stack(arrays)), strict=True):
            probs[slot] = float(p)

    for _, label, data in iter_labelled(folder):
        with Image.open(io.BytesIO(data)) as im:
            route = det.route(*im.size)
            arr = members[route].prepare(im)
        labels.append(label)
        probs.append(float("nan"))
        slots, arrays = pending.setdefault(route, ([], []))
        slots.append(len(labels) - 1)
        arrays.append(arr)
        if len(arrays) >= batch_size:
            flush(route)
    for route in list(pending):
        flush(route)
    return np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)


def _summary(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    m = binary_metrics(labels, probs)
    # NaN (one label only) is no JSON: None says the same.
    return {
        k: (None if v is None or np.isnan(v) else float(v))
        for k, v in (("auc", m["roc_auc"]), ("accuracy", m["accuracy"]), ("f1", m["f1"]))
    }


def compare(live: Path, candidate: Path, sets: dict[str, Path]) -> dict[str, Any]:
    """Both checkpoints scored on each named labelled folder: ``{name: {n, live, candidate}}``, each
    side's AUC, accuracy and F1, and the candidate's agreement with the live model at 0.5."""
    out: dict[str, Any] = {}
    dets = {"live": load_detector(live, device="cpu"), "candidate": load_detector(candidate, device="cpu")}
    for name, folder in sets.items():
        scored = {side: score_folder(det, folder) for side, det in dets.items()}
        labels = scored["live"][0]
        agree = float(np.mean((scored["live"][1] >= 0.5) == (scored["candidate"][1] >= 0.5)))
        out[name] = {
            "n": len(labels),
            **{side: _summary(labels, p) for side, (_, p) in scored.items()},
            "agreement": agree,
        }
    return out


def model_version(folder: Path) -> str:
    """The ``model_version`` the items a checkpoint folder scores will record."""
    return load_detector(folder, device="cpu").model_version


def write_card(dest: Path, lines: Sequence[str]) -> Path:
    dest.write_text("\n".join(lines) + "\n")
    return dest
