"""A loaded detector: weights, preprocessing, calibration and GradCAM behind one small surface."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from fakescope.checkpoint import CheckpointMeta, load_checkpoint
from fakescope.domain import DOMAIN_FILE, DomainModel
from fakescope.gradcam import GradCAM, linear_head_grid
from fakescope.imageio import to_rgb_array
from fakescope.machine import resolve_device
from fakescope.models import Network
from fakescope.overlay import cam_from_grid

__all__ = [
    "DEFAULT_CHECKPOINT",
    "ROUTES_FILE",
    "Analysis",
    "Detector",
    "Route",
    "RoutedDetector",
    "load_detector",
    "member_folder",
    "resolve_checkpoint",
]

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "default"
# A folder holding this file is a routed detector: one checkpoint per route, in its sub-folders.
ROUTES_FILE = "routes.json"


def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    """``checkpoint``, else the shipped default (the services pass ``Settings.checkpoint``)."""
    return Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT


@dataclass
class Analysis:
    """What the detector says of a batch: calibrated fake probabilities ``(N,)``, GradCAM maps
    ``(N, H, W)`` when asked for, and domain scores ``(N,)`` (at most 1: in domain) when the
    checkpoint has a domain model."""

    probs: np.ndarray
    cams: np.ndarray | None = None
    domain: np.ndarray | None = None
    # The maps before resizing, ``(N, h, w)`` at the last stage's cells: what a result row keeps so
    # its overlay can be drawn later (fakescope.overlay); ``cams`` is drawn from them.
    grids: np.ndarray | None = None


class Detector:
    """Real-or-fake classification with calibrated probabilities and GradCAM maps.

    Not thread-safe: GradCAM registers hooks on the model for the duration of a call. Use one
    instance per worker process (they are cheap to share across calls in that process).
    """

    def __init__(
        self, model: Network, meta: CheckpointMeta, device: torch.device, domain: DomainModel | None = None
    ) -> None:
        self.model = model
        self.meta = meta
        self.device = device
        self.domain = domain
        self.fake_index = meta.labels.index("fake")
        self._gradcam = GradCAM(model, model.cam_target)
        # GradCAM's maps from the forward pass alone when the head allows it (see fakescope.gradcam):
        # one backward pass fewer per batch. Set False to take the hooks-and-gradients path.
        self.cam_from_head = _features_feed_linear_head(model)
        pre = meta.preprocess
        self._mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
        # On a GPU: fp16 autocast (the FFTs stay fp32 under autocast's own policy) and pinned host
        # buffers, so a batch's copy overlaps the previous batch's compute.
        self._cuda = device.type == "cuda"

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, device: str = "auto") -> Detector:
        """Loads a checkpoint folder (see :func:`resolve_checkpoint`) onto ``device``."""
        device = resolve_device(device)
        path = resolve_checkpoint(checkpoint)
        model, meta = load_checkpoint(path, device)
        domain = None
        if meta.domain:
            if not (path / DOMAIN_FILE).is_file():
                raise FileNotFoundError(f"checkpoint {path} names a domain model but has no {DOMAIN_FILE}")
            domain = DomainModel.load(path, meta.domain, torch.device(device))
        logger.info("loaded %s from %s on %s", meta.model_version, path, device)
        return cls(model, meta, torch.device(device), domain)

    @property
    def model_version(self) -> str:
        return self.meta.model_version

    @property
    def members(self) -> list[Detector]:
        """The detectors that answer, by route: this one alone (see :class:`RoutedDetector`)."""
        return [self]

    @property
    def model_versions(self) -> list[str]:
        return [self.model_version]

    def route(self, width: int, height: int) -> int:
        """Which of :attr:`members` answers an image of this size: this one."""
        return 0

    @property
    def input_size(self) -> tuple[int, int]:
        return self.meta.preprocess.input_size

    def prepare(self, im: Image.Image) -> np.ndarray:
        """``im`` as the model's ``(H, W, 3)`` uint8 input, resized as the checkpoint says."""
        pre = self.meta.preprocess
        return to_rgb_array(im, self.input_size, pre.interpolation, pre.resize)

    def to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 to the normalised ``(N, 3, H, W)`` input."""
        host = torch.from_numpy(np.ascontiguousarray(batch))
        if self._cuda:
            host = host.pin_memory()
        x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        return ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        """Calibrated probability of fake for each row of ``logits``."""
        return torch.softmax(logits.float() / self.meta.temperature, dim=1)[:, self.fake_index].cpu().numpy()

    def _with_tta(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # Mirror-image test-time augmentation when the checkpoint asks for it: the training data was
        # flipped, so the mirrored view is an equally valid second opinion.
        if not self.meta.tta_hflip:
            return logits
        with torch.no_grad(), self._autocast():
            return (logits + self.model(x.flip(-1)).float()) / 2

    def _autocast(self) -> torch.autocast:
        return torch.autocast("cuda", dtype=torch.float16, enabled=self._cuda)

    @torch.no_grad()
    def logits(self, batch: np.ndarray) -> torch.Tensor:
        """Raw (uncalibrated) logits of a ``(N, H, W, 3)`` uint8 batch."""
        x = self.to_tensor(batch)
        with self._autocast():
            logits = self.model(x).float()
        return self._with_tta(x, logits)

    @torch.no_grad()
    def pooled_features(self, batch: np.ndarray) -> torch.Tensor:
        """The head's input (pooled penultimate features) of a uint8 batch: what the domain model sees."""
        with self._autocast():
            feats = self.model.forward_features(self.to_tensor(batch))
            return self.model.forward_head(feats, pre_logits=True).float()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated fake probabilities of a ``(N, H, W, 3)`` uint8 batch."""
        return self.probabilities(self.logits(batch))

    def predict_with_cam(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fake probabilities and, for each image, the GradCAM map of its predicted class.

        Returns:
            ``(fake_prob (N,), cams (N, H, W) in [0, 1])``.
        """
        a = self.analyze(batch, cams=True)
        assert a.cams is not None
        return a.probs, a.cams

    def analyze(
        self,
        batch: np.ndarray,
        *,
        cams: bool = False,
        sizes: Sequence[tuple[int, int]] | None = None,
        maps: bool = True,
    ) -> Analysis:
        """Probabilities, GradCAM maps (``cams=True``) and domain scores of a uint8 batch in one pass.

        Args:
            batch: ``(N, H, W, 3)`` uint8 images at the input size.
            cams: also compute the GradCAM map of each image's predicted class.
            sizes: each image's original ``(width, height)``, so the domain score can count how far
                it was resampled; unknown when omitted.
        """
        x = self.to_tensor(batch)
        need_feats = self.domain is not None or (cams and self.cam_from_head)
        feats = None
        with torch.no_grad(), self._autocast():
            if need_feats:
                feats = self.model.forward_features(x)
                logits = self.model.forward_head(feats).float()
            else:
                logits = self.model(x).float()
        logits = self._with_tta(x, logits)
        domain = None
        if self.domain is not None:
            assert feats is not None
            with torch.no_grad():
                pooled = self.model.forward_head(feats, pre_logits=True)
            resample = None
            if sizes is not None:
                h, w = self.input_size
                dims = [(max(1, a), max(1, b)) for a, b in sizes]
                if self.meta.preprocess.resize == "shorter_side":
                    # Scaled by the shorter side (the longer one is cropped). Only enlarging counts: a
                    # full-size checkpoint's training images were themselves shrunk from up to 1024
                    # pixels and more, so a large photo shrunk to the input is what it was trained on,
                    # while a thumbnail blown up has detail no training image had.
                    factors = [max(1.0, min(h, w) / min(sw, sh)) for sw, sh in dims]
                else:
                    factors = [max(sw / w, w / sw, sh / h, h / sh) for sw, sh in dims]
                resample = torch.tensor(factors, dtype=torch.float32)
            domain = self.domain.scores(pooled, resample).cpu().numpy()
        cam_maps = grids = None
        if cams and self.cam_from_head:
            assert feats is not None
            grids = linear_head_grid(feats, self.model.head.weight, logits.argmax(1)).cpu().numpy()
        elif cams:
            # With TTA the verdict comes from both views: show the evidence for that verdict.
            with self._autocast():
                self._gradcam(x, logits.argmax(1))
            assert self._gradcam.last_grids is not None
            grids = self._gradcam.last_grids.float().cpu().numpy()
        if grids is not None and maps:
            # Drawn by the same torch-free code the API uses, so a map here and an overlay drawn later agree.
            cam_maps = np.stack([cam_from_grid(g, x.shape[-2:]) for g in grids])
        return Analysis(self.probabilities(logits), cam_maps, domain, grids)


@dataclass(frozen=True)
class Route:
    """One detector of a routed folder: ``path`` (a sub-folder) answers images whose shorter side is
    at most ``max_side`` pixels (None: any size); the first route that takes an image answers it."""

    name: str
    path: str
    max_side: int | None = None

    def takes(self, width: int, height: int) -> bool:
        return self.max_side is None or min(width, height) <= self.max_side


class RoutedDetector:
    """Several detectors, each answering the images of its own domain.

    A detector trained on 32x32 thumbnails knows nothing of a 1024-pixel photo, and one trained on
    full-size crops nothing of a thumbnail: the shipped folder routes CIFAKE-like small images to the
    32x32 model and the rest to the full-size model. Each result names the member that answered
    (its ``model_version``); the routed folder's own version names the members and the rules, so a
    cache keyed on it changes when either does.
    """

    def __init__(self, routes: Sequence[Route], detectors: Sequence[Detector]) -> None:
        if not routes or len(routes) != len(detectors):
            raise ValueError("a routed detector needs one detector per route, and at least one route")
        if routes[-1].max_side is not None:
            raise ValueError(f"the last route ({routes[-1].name}) must take every size (no max_side)")
        self.routes = list(routes)
        self.detectors = list(detectors)

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> RoutedDetector:
        spec = json.loads((path / ROUTES_FILE).read_text())
        routes = [Route(r["name"], r["path"], r.get("max_side")) for r in spec["routes"]]
        return cls(routes, [Detector.load(path / r.path, device=device) for r in routes])

    @property
    def members(self) -> list[Detector]:
        return self.detectors

    @property
    def model_versions(self) -> list[str]:
        return [d.model_version for d in self.detectors]

    @property
    def device(self) -> torch.device:
        return self.detectors[0].device

    @property
    def model_version(self) -> str:
        decides = [[r.name, r.max_side, d.model_version] for r, d in zip(self.routes, self.detectors, strict=True)]
        digest = hashlib.sha256(json.dumps(decides).encode()).hexdigest()[:12]
        return "+".join(d.meta.variant for d in self.detectors) + f"@{digest}"

    def route(self, width: int, height: int) -> int:
        return next(i for i, r in enumerate(self.routes) if r.takes(width, height))


def member_folder(checkpoint: str | Path | None, route: str | None = None) -> Path:
    """The folder of one checkpoint: ``checkpoint`` itself, or for a routed folder the sub-folder of
    ``route`` (None: its first route). Training, evaluation and calibration work on one checkpoint.

    Raises:
        ValueError: ``route`` is named for a single checkpoint, or is not one of the folder's routes.
    """
    path = resolve_checkpoint(checkpoint)
    if not (path / ROUTES_FILE).is_file():
        if route is not None:
            raise ValueError(f"{path} is a single checkpoint: it has no route {route!r}")
        return path
    routes = json.loads((path / ROUTES_FILE).read_text())["routes"]
    by_name = {r["name"]: r["path"] for r in routes}
    name = route if route is not None else routes[0]["name"]
    if name not in by_name:
        raise ValueError(f"{path} has no route {name!r} (routes: {', '.join(by_name)})")
    return path / by_name[name]


def load_detector(checkpoint: str | Path | None = None, device: str = "auto") -> Detector | RoutedDetector:
    """A checkpoint folder as a :class:`Detector`, or a routed folder (with ``routes.json``) as a
    :class:`RoutedDetector`; None: the shipped default."""
    path = resolve_checkpoint(checkpoint)
    if (path / ROUTES_FILE).is_file():
        return RoutedDetector.load(path, device=device)
    return Detector.load(path, device=device)


def _features_feed_linear_head(model: Network) -> bool:
    """Whether ``forward_features`` returns the last stage's output as is, into average pooling and a linear head.

    Then a logit's gradient at that output is the same at every cell and GradCAM needs no backward
    pass. Read from the architecture (``features_are_cam_target``; a test holds it to a forward pass
    for every variant), not from a dummy forward pass at every load.
    """
    pool = model.global_pool
    return (
        isinstance(pool, nn.AdaptiveAvgPool2d)
        and pool.output_size in (1, (1, 1))
        and isinstance(model.head, nn.Linear)
        and model.features_are_cam_target
    )
