"""How far an image lies from what the detector was trained on: a Mahalanobis domain score.

The detector's pooled penultimate features of training images are summarised by one mean per class
and a covariance shared by both (Lee et al., "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018). An image's distance is its
smallest squared Mahalanobis distance to a class mean; its *domain score* is that distance divided
by a threshold chosen on the calibration split so that a set share (95%) of held-out images from
the training distribution score at most 1. Above 1 the image is out of domain: its verdict is
reported as such, because nothing measured says how often the detector is right there.

The checkpoint was trained on images at its native input size, with rescaling augmentation down to
half size; an image resampled by more than ``max_resample`` (2x, either way) on its way to the input
is outside what was trained or measured, whatever its features say. The domain score is therefore
the larger of two ratios, each 1 at its limit: the feature distance over its threshold, and the
resampling factor over ``max_resample``.

Stored beside the weights as ``domain.safetensors`` (means, precision matrix) with the threshold and
how it was fitted in ``config.json``; a checkpoint without it gives no domain score.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["DOMAIN_FILE", "DomainModel", "fit_domain"]

DOMAIN_FILE = "domain.safetensors"


@dataclass
class DomainModel:
    """Class means ``(K, D)``, the shared precision matrix ``(D, D)`` and the distance threshold."""

    means: torch.Tensor
    precision: torch.Tensor
    threshold: float = 1.0
    info: dict[str, Any] | None = None
    max_resample: float | None = 2.0

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """Smallest squared Mahalanobis distance to a class mean for each row of ``(N, D)`` features."""
        f = features.float().to(self.means.device)
        diff = f[:, None, :] - self.means[None, :, :]  # (N, K, D)
        d = torch.einsum("nkd,de,nke->nk", diff, self.precision, diff)
        return d.min(dim=1).values

    def scores(self, features: torch.Tensor, resample: torch.Tensor | None = None) -> torch.Tensor:
        """Domain scores: at most 1 is in domain.

        Args:
            features: ``(N, D)`` pooled penultimate features.
            resample: ``(N,)`` factor by which each image was resized to the input (>= 1 either way),
                when known.
        """
        score = self.distances(features) / self.threshold
        if resample is not None and self.max_resample:
            score = torch.maximum(score, resample.to(score) / self.max_resample)
        return score

    def with_threshold(self, calib_features: torch.Tensor, in_domain_share: float = 0.95) -> DomainModel:
        """A copy whose threshold puts ``in_domain_share`` of ``calib_features`` in domain."""
        d = self.distances(calib_features)
        threshold = float(torch.quantile(d, in_domain_share))
        info = {**(self.info or {}), "in_domain_share": in_domain_share, "threshold_set_on": len(d)}
        return DomainModel(self.means, self.precision, threshold, info, self.max_resample)

    def save(self, directory: str | Path) -> dict[str, Any]:
        """Writes the tensors; returns the JSON part (threshold and provenance) for ``config.json``."""
        path = Path(directory) / DOMAIN_FILE
        save_file({"means": self.means.cpu().contiguous(), "precision": self.precision.cpu().contiguous()}, str(path))
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        return {
            "method": "mahalanobis",
            "threshold": self.threshold,
            "max_resample": self.max_resample,
            **(self.info or {}),
            "sha256": sha,
        }

    @classmethod
    def load(cls, directory: str | Path, record: dict[str, Any], device: torch.device) -> DomainModel:
        t = load_file(str(Path(directory) / DOMAIN_FILE), device=str(device))
        info = {k: v for k, v in record.items() if k not in ("method", "threshold", "sha256", "max_resample")}
        return cls(t["means"], t["precision"], float(record["threshold"]), info, record.get("max_resample"))


def fit_domain(features: torch.Tensor, labels: torch.Tensor, shrinkage: float = 1e-3) -> DomainModel:
    """Class means and the shared covariance of ``features`` ``(N, D)``; threshold 1 until set.

    A small ridge (``shrinkage`` times the mean variance) keeps the precision matrix finite when
    some feature directions never vary (ReLU features that are always 0).
    """
    f = features.double()
    classes = torch.unique(labels)
    means = torch.stack([f[labels == c].mean(0) for c in classes])
    centred = f - means[torch.searchsorted(classes, labels)]
    cov = centred.T @ centred / max(1, len(f) - len(classes))
    ridge = shrinkage * float(cov.diagonal().mean()) + 1e-12
    precision = torch.linalg.inv(cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype))
    return DomainModel(means.float(), precision.float(), 1.0, {"fitted_on": len(f), "shrinkage": shrinkage})
