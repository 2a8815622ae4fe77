"""A small ensemble of detectors built as one network, so everything downstream sees one model.

Averaging the members' logits is the same computation as one linear head over their concatenated
pooled features: the head's weight is the members' heads side by side, each scaled by the member's
weight, and its bias the weighted sum of theirs. So :class:`FreqNetEnsemble` concatenates the
members' last-stage maps (a coarser map is repeated up to the finest grid, which leaves its average,
and so its logits, unchanged), pools once and applies that head. GradCAM (with or without a backward
pass), the domain model on pooled features, temperature scaling and TTA then work unchanged, and the
evidence map shows every member's evidence for the ensemble's verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from fakescope.models.freqnet_resnet import DetectorNet, DetectorNetConfig

__all__ = ["EnsembleConfig", "FreqNetEnsemble"]


@dataclass(frozen=True)
class EnsembleConfig:
    """The members' architectures, their variant names and their weights in the logit average."""

    members: tuple[DetectorNetConfig, ...]
    variants: tuple[str, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an ensemble needs at least one member")
        if not len(self.members) == len(self.variants) == len(self.weights):
            raise ValueError("an ensemble needs one variant name and one weight per member")
        if any(w <= 0 for w in self.weights) or abs(sum(self.weights) - 1.0) > 1e-6:
            raise ValueError(f"member weights must be positive and sum to 1, got {self.weights}")
        if len({m.num_classes for m in self.members}) != 1:
            raise ValueError("ensemble members must have the same classes")

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": [m.to_dict() for m in self.members],
            "variants": list(self.variants),
            "weights": list(self.weights),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnsembleConfig:
        return cls(
            members=tuple(DetectorNetConfig.from_dict(m) for m in d["members"]),
            variants=tuple(d["variants"]),
            weights=tuple(float(w) for w in d["weights"]),
        )


class FreqNetEnsemble(nn.Module):
    """Members ``members.N`` (each a :class:`DetectorNet`, with its own head kept for the record)
    and one ``head`` over their concatenated features, equal to the weighted mean of their heads.

    ``cam_target`` is the concatenated map, the same role a single network's last stage plays.
    """

    def __init__(self, cfg: EnsembleConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(DetectorNet(c) for c in cfg.members)
        self.num_features = sum(m.num_features for m in self.nets())
        self.cam_target = nn.Identity()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Identity()
        self.head = nn.Linear(self.num_features, cfg.num_classes)
        self.sync_head()

    @classmethod
    def from_members(
        cls, members: Sequence[DetectorNet], variants: Sequence[str], weights: Sequence[float]
    ) -> FreqNetEnsemble:
        """An ensemble of trained networks (their weights are copied)."""
        total = float(sum(weights))
        cfg = EnsembleConfig(tuple(m.cfg for m in members), tuple(variants), tuple(w / total for w in weights))
        ens = cls(cfg)
        for mine, theirs in zip(ens.members, members, strict=True):
            mine.load_state_dict(theirs.state_dict())
        ens.sync_head()
        return ens

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """One entry: the concatenated map (the finest member grid), GradCAM's target."""
        return [
            {
                "num_chs": self.num_features,
                "reduction": min(m.feature_info[-1]["reduction"] for m in self.nets()),
                "module": "cam_target",
            }
        ]

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def get_classifier(self) -> nn.Linear:
        return self.head

    def nets(self) -> list[DetectorNet]:
        """The members, typed."""
        return [cast(DetectorNet, m) for m in self.members]

    @torch.no_grad()
    def sync_head(self) -> None:
        """Sets ``head`` to the members' heads side by side, scaled by their weights."""
        heads = [m.head for m in self.nets()]
        weights = self.cfg.weights
        self.head.weight.copy_(torch.cat([w * h.weight for w, h in zip(weights, heads, strict=True)], dim=1))
        self.head.bias.copy_(torch.stack([w * h.bias for w, h in zip(weights, heads, strict=True)]).sum(0))

    @property
    def features_are_cam_target(self) -> bool:
        """Always: the concatenated map is ``cam_target``'s output and what ``forward_features`` returns."""
        return True

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        maps = [m.forward_features(x) for m in self.nets()]
        h = max(f.shape[-2] for f in maps)
        w = max(f.shape[-1] for f in maps)
        grown = []
        for f in maps:
            if f.shape[-2:] != (h, w):
                if h % f.shape[-2] or w % f.shape[-1]:
                    raise ValueError(f"member grids {[tuple(f.shape[-2:]) for f in maps]} do not divide each other")
                f = F.interpolate(f, size=(h, w), mode="nearest")
            grown.append(f)
        return self.cam_target(torch.cat(grown, dim=1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
