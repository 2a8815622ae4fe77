"""Checkpoints: weights as safetensors, everything needed to use them as a small JSON beside them.

A checkpoint is a folder with ``model.safetensors`` and ``config.json``. The JSON carries the format
version, the variant and its architecture, the preprocessing (input size, mean, std, interpolation),
the label order, the calibration temperature, and the record of how it was trained and what it scored.
Loading is strict: a key that does not match the architecture is an error, not a silent skip.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fakescope.models import DetectorNet, DetectorNetConfig, EnsembleConfig, FreqNetEnsemble, Network, build_network
from fakescope.models.freqnet_resnet import checkpoint_filter_fn

__all__ = [
    "FORMAT_VERSION",
    "CheckpointMeta",
    "Preprocess",
    "checkpoint_members",
    "combine_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor; travels with the weights."""

    input_size: tuple[int, int] = (32, 32)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    interpolation: str = "bicubic"
    # "stretch": resized to input_size whatever its aspect (the 32x32 models, trained on square
    # thumbnails); "shorter_side": shorter side to input_size, then the centre crop, the way the
    # full-size training data (multigen/full) was normalised.
    resize: str = "stretch"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(
            input_size=tuple(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=d["interpolation"],
            resize=d.get("resize", "stretch"),
        )


@dataclass
class CheckpointMeta:
    """The JSON half of a checkpoint."""

    # A registered variant's name, or for an ensemble its members' names joined by "+".
    variant: str
    arch: DetectorNetConfig | EnsembleConfig
    preprocess: Preprocess
    labels: tuple[str, ...] = ("real", "fake")
    temperature: float = 1.0
    tta_hflip: bool = False
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # The domain score's threshold and provenance (fakescope.domain); empty: no domain score.
    domain: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = self.arch.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckpointMeta:
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"checkpoint format version {version!r} is not supported (expected {FORMAT_VERSION})")
        return cls(
            variant=d["variant"],
            arch=(EnsembleConfig if "members" in d["arch"] else DetectorNetConfig).from_dict(d["arch"]),
            preprocess=Preprocess.from_dict(d["preprocess"]),
            labels=tuple(d["labels"]),
            temperature=float(d["temperature"]),
            tta_hflip=bool(d.get("tta_hflip", False)),
            training=d.get("training", {}),
            metrics=d.get("metrics", {}),
            domain=d.get("domain", {}),
        )

    @property
    def model_version(self) -> str:
        """A short, stable name for the answers this checkpoint gives: variant plus a hash of everything
        that decides them (the weights, preprocessing, labels, temperature and test-time flips).

        Recalibrating changes the probabilities without touching the weights, so it changes the version
        too: the job service's result cache is keyed on it.
        """
        preprocess = asdict(self.preprocess)
        if preprocess["resize"] == "stretch":
            # The default, which every checkpoint before the field had: their versions (and cached results) stay.
            del preprocess["resize"]
        decides = {
            "weights": self.training.get("weights_sha256", "unknown"),
            "preprocess": preprocess,
            "labels": list(self.labels),
            "temperature": self.temperature,
            "tta_hflip": self.tta_hflip,
        }
        if self.domain:
            decides["domain"] = {k: self.domain.get(k) for k in ("threshold", "sha256", "max_resample")}
        digest = hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()
        return f"{self.variant}@{digest[:12]}"


def save_checkpoint(directory: str | Path, model: Network, meta: CheckpointMeta) -> Path:
    """Writes ``model.safetensors`` and ``config.json`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in checkpoint_filter_fn(model.state_dict()).items()}
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    meta.training["weights_sha256"] = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.replace(directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
    return directory


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Network, CheckpointMeta]:
    """Builds the model described by ``config.json`` and loads its weights strictly, in eval mode.

    Raises:
        FileNotFoundError: the folder or one of its two files is missing.
    """
    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {directory} has no {name}")
    meta = CheckpointMeta.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    model = build_network(meta.arch)
    state = checkpoint_filter_fn(load_file(str(directory / WEIGHTS_FILE), device="cpu"))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta


def checkpoint_members(
    spec: str | Path, device: str | torch.device = "cpu"
) -> list[tuple[str, DetectorNet, CheckpointMeta]]:
    """The single networks in a checkpoint, each as ``(name, network, meta)``.

    A trained checkpoint is one member, named by its path. An ensemble gives its members back, each
    with its own head and the record it was combined with (its training config, time and metrics),
    named by the path it was combined from. ``spec`` may end in ``#N`` to take only member ``N``
    (from 0) of an ensemble, so a shipped ensemble's members can be recombined with new ones.
    """
    text = str(spec)
    index: int | None = None
    if "#" in text and not Path(text).exists():
        text, _, idx = text.rpartition("#")
        if not idx.isdigit():
            raise ValueError(f"{spec}: a member index after '#' must be a number")
        index = int(idx)
    net, meta = load_checkpoint(text, device)
    if isinstance(net, DetectorNet):
        if index not in (None, 0):
            raise ValueError(f"{text} is a single network: it has no member {index}")
        return [(text, net, meta)]
    assert isinstance(meta.arch, EnsembleConfig)
    records = meta.training.get("members", [])
    out = []
    for i, (member, variant) in enumerate(zip(net.nets(), meta.arch.variants, strict=True)):
        if index is not None and i != index:
            continue
        rec = records[i] if i < len(records) else {}
        member_meta = CheckpointMeta(
            variant=variant,
            arch=member.cfg,
            preprocess=meta.preprocess,
            labels=meta.labels,
            training={
                "config": rec.get("config", {}),
                "split": meta.training.get("split", {}),
                "train_seconds": rec.get("train_seconds"),
                "model_version": rec.get("model_version"),
            },
            metrics=rec.get("metrics", {}),
        )
        out.append((str(rec.get("path") or f"{text}#{i}"), member, member_meta))
    if not out:
        raise ValueError(f"{text} has {len(meta.arch.variants)} members: there is no member {index}")
    return out


def combine_checkpoints(
    members: Sequence[str | Path], directory: str | Path, weights: Sequence[float] | None = None
) -> Path:
    """Writes an ensemble checkpoint of ``members`` (checkpoint folders) at ``directory``.

    The members must share the preprocessing and the train/validation split (the same sources, seed
    and sizes, checked by the split's fingerprint), so the ensemble's validation images are still
    ones no member trained on. An ensemble given as a member is taken apart into its members (see
    :func:`checkpoint_members`, which also reads ``PATH#N``). Its temperature starts at 1 and it has
    no domain model: calibrate it (``fakescope calibrate``) as any trained checkpoint. ``weights``:
    each resulting member's share of the logit average (default equal).
    """
    loaded = [m for spec in members for m in checkpoint_members(spec)]
    if len(loaded) < 2:
        raise ValueError("an ensemble needs at least two members")
    if weights is not None and len(weights) != len(loaded):
        raise ValueError(f"{len(weights)} weights for {len(loaded)} members")
    names = [name for name, _, _ in loaded]
    nets = [net for _, net, _ in loaded]
    metas = [meta for _, _, meta in loaded]
    for name, meta in zip(names, metas, strict=True):
        if meta.preprocess != metas[0].preprocess or meta.labels != metas[0].labels:
            raise ValueError(f"{name} has other preprocessing or labels than {names[0]}")
        split = meta.training.get("split", {})
        first = metas[0].training.get("split", {})
        if not split.get("val_fingerprint") or split.get("val_fingerprint") != first.get("val_fingerprint"):
            raise ValueError(f"{name} was not trained on the same split as {names[0]} (validation fingerprints differ)")
    ens = FreqNetEnsemble.from_members(nets, [m.variant for m in metas], weights or [1.0] * len(nets))
    meta = CheckpointMeta(
        variant="+".join(m.variant for m in metas),
        arch=ens.cfg,
        preprocess=metas[0].preprocess,
        labels=metas[0].labels,
        training={
            # The split record and config of the first member: every member shares the split, and
            # evaluation reads it from here.
            "config": metas[0].training.get("config", {}),
            "split": metas[0].training.get("split", {}),
            "members": [
                {
                    "path": name,
                    "model_version": m.training.get("model_version") or m.model_version,
                    "config": m.training.get("config", {}),
                    "train_seconds": m.training.get("train_seconds"),
                    "metrics": m.metrics,
                }
                for name, m in zip(names, metas, strict=True)
            ],
            "train_seconds": sum(float(m.training.get("train_seconds") or 0.0) for m in metas),
        },
    )
    return save_checkpoint(directory, ens, meta)
