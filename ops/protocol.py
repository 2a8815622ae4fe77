"""The generalisation protocol: leave-one-family-out (or -generator-out) training and scoring.

Each fold trains the track's recipe with a family's (or generator's) folders held out entirely, never
trained or calibrated on, then scores those images against the validation split's images of the
other label (``metrics.holdout`` of the fold's checkpoint). Beside each model, the *content-only
baseline*: the same recipe on images shrunk until no generator trace survives and blown back up
(``--content-only``); the gap between the two is what the model learned beyond content.

    python -m ops.protocol --track full           # multigen/full: diffusion, autoregressive, vqgan-clip, unknown
    python -m ops.protocol --track small          # CIFAKE + multigen/small: gan, autoregressive, diffusion (SD)
    python -m ops.protocol --track full --table   # the table of the folds run so far, from their checkpoints
    python -m ops.protocol --track small --kinds model --variant vgg3_wide_freq   # an architecture ablation
    python -m ops.protocol --track small --kinds model --match-jpeg 0   # tiles left uncompressed (confounded)
    python -m ops.protocol --track full --tiles   # the full recipe with CIFAKE and multigen/small as windows
    python -m ops.protocol --track full --kinds model --recon ops/weights/recon   # with aligned fakes
    python -m ops.protocol --track full --kinds model --variant vgg3_wide_freq --from-scratch   # FreqNet at full size
    python -m ops.protocol --track full --kinds model --variant vgg3_wide_stem --from-scratch --epochs 16 \
        --robust-p 0.6   # the shipped arm with twice the share of degraded training images
    python -m ops.protocol --track full --kinds model --from-scratch --epochs 8 \
        --ensemble-of vgg3_wide_stem vgg3_wide_freq   # the logit average of two arms' fold checkpoints
    python -m ops.protocol --track full --kinds model --variant vgg3_wide_stem --from-scratch --epochs 16 \
        --debias 2 --bias-epochs 8   # trained against two cross-fitted content baselines (product of experts)
    python -m ops.protocol --track full --kinds model --variant vgg3_wide_stem --from-scratch --epochs 16 \
        --debias 2 --bias-epochs 8 --no-poe   # the control: trained alone, multiplied with the same baselines
    python -m ops.protocol --track full --kinds model --variant vgg2_wide_stem --from-scratch --epochs 16   # 18-px view
    python -m ops.protocol --track full --kinds model --variant vgg2_wide_stem --from-scratch --epochs 16 \
        --select-epoch calib_auc   # each fold keeps the epoch its own calibration split ranks best
    python -m ops.protocol --track full --kinds model --variant vgg2_wide_stem --from-scratch \
        --select-epoch calib_auc --budget-by-other-folds 8 16   # each fold's budget chosen by the other folds
    python -m ops.protocol --track full --kinds model --variant vgg2_wide_stem --from-scratch --epochs 16 \
        --gray-p 0.5   # half the training images, both labels, in grey
    python -m ops.protocol --track full --kinds model --variant vgg2_wide_stem --from-scratch --epochs 16 \
        --readout top0.1   # the same folds' checkpoints read by their top tenth of positions
    python -m ops.protocol --track full --kinds model --variant vgg2_wide_stem --from-scratch --epochs 16 \
        --folder-balance 0.5   # training images drawn by folder size, a folder's share as its root
    python -m ops.protocol --track full --kinds model --variant vgg2_wide_stem --from-scratch --epochs 16 \
        --group-dro 0.01   # the loss weighs most the training folders the model still gets wrong
    python -m ops.protocol --track full --kinds model --variant vgg2_wide_stem --from-scratch --epochs 16 \
        --freq-mask-p 0.5   # half the training images with 15% of their Fourier coefficients zeroed
    python -m ops.protocol --track full --kinds model --variant vgg2_wide_stem --from-scratch --epochs 16 \
        --sam 0.05   # sharpness-aware minimisation: the gradient at the worst weights within 0.05
    python -m ops.protocol --track full --kinds model --variant vgg2_wide_stem --from-scratch --epochs 16 \
        --position-loss   # the loss at every position of the last feature map, not on their mean

Folds resume where they stopped (each epoch is checkpointed) and finished folds are skipped, so the
command can be stopped and run again. Folders that are related are held out together: for the
diffusion fold at full size, ``unknown-web`` too (web images of unknown origin, many of them from the
named diffusion generators). ``genimage_explained`` is never touched here.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fakescope.checkpoint import combine_checkpoints
from fakescope.train import (
    GROUP_DRO_STARTS,
    SELECT_EPOCH,
    TrainConfig,
    parse_readout,
    score_holdout,
    score_holdout_with_bias,
    train,
)

DATA = Path("../shared/data")
MANIFEST = DATA / "multigen" / "manifest.csv"
# ``--tiles`` (full track): the 32x32 sources trained on as windows beside the crops. A fold holds
# out the tiles of its own family too (``tile_folds``), so the family stays unseen.
TILES = (str(DATA / "cifake_train_subset"), str(DATA / "multigen" / "small"))
# The full track starts from the 32x32 model trained on CIFAKE alone (the shipped small route's
# weights, copied): a small route that learns multigen/small's GANs and PixelCNN++ would, as a
# starting point, show a fold its own family before holding it out, and the figures would move.
CIFAKE_SMALL = "ops/weights/small-cifake"


@dataclass(frozen=True)
class Track:
    data: tuple[str, ...]
    recipe: dict[str, Any]
    content_side: int
    extra_folds: dict[str, list[str]]


TRACKS = {
    # The full route's first recipe (shipped until 2026-12-03): 32-pixel crops at native resolution,
    # initialised from the CIFAKE-only small model (``CIFAKE_SMALL``), two epochs of four passes per
    # fold (the shipped model had eight of eight) so that a fold and its content baseline fit in
    # minutes on two cores. The route now ships ``vgg3_wide_stem`` from scratch, trained for eight
    # epochs of eight passes: its folds at that budget are the arm ``--variant vgg3_wide_stem
    # --from-scratch --epochs 16`` (sixteen of four); ``--epochs 8`` is the same at half of it.
    "full": Track(
        data=(str(DATA / "multigen" / "full"),),
        recipe=dict(
            variant="vgg3_wide", epochs=2, repeats=4, batch_size=128, lr=1e-3, val_size=600, calib_size=400,
            input_size=224, resize="shorter_side", interpolation="lanczos", crop=32, scale_p=0.5, scale_min=0.5,
            robust_p=0.3, translate=0, ema_decay=0.998, threads=2,
            init_from=CIFAKE_SMALL,
        ),
        content_side=16,
        extra_folds={},
    ),
    # The 32x32 recipe of the shipped small model, from scratch, on a seeded 6,000 of CIFAKE's
    # 20,000-image subset plus multigen/small, three epochs per fold. Every multigen/small tile (a
    # PNG) gets the JPEG round trip CIFAKE's files had (quality 75, 4:2:0; since 2026-12-04): before,
    # "never JPEG-compressed" marked the held-out GAN and PixelCNN++ tiles against CIFAKE's reals
    # (``--match-jpeg 0`` reproduces those figures).
    "small": Track(
        data=(str(DATA / "cifake_train_subset"), str(DATA / "multigen" / "small")),
        recipe=dict(
            variant="vgg3_wide", epochs=3, batch_size=128, val_size=2000, calib_size=1000, robust_p=0.15,
            border_p=0.05, threads=2, max_train=6000, match_jpeg=75,
        ),
        content_side=8,
        # CIFAKE's fakes are Stable Diffusion 1.4's: the one diffusion family at 32x32.
        extra_folds={"diffusion": ["cifake_train_subset/FAKE"]},
    ),
}  # fmt: skip


def folds(track: str, by: str) -> dict[str, list[str]]:
    """Fold name -> the folders it holds out, from the manifest's fakes of the track."""
    out: dict[str, list[str]] = {}
    with open(MANIFEST, newline="") as f:
        for row in csv.DictReader(f):
            if row["track"] == track and row["label"] == "fake":
                key = row["family"] if by == "family" else row["generator"]
                if row["generator"] not in out.setdefault(key, []):
                    out[key].append(row["generator"])
    out.update(TRACKS[track].extra_folds)
    if by == "family" and "diffusion" in out and "unknown" in out:
        out["diffusion"] = [*out["diffusion"], *out["unknown"]]
    return dict(sorted(out.items()))


def tile_folds(fold: str) -> list[str]:
    """The tile folders (``TILES``) a full-size fold holds out: the small track's of the same family."""
    small = folds("small", "family")
    held = list(small.get(fold, []))
    if fold == "diffusion":  # the full diffusion fold holds out the unknown web images too: same here
        held += small.get("unknown", [])
    return held


@dataclass(frozen=True)
class Arm:
    """What a run of the folds changes from the track's recipe; each arm gets folders of its own."""

    variant: str | None = None  # another architecture (an ablation)
    init_seed: int | None = None  # another initialisation, same split and data order
    tiles: bool = False  # full track: the 32x32 sources as windows too
    recon: str | None = None  # a reconstruction bank: aligned fakes from the fold's own training reals
    recon_p: float = 0.3
    recon_scale: float = 1.0
    scratch: bool = False  # random initial weights instead of the track's ``init_from``
    epochs: int | None = None  # another number of epochs per fold than the track's
    match_jpeg: int | None = None  # another JPEG round trip for non-JPEG files than the track's (0: none)
    resample_p: float = 0.0  # 32x32: the dcgan64 tiles' resampling history on this share of both labels
    robust_p: float | None = None  # another share of degraded images (rescale, blur, JPEG) than the track's
    gray_p: float = 0.0  # the share of training images (both labels) seen in grey: colour is not evidence
    freq_mask_p: float = 0.0  # the share of training images (both labels) frequency-masked (``TrainConfig``)
    folder_balance: float = 0.0  # training draws weighted n**-power by folder size (``TrainConfig``)
    group_dro: float = 0.0  # online group DRO's step over the training folders (``TrainConfig``)
    group_dro_start: str = "even"  # where its weights start: "even" or by the folders' "sizes"
    sam: float = 0.0  # sharpness-aware minimisation's radius (``TrainConfig``)
    position_loss: bool = False  # the loss at every position of the last feature map (``TrainConfig``)
    # An ensemble arm: the equal-weight logit average of these arms' fold checkpoints, each member
    # ``VARIANT`` or ``VARIANT@SEED`` on this arm's other options (``fakescope ensemble``'s network).
    members: tuple[str, ...] = ()
    cross_fit: str | None = None  # "k/K": trained without the k-th of K parts of the fold's training images
    # A product-of-experts arm: trained against the fold's content-only baseline (``debias``
    # cross-fitted copies of it, each ``bias_epochs`` epochs of the track's content recipe on this
    # arm's other options; 1: one copy on all the training images).
    debias: int = 0
    bias_epochs: int | None = None
    # False: the control. The model trains as it would alone; only its readouts use the baselines.
    poe: bool = True
    # Which epoch a fold keeps (``TrainConfig.select_epoch``): "calib_auc" scores the fold's own
    # calibration split every second epoch and keeps the best; the held-out family never takes part.
    # The fold also scores its last epoch on the held-out family: the same run without the choice.
    select_epoch: str = "last"
    # How each fold's feature map becomes logits when it is scored (``fakescope.train.parse_readout``):
    # another readout than "mean" trains nothing; it reads the same arm's "mean" fold checkpoints.
    readout: str = "mean"

    def suffix(self) -> str:
        return (
            (f"-ens-{'+'.join(self.members)}" if self.members else "")
            + (f"-{self.variant}" if self.variant else "")
            + ("-tiles" if self.tiles else "")
            + (f"-recon{self.recon_p:g}" if self.recon else "")
            + (f"x{self.recon_scale:g}" if self.recon and self.recon_scale != 1 else "")
            + ("-scratch" if self.scratch else "")
            + (f"-ep{self.epochs}" if self.epochs else "")
            + (f"-jpeg{self.match_jpeg}" if self.match_jpeg is not None else "")
            + (f"-resample{self.resample_p:g}" if self.resample_p else "")
            + (f"-robust{self.robust_p:g}" if self.robust_p is not None else "")
            + (f"-gray{self.gray_p:g}" if self.gray_p else "")
            + (f"-fmask{self.freq_mask_p:g}" if self.freq_mask_p else "")
            + (f"-bal{self.folder_balance:g}" if self.folder_balance else "")
            + (f"-dro{self.group_dro:g}" if self.group_dro else "")
            + (f"-{self.group_dro_start}" if self.group_dro and self.group_dro_start != "even" else "")
            + (f"-sam{self.sam:g}" if self.sam else "")
            + ("-posloss" if self.position_loss else "")
            + (f"-init{self.init_seed}" if self.init_seed is not None else "")
            + (f"-xfit{self.cross_fit.replace('/', 'of')}" if self.cross_fit else "")
            + (f"-{'poe' if self.poe else 'prod'}{self.debias}" if self.debias else "")
            + (f"b{self.bias_epochs}" if self.debias and self.bias_epochs else "")
            + (f"-select-{self.select_epoch.replace('_', '-')}" if self.select_epoch != "last" else "")
            + (f"-{self.readout}" if self.readout != "mean" else "")
        )

    def bias_arms(self) -> list[Arm]:
        """A product-of-experts arm's content baselines (kind ``content``), each an arm of its own."""
        base = replace(self, debias=0, bias_epochs=None, poe=True, epochs=self.bias_epochs or self.epochs)
        if self.debias == 1:
            return [base]
        return [replace(base, cross_fit=f"{k}/{self.debias}") for k in range(self.debias)]

    def member_arms(self) -> list[Arm]:
        """An ensemble arm's members, each an arm of its own (its own fold folders, trained once)."""
        out = []
        for spec in self.members:
            variant, _, seed = spec.partition("@")
            if seed and not seed.isdigit():
                raise ValueError(f"ensemble member {spec!r}: a seed after '@' must be a number")
            out.append(replace(self, members=(), variant=variant, init_seed=int(seed) if seed else None))
        return out

    def recipe(self, track: str) -> dict[str, Any]:
        """The track's recipe as this arm trains it (``TrainConfig`` fields)."""
        recipe = {**TRACKS[track].recipe, **({"epochs": self.epochs} if self.epochs else {})}
        if self.variant:
            recipe["variant"] = self.variant
        if self.match_jpeg is not None:
            recipe["match_jpeg"] = self.match_jpeg
        if self.resample_p:
            recipe["resample_p"] = self.resample_p
        if self.robust_p is not None:
            recipe["robust_p"] = self.robust_p
        if self.gray_p:
            recipe["gray_p"] = self.gray_p
        if self.freq_mask_p:
            recipe["freq_mask_p"] = self.freq_mask_p
        if self.folder_balance:
            recipe["folder_balance"] = self.folder_balance
        if self.group_dro:
            recipe["group_dro"] = self.group_dro
            if self.group_dro_start != "even":
                recipe["group_dro_start"] = self.group_dro_start
        if self.sam:
            recipe["sam"] = self.sam
        if self.position_loss:
            recipe["position_loss"] = True
        if self.init_seed is not None:
            recipe["init_seed"] = self.init_seed
        if self.cross_fit:
            recipe["cross_fit"] = self.cross_fit
        if self.select_epoch != "last":
            recipe.update(select_epoch=self.select_epoch, calib_every=2)
        if self.scratch:
            recipe.pop("init_from", None)
        if self.tiles:
            if track != "full":
                raise ValueError("--tiles adds 32x32 sources to the full track's crops")
            recipe["tiles"] = list(TILES)
        if self.recon:
            # Aligned fakes from the fold's own training reals: no generator's images, so nothing of
            # the held-out family reaches the fold through them.
            recipe.update(recon=self.recon, recon_p=self.recon_p, recon_scale=self.recon_scale)
        return recipe


def fold_dir(out_dir: Path, track: str, fold: str, kind: str, arm: Arm) -> Path:
    """A fold's checkpoint folder."""
    return out_dir / track / f"{fold}-{kind}{arm.suffix()}"


def fold_config(track: str, fold: str, held: list[str], kind: str, out: Path, arm: Arm) -> TrainConfig:
    """The ``TrainConfig`` a fold trains (and an ensemble fold's split and held-out images)."""
    recipe = arm.recipe(track)
    resume = (out / "train_state.pt").exists()
    if resume:
        recipe.pop("init_from", None)  # the state it resumes already started from those weights
    if arm.tiles:
        held = [*held, *tile_folds(fold)]
    t = TRACKS[track]
    return TrainConfig(
        data=list(t.data),
        out=str(out),
        holdout=held,
        holdout_only=True,
        content_only=t.content_side if kind == "content" else 0,
        resume=resume,
        **recipe,
    )


def run_fold(track: str, fold: str, held: list[str], kind: str, out_dir: Path, arm: Arm) -> dict[str, Any]:
    """Trains (or resumes) a fold and returns its metrics; a finished fold is read back.

    An ensemble arm's fold first runs each member's fold, then combines their checkpoints into one
    network (as ``fakescope ensemble`` does) and scores it on the same held-out images.
    """
    out = fold_dir(out_dir, track, fold, kind, arm)
    config = out / "config.json"
    done = "holdout_product" if arm.debias else "holdout"
    if config.exists() and done in json.loads(config.read_text()).get("metrics", {}):
        return json.loads(config.read_text())["metrics"]
    if arm.readout != "mean":  # before the ensemble's branch: it reads an ensemble's combined checkpoint too
        return _run_readout_fold(track, fold, held, kind, out_dir, arm)
    if arm.members:
        members = arm.member_arms()
        for member in members:
            run_fold(track, fold, held, kind, out_dir, member)
        combine_checkpoints([fold_dir(out_dir, track, fold, kind, m) for m in members], out)
        cfg = fold_config(track, fold, held, kind, out, members[0])
        record = json.loads(config.read_text())
        record.setdefault("metrics", {})["holdout"] = score_holdout(cfg, out)
        config.write_text(json.dumps(record, indent=2))
        return record["metrics"]
    if arm.debias:
        return _run_product_fold(track, fold, held, kind, out_dir, arm)
    train(fold_config(track, fold, held, kind, out, arm))
    return json.loads(config.read_text())["metrics"]


def _run_product_fold(track: str, fold: str, held: list[str], kind: str, out_dir: Path, arm: Arm) -> dict[str, Any]:
    """A product-of-experts fold: the content baselines first, then the model trained against them
    (with ``arm.poe``; without, the control: the model trained alone), then its readouts alone, the
    baseline alone and the product, on the same held-out images."""
    if kind != "model":
        raise ValueError("a product-of-experts arm trains the model against the content baseline: --kinds model")
    bias = [str(fold_dir(out_dir, track, fold, "content", b)) for b in arm.bias_arms()]
    for b in arm.bias_arms():
        run_fold(track, fold, held, "content", out_dir, b)
    out = fold_dir(out_dir, track, fold, kind, arm)
    cfg = fold_config(track, fold, held, kind, out, arm)
    train(replace(cfg, bias_from=bias) if arm.poe else cfg)
    record = json.loads((out / "config.json").read_text())
    record["metrics"].update(score_holdout_with_bias(replace(cfg, bias_from=bias), out))
    (out / "config.json").write_text(json.dumps(record, indent=2))
    return record["metrics"]


def _run_readout_fold(track: str, fold: str, held: list[str], kind: str, out_dir: Path, arm: Arm) -> dict[str, Any]:
    """Another readout of the same arm's fold checkpoint (trained first if missing): nothing is
    trained; the fold's folder holds only the record, naming the checkpoint it read."""
    base = replace(arm, readout="mean")
    run_fold(track, fold, held, kind, out_dir, base)
    source = fold_dir(out_dir, track, fold, kind, base)
    out = fold_dir(out_dir, track, fold, kind, arm)
    out.mkdir(parents=True, exist_ok=True)
    holdout = score_holdout(fold_config(track, fold, held, kind, source, base), source, arm.readout)
    metrics = {"holdout": holdout}
    record = {"readout": arm.readout, "checkpoint": str(source), "metrics": metrics}
    (out / "config.json").write_text(json.dumps(record, indent=2))
    return metrics


def row(track: str, fold: str, kind: str, metrics: dict[str, Any]) -> dict[str, Any]:
    h = metrics["holdout"]
    return {
        "track": track,
        "fold": fold,
        "kind": kind,
        "held_out": h["folders"],
        "n": h["n"],
        "roc_auc": round(h["roc_auc"], 4),
        "accuracy": round(h["accuracy"], 4),
        **{
            f"roc_auc_{part}": round(metrics[f"holdout_{part}"]["roc_auc"], 4)
            for part in ("bias", "product")
            if f"holdout_{part}" in metrics
        },
        **(
            {
                "selected_epoch": metrics["selected_epoch"],
                # The run's last epoch on the same images (the fold without the choice).
                "roc_auc_last": last_epoch_auc(metrics),
            }
            if "selected_epoch" in metrics
            else {}
        ),
    }


def table(rows: list[dict[str, Any]]) -> str:
    by_fold: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_fold.setdefault(r["fold"], {})[r["kind"]] = r
    lines = [
        "| held-out fold | n | ROC-AUC | accuracy @0.5 | content-only ROC-AUC | gap |",
        "|---|---|---|---|---|---|",
    ]
    aucs, base = [], []
    for fold, kinds in by_fold.items():
        m, c = kinds.get("model"), kinds.get("content")
        auc = f"{m['roc_auc']:.3f}" if m else "-"
        cauc = f"{c['roc_auc']:.3f}" if c else "-"
        gap = f"{m['roc_auc'] - c['roc_auc']:+.3f}" if m and c else "-"
        n = (m or c or {}).get("n", "-")
        lines.append(
            f"| {fold} | {n} | {auc} | {m['accuracy']:.3f} | {cauc} | {gap} |"
            if m
            else f"| {fold} | {n} | - | - | {cauc} | - |"
        )
        if m:
            aucs.append(m["roc_auc"])
        if c:
            base.append(c["roc_auc"])
    mean = f"{sum(aucs) / len(aucs):.3f}" if aucs else "-"
    mean_c = f"{sum(base) / len(base):.3f}" if base else "-"
    lines.append(f"| **mean** | | **{mean}** | | {mean_c} | |")
    return "\n".join(lines)


def product_table(rows: list[dict[str, Any]]) -> str:
    """A product-of-experts arm's three readouts per fold: the model alone, its content baseline
    alone and the product of the two."""
    lines = [
        "| held-out fold | n | model alone | content baseline (bias) | product of both |",
        "|---|---|---|---|---|",
    ]
    done = [r for r in rows if r["kind"] == "model" and "roc_auc_product" in r]
    for r in done:
        lines.append(
            f"| {r['fold']} | {r['n']} | {r['roc_auc']:.3f} | {r['roc_auc_bias']:.3f} | {r['roc_auc_product']:.3f} |"
        )
    if done:
        means = [sum(r[k] for r in done) / len(done) for k in ("roc_auc", "roc_auc_bias", "roc_auc_product")]
        lines.append("| **mean** | | {:.3f} | {:.3f} | **{:.3f}** |".format(*means))
    return "\n".join(lines)


def selection_table(rows: list[dict[str, Any]]) -> str:
    """An epoch-selection arm's folds: the epoch each chose, its score, and the last epoch's."""
    lines = [
        "| held-out fold | n | selected epoch | ROC-AUC, selected | ROC-AUC, last epoch | selected - last |",
        "|---|---|---|---|---|---|",
    ]
    done = [r for r in rows if "selected_epoch" in r]
    for r in done:
        lines.append(
            f"| {r['fold']} | {r['n']} | {r['selected_epoch']} | {r['roc_auc']:.3f} | {r['roc_auc_last']:.3f} "
            f"| {r['roc_auc'] - r['roc_auc_last']:+.3f} |"
        )
    if done:
        sel, last = (sum(r[k] for r in done) / len(done) for k in ("roc_auc", "roc_auc_last"))
        lines.append(f"| **mean** | | | **{sel:.3f}** | {last:.3f} | {sel - last:+.3f} |")
    return "\n".join(lines)


def last_epoch_auc(metrics: dict[str, Any]) -> float:
    """A fold's held-out ROC-AUC at its last epoch, whether or not the arm chose another epoch (to four
    places, as ``row`` reports it)."""
    return round(float(metrics.get("holdout_last", metrics["holdout"])["roc_auc"]), 4)


def budget_by_other_folds(scores: dict[int, dict[str, float]]) -> dict[str, tuple[int, float]]:
    """Per fold, the budget (of ``scores``' keys: epochs -> fold -> ROC-AUC) with the highest mean over
    the *other* folds (a tie goes to the budget listed first), and the fold's own score at it: the
    fold's own score never takes part in its choice."""
    budgets = list(scores)
    folds_ = list(scores[budgets[0]])
    out = {}
    for fold in folds_:
        others = [f for f in folds_ if f != fold]
        best = budgets[0]
        for b in budgets[1:]:
            if sum(scores[b][f] for f in others) > sum(scores[best][f] for f in others):
                best = b
        out[fold] = (best, scores[best][fold])
    return out


def budget_table(scores: dict[int, dict[str, float]]) -> str:
    """Each budget's last-epoch ROC-AUC per fold, and the budget the other folds choose for it."""
    picked = budget_by_other_folds(scores)
    lines = [
        "| held-out fold | " + " | ".join(f"{b} epochs" for b in scores) + " | chosen by the other folds |",
        "|---|" + "---|" * (len(scores) + 1),
    ]
    for fold, (b, auc) in picked.items():
        lines.append(f"| {fold} | " + " | ".join(f"{scores[x][fold]:.3f}" for x in scores) + f" | {auc:.3f} ({b}) |")
    means = [sum(v.values()) / len(v) for v in scores.values()]
    chosen = sum(auc for _, auc in picked.values()) / len(picked)
    lines.append("| **mean** | " + " | ".join(f"{m:.3f}" for m in means) + f" | **{chosen:.3f}** |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--track", choices=sorted(TRACKS), required=True)
    ap.add_argument("--by", choices=["family", "generator"], default="family")
    ap.add_argument("--folds", nargs="*", help="only these folds (default: all)")
    ap.add_argument("--kinds", nargs="*", default=["model", "content"], choices=["model", "content"])
    ap.add_argument("--epochs", type=int, help="override the track's epochs per fold")
    ap.add_argument("--variant", help="another architecture on the track's recipe (an ablation; its own folders)")
    ap.add_argument("--init-seed", type=int, help="another initialisation (same split): how much a fold varies")
    ap.add_argument("--tiles", action="store_true", help="full track: train on the 32x32 sources as windows too")
    ap.add_argument("--recon", help="a reconstruction bank: aligned fakes from each fold's training reals")
    ap.add_argument("--recon-p", type=float, default=0.3, help="with --recon: the share of each batch's fakes")
    ap.add_argument("--recon-scale", type=float, default=1.0, help="with --recon: made at up to this enlargement")
    ap.add_argument("--from-scratch", action="store_true", help="random initial weights, not the track's init_from")
    ap.add_argument(
        "--match-jpeg",
        type=int,
        metavar="Q",
        help="another JPEG round trip for files that are not JPEGs than the track's (small: 75; 0: none)",
    )
    ap.add_argument(
        "--resample-p",
        type=float,
        default=0.0,
        help="small track: the dcgan64 tiles' resampling history on this share of both labels (README's control)",
    )
    ap.add_argument(
        "--robust-p",
        type=float,
        help="another share of images degraded in training (rescale, blur, JPEG; Wang et al. 2020) than the track's",
    )
    ap.add_argument(
        "--gray-p",
        type=float,
        default=0.0,
        help="the share of training images (both labels) seen in grey, so that colour is not a label",
    )
    ap.add_argument(
        "--freq-mask-p",
        type=float,
        default=0.0,
        help="the share of training images (both labels) with 15%% of their Fourier coefficients zeroed",
    )
    ap.add_argument(
        "--folder-balance",
        type=float,
        default=0.0,
        metavar="POWER",
        help="draw training images with weight n**-POWER, n their folder's (generator's, source's) images",
    )
    ap.add_argument(
        "--group-dro",
        type=float,
        default=0.0,
        metavar="STEP",
        help="online group DRO over the training folders (generators, sources), with this step",
    )
    ap.add_argument(
        "--group-dro-start",
        choices=GROUP_DRO_STARTS,
        default="even",
        help="group DRO's first weights: each label's folders even, or by their sizes (the plain mean loss)",
    )
    ap.add_argument(
        "--sam",
        type=float,
        default=0.0,
        metavar="RHO",
        help="sharpness-aware minimisation with this radius (Foret et al. 2021)",
    )
    ap.add_argument(
        "--position-loss",
        action="store_true",
        help="the loss at every position of the last feature map (Chai et al. 2020), not on their mean",
    )
    ap.add_argument(
        "--ensemble-of",
        nargs="+",
        default=[],
        metavar="VARIANT[@SEED]",
        help="score the logit average of these arms' fold checkpoints (trained first where missing)",
    )
    ap.add_argument(
        "--debias",
        type=int,
        default=0,
        metavar="K",
        help="train each fold's model against its content-only baseline (product of experts), K cross-fitted copies",
    )
    ap.add_argument("--bias-epochs", type=int, help="with --debias: the content baselines' epochs (default: --epochs)")
    ap.add_argument(
        "--no-poe",
        action="store_true",
        help="with --debias, the control: train the model alone; only the product readout uses the baselines",
    )
    ap.add_argument(
        "--select-epoch",
        choices=SELECT_EPOCH,
        default="last",
        help="calib_auc: each fold keeps the epoch that ranks its own calibration split best (scored every 2nd)",
    )
    ap.add_argument(
        "--readout",
        default="mean",
        help="how each fold's feature map becomes logits: mean (served), or topQ, the top Q share of "
        "positions' fake evidence (e.g. top0.1); reads the mean arm's checkpoints, trains nothing",
    )
    ap.add_argument(
        "--budget-by-other-folds",
        type=int,
        nargs="+",
        metavar="EPOCHS",
        help="run (or read back) the arm at each of these budgets; each fold takes the one the other folds score best",
    )
    ap.add_argument("--out", default="runs/protocol", help="fold checkpoints")
    ap.add_argument("--table", action="store_true", help="only print the table of finished folds")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    arm = Arm(
        variant=args.variant,
        init_seed=args.init_seed,
        tiles=args.tiles,
        recon=args.recon,
        recon_p=args.recon_p,
        recon_scale=args.recon_scale,
        scratch=args.from_scratch,
        epochs=args.epochs,
        match_jpeg=args.match_jpeg,
        resample_p=args.resample_p,
        robust_p=args.robust_p,
        gray_p=args.gray_p,
        freq_mask_p=args.freq_mask_p,
        folder_balance=args.folder_balance,
        group_dro=args.group_dro,
        group_dro_start=args.group_dro_start,
        sam=args.sam,
        position_loss=args.position_loss,
        members=tuple(args.ensemble_of),
        debias=args.debias,
        bias_epochs=args.bias_epochs,
        poe=not args.no_poe,
        select_epoch=args.select_epoch,
        readout=args.readout,
    )
    try:
        parse_readout(arm.readout)
    except ValueError as e:
        ap.error(str(e))
    if arm.debias and arm.readout != "mean":
        ap.error("--readout reads one network's checkpoint; a --debias fold's readout is the product: drop one")
    if arm.debias and (arm.members or args.kinds != ["model"]):
        ap.error("--debias trains the model against the content baseline: --kinds model, no --ensemble-of")
    if arm.members and (args.variant or args.init_seed is not None):
        ap.error("--ensemble-of names its members' variants and seeds: drop --variant and --init-seed")
    if args.budget_by_other_folds:
        if len(args.budget_by_other_folds) < 2 or args.epochs or args.kinds != ["model"]:
            ap.error("--budget-by-other-folds compares two or more budgets of the model: --kinds model, no --epochs")
        fold_held = {f: h for f, h in folds(args.track, args.by).items() if not args.folds or f in args.folds}
        scores = {
            e: {
                f: last_epoch_auc(run_fold(args.track, f, h, "model", Path(args.out), replace(arm, epochs=e)))
                for f, h in fold_held.items()
            }
            for e in args.budget_by_other_folds
        }
        print(budget_table(scores))
        return
    rows = []
    for fold, held in folds(args.track, args.by).items():
        if args.folds and fold not in args.folds:
            continue
        for kind in args.kinds:
            config = fold_dir(Path(args.out), args.track, fold, kind, arm) / "config.json"
            if args.table:
                metrics = json.loads(config.read_text()).get("metrics", {}) if config.exists() else {}
                if "holdout" not in metrics:
                    continue
            else:
                metrics = run_fold(args.track, fold, held, kind, Path(args.out), arm)
            rows.append(row(args.track, fold, kind, metrics))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if arm.debias:
        print(product_table(rows))
    if arm.select_epoch != "last":
        print(selection_table(rows))


if __name__ == "__main__":
    main()
