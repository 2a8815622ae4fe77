"""Explanations: which artifacts of the task's taxonomy give a fake image away, and why.

Two backends sit behind one small surface:

- ``evidence`` (the default): measures signals that generators leave (spectral peaks, high-frequency
  energy, smoothness, edge statistics, colour, where the GradCAM mass lies), scores each against
  the distribution measured on real photos, and writes sentences that cite the measured values. It
  needs no pretrained weights.
- ``vlm``: a CLIP (or SigLIP) model scores the taxonomy's artifacts on the image, gated by a
  zero-shot object class, and an Idefics2 model (optionally with a LoRA adapter) writes the
  reasons for the artifacts CLIP found.

Callers build :class:`ExplainInput` objects (usually with :meth:`ExplainInput.from_result` from a
``classify_items(..., keep_arrays=True)`` result) and call ``load_explainer().explain(inputs)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from fakescope.settings import ExplainSettings

if TYPE_CHECKING:
    from fakescope.pipeline import ImageResult

__all__ = [
    "BACKENDS",
    "ENV_BACKEND",
    "ENV_CLIP_MODEL",
    "ENV_VLM_LORA",
    "ENV_VLM_MAX_NEW_TOKENS",
    "ENV_VLM_MODEL",
    "MAX_ARTIFACTS",
    "ExplainInput",
    "ExplainInputError",
    "Explainer",
    "ExplainerConfigError",
    "explain_with_evidence",
    "load_explainer",
]

logger = logging.getLogger(__name__)

# The variables of ExplainSettings, for error messages: asked of the settings, not spelt again here.
ENV_BACKEND = ExplainSettings.variable("backend")
ENV_CLIP_MODEL = ExplainSettings.variable("clip_model")
ENV_VLM_MODEL = ExplainSettings.variable("vlm_model")
ENV_VLM_LORA = ExplainSettings.variable("vlm_lora")
ENV_VLM_MAX_NEW_TOKENS = ExplainSettings.variable("vlm_max_new_tokens")

BACKENDS = ("evidence", "vlm")

# The task allows any number of artifacts per image; more than a handful reads as a list of
# guesses rather than an explanation, and the published solutions that listed ten or more were
# mostly repeating one observation under different names.
MAX_ARTIFACTS = 5


class ExplainInputError(ValueError):
    """An input that cannot be explained (missing arrays, wrong shape or dtype): an error for that
    image only, raised when its :class:`ExplainInput` is built."""


class ExplainerConfigError(RuntimeError):
    """The configured backend cannot be loaded: unknown name, or weights missing at the given path."""


def _check_rgb(name: str, field: str, a: Any) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ExplainInputError(f"{name}: {field} is {type(a).__name__}, expected a numpy array")
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ExplainInputError(f"{name}: {field} has shape {a.shape}, expected (H, W, 3)")
    if a.dtype != np.uint8:
        raise ExplainInputError(f"{name}: {field} has dtype {a.dtype}, expected uint8")
    return a


@dataclass
class ExplainInput:
    """What an explainer sees of one image.

    Attributes:
        name: the image's name (file name or key), used only in messages.
        image: the display image, (H, W, 3) uint8, at most 384 px a side.
        model_input: the image as the detector sees it, (h, w, 3) uint8 (32x32 for the CIFAKE detector).
        cam: the GradCAM map of the predicted class at the detector's input size, values in [0, 1],
            or None when the caller did not compute one.
        fake_probability: the detector's calibrated probability that the image is fake.
    """

    name: str
    image: np.ndarray
    model_input: np.ndarray
    cam: np.ndarray | None
    fake_probability: float

    def __post_init__(self) -> None:
        self.image = _check_rgb(self.name, "image", self.image)
        self.model_input = _check_rgb(self.name, "model_input", self.model_input)
        if self.cam is not None:
            cam = np.asarray(self.cam, dtype=np.float32)
            if cam.ndim != 2:
                raise ExplainInputError(f"{self.name}: cam has shape {cam.shape}, expected (h, w)")
            if not np.all(np.isfinite(cam)):
                raise ExplainInputError(f"{self.name}: cam contains NaN or infinite values")
            self.cam = cam
        p = float(self.fake_probability)
        if not 0.0 <= p <= 1.0:
            raise ExplainInputError(f"{self.name}: fake_probability {p} is outside [0, 1]")
        self.fake_probability = p

    @classmethod
    def from_result(cls, result: ImageResult) -> ExplainInput:
        """Builds the input from a ``classify_items(..., keep_arrays=True)`` result.

        Raises:
            ExplainInputError: the result is an error, or was produced without ``keep_arrays``.
        """
        if result.error is not None:
            raise ExplainInputError(f"{result.name}: cannot explain a failed image ({result.error})")
        if result.display is None or result.model_input is None or result.fake_probability is None:
            raise ExplainInputError(f"{result.name}: result has no arrays; classify with keep_arrays=True")
        return cls(
            name=result.name,
            image=result.display,
            model_input=result.model_input,
            cam=result.cam,
            fake_probability=result.fake_probability,
        )


@runtime_checkable
class Explainer(Protocol):
    """Names the artifacts that give each image away.

    ``explain`` returns, per input and in input order, ``{artifact name verbatim from the taxonomy:
    one-sentence reason}`` with at most :data:`MAX_ARTIFACTS` entries, strongest first. The same
    inputs always give the same output.
    """

    name: str

    def explain(self, inputs: Sequence[ExplainInput]) -> list[dict[str, str]]: ...


Evidence = list[dict[str, Any]]


def explain_with_evidence(
    explainer: Explainer, inputs: Sequence[ExplainInput]
) -> list[tuple[dict[str, str], Evidence | None]]:
    """Each input's ``{artifact: reason}`` and, from an explainer that measures (the evidence
    backend's ``evidence``), its reasons as data: ``artifact``, ``signal``, ``value``, likelihood
    ``ratio`` and ``reason``; None from one that does not (a VLM writes sentences, not measurements)."""
    if not inputs:
        return []
    evidence = getattr(explainer, "evidence", None)
    if evidence is None:
        return [(e, None) for e in explainer.explain(inputs)]
    out: list[tuple[dict[str, str], Evidence | None]] = []
    for items in evidence(inputs):
        out.append(({e["artifact"]: e["reason"] for e in items}, items))
    return out


def load_explainer(backend: str | None = None, *, config: ExplainSettings | None = None, **options: Any) -> Explainer:
    """Builds the configured explainer; call once per process and reuse it.

    Args:
        backend: ``"evidence"`` or ``"vlm"``; None: ``config``'s (see
            :class:`~fakescope.settings.ExplainSettings`: ``vlm`` when both its CLIP and VLM models
            are set, else ``evidence``).
        config: the explainer's settings (``Settings.explain``); None reads them from the
            environment (``Settings().explain``).
        **options: passed to the backend, over ``config``. ``evidence``: ``calibration`` (path of a
            calibration JSON), ``clip_model`` (optional zero-shot class gate), ``max_artifacts``.
            ``vlm``: ``clip_model``, ``vlm_model``, ``vlm_lora``, ``device``, ``max_new_tokens``
            (default 240), ``threshold``, ``top_k``, ``batch_size``.

    Raises:
        ExplainerConfigError: unknown backend, or weights missing where the configuration points.
    """
    from fakescope.settings import Settings

    cfg = config if config is not None else Settings().explain
    backend = (backend or cfg.chosen_backend).strip().lower()
    if backend == "evidence":
        from fakescope.explain.evidence import EvidenceExplainer

        # CLIP here only names the object class, so that class-specific artifacts (fur, wheels)
        # are reported only on images of that class; without it only class-agnostic ones are.
        options.setdefault("clip_model", cfg.clip_model)
        return EvidenceExplainer.load(**options)
    if backend == "vlm":
        from fakescope.explain.vlm import VLMExplainer

        options.setdefault("clip_model", cfg.clip_model)
        options.setdefault("vlm_model", cfg.vlm_model)
        options.setdefault("vlm_lora", cfg.vlm_lora)
        if cfg.vlm_max_new_tokens is not None:
            options.setdefault("max_new_tokens", cfg.vlm_max_new_tokens)
        return VLMExplainer.load(**options)
    raise ExplainerConfigError(f"unknown explain backend {backend!r}; expected one of {', '.join(BACKENDS)}")
