"""Zero-shot artifact scoring with CLIP or SigLIP: which of the taxonomy's artifacts an image shows.

Each artifact becomes a prompt enriched with its description and is scored against a neutral
prompt for a clean photograph: the probability of the artifact is the two-way softmax of their
scaled similarities (for SigLIP the same difference of logits, its bias cancelling). Only artifacts
that apply to the image's zero-shot object class are scored, so fur flow is never reported on a
truck. Text embeddings are computed once per loaded model; images go through in batches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fakescope.explain import ENV_CLIP_MODEL
from fakescope.explain.loading import check_source, model_kwargs, once, resolving
from fakescope.explain.taxonomy import ARTIFACTS, OBJECT_CLASSES, Artifact
from fakescope.machine import resolve_device

__all__ = ["ArtifactScores", "ClipScorer", "artifact_prompt", "class_prompt"]

logger = logging.getLogger(__name__)

NEUTRAL_PROMPT = "a clean, natural photograph with no visible artifacts"

_CLASS_NOUNS = {
    "airplane": "an airplane",
    "automobile": "a car",
    "bird": "a bird",
    "cat": "a cat",
    "deer": "a deer",
    "dog": "a dog",
    "frog": "a frog",
    "horse": "a horse",
    "ship": "a ship",
    "truck": "a truck",
    "person": "a person",
    "other animal": "an animal",
    "other object": "an object",
    "scene": "a landscape or scene",
}


def artifact_prompt(a: Artifact) -> str:
    """The description-enriched prompt of one artifact."""
    return f"an AI-generated image with {a.name.lower()}: {a.description}"


def class_prompt(object_class: str) -> str:
    return f"a photo of {_CLASS_NOUNS[object_class]}"


@dataclass
class ArtifactScores:
    """One image's zero-shot verdict: its object class, the artifacts above threshold (at most
    ``top_k``) and every applicable artifact's probability, strongest first."""

    object_class: str
    class_probability: float
    artifacts: list[tuple[str, float]] = field(default_factory=list)
    ranked: list[tuple[str, float]] = field(default_factory=list)


@once
def _load(source: str, device: str) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoProcessor

    with resolving(source, "CLIP model"):
        processor = AutoProcessor.from_pretrained(source)
        model = AutoModel.from_pretrained(source, **model_kwargs(device))
    if not device.startswith("cuda"):
        model = model.to(device)
    model.eval()
    logger.info("loaded CLIP scorer %s (%s) on %s", source, type(model).__name__, device)
    return model, processor


class ClipScorer:
    """Scores artifacts and names object classes with a CLIP or SigLIP checkpoint.

    Args:
        model: a loaded ``CLIPModel``/``SiglipModel`` (anything with ``get_image_features`` and
            ``get_text_features``).
        processor: its processor.
        threshold: minimum artifact probability reported.
        top_k: at most this many artifacts per image.
        batch_size: images per forward pass.
    """

    def __init__(self, model: Any, processor: Any, threshold: float = 0.5, top_k: int = 5, batch_size: int = 32):
        self.model = model
        self.processor = processor
        self.threshold = threshold
        self.top_k = top_k
        self.batch_size = batch_size
        self._text: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, source: str | None, device: str = "auto", **kwargs: Any) -> ClipScorer:
        """Loads (once per process) the checkpoint at ``source``, a hub id or a local folder.

        Raises:
            ExplainerConfigError: nothing configured, or no weights where ``source`` points.
        """
        source = check_source(source, "CLIP model", ENV_CLIP_MODEL)
        model, processor = _load(source, resolve_device(device))
        return cls(model, processor, **kwargs)

    @property
    def _device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def _is_siglip(self) -> bool:
        return hasattr(self.model, "logit_bias")

    def _features(self, out: Any) -> Any:
        # transformers 4.x returns the projected tensor, 5.x a model output carrying it as pooler_output.
        return out if hasattr(out, "norm") else out.pooler_output

    def _embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        tok = self.processor.tokenizer
        max_len = getattr(self.model.config, "text_config", self.model.config).max_position_embeddings
        # SigLIP was trained on max_length padding; CLIP on padding to the longest.
        padding = "max_length" if self._is_siglip else True
        enc = tok(list(prompts), padding=padding, truncation=True, max_length=max_len, return_tensors="pt")
        with torch.inference_mode():
            emb = self._features(self.model.get_text_features(**enc.to(self._device))).float()
        return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()

    def _text_bank(self) -> dict[str, np.ndarray]:
        if not self._text:
            self._text["artifacts"] = self._embed_text([artifact_prompt(a) for a in ARTIFACTS])
            self._text["neutral"] = self._embed_text([NEUTRAL_PROMPT])[0]
            self._text["classes"] = self._embed_text([class_prompt(c) for c in OBJECT_CLASSES])
        return self._text

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised image embeddings, in batches of ``batch_size``."""
        import torch
        from PIL import Image

        out = []
        for i in range(0, len(images), self.batch_size):
            # PIL images: the processor would otherwise wrap read-only arrays in tensors it may write to.
            batch = [Image.fromarray(np.asarray(im)) for im in images[i : i + self.batch_size]]
            pix = self.processor.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            pix = pix.to(self._device, dtype=next(self.model.parameters()).dtype)
            with torch.inference_mode():
                emb = self._features(self.model.get_image_features(pixel_values=pix)).float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)

    def _scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp().item())

    def classify(self, images: Sequence[np.ndarray]) -> list[str]:
        """The zero-shot object class (a key of ``OBJECT_CLASSES``) of each image."""
        return [s.object_class for s in self._classes(self.embed_images(images))]

    def _classes(self, img: np.ndarray) -> list[ArtifactScores]:
        bank = self._text_bank()
        logits = self._scale() * img @ bank["classes"].T
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        names = list(OBJECT_CLASSES)
        return [
            ArtifactScores(names[int(k)], float(p[int(k)])) for p, k in zip(probs, probs.argmax(axis=1), strict=True)
        ]

    def score(self, images: Sequence[np.ndarray]) -> list[ArtifactScores]:
        """Per image: the object class and the applicable artifacts whose probability reaches
        ``threshold``, strongest first, at most ``top_k``."""
        img = self.embed_images(images)
        if not len(images):
            return []
        bank = self._text_bank()
        verdicts = self._classes(img)
        diff = self._scale() * (img @ bank["artifacts"].T - (img @ bank["neutral"])[:, None])
        probs = 1.0 / (1.0 + np.exp(-diff))
        for v, p in zip(verdicts, probs, strict=True):
            ranked = sorted(
                ((a.name, float(q)) for a, q in zip(ARTIFACTS, p, strict=True) if a.applies_to(v.object_class)),
                key=lambda t: -t[1],  # stable: ties keep the taxonomy's order
            )
            v.ranked = ranked
            v.artifacts = [t for t in ranked if t[1] >= self.threshold][: self.top_k]
        return verdicts
