"""The ``vlm`` backend: CLIP finds the artifacts, Idefics2 says why.

Grounding comes first: the artifacts reported are the ones CLIP scored above threshold on an image
of the object class CLIP named (the strongest applicable one when none reaches it, so a fake never
goes unexplained). Idefics2 only writes their sentences. An artifact whose sentence is missing or
unreadable in the model's answer keeps its place with a sentence built from its CLIP score, so
malformed output never loses a detected artifact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fakescope.explain import MAX_ARTIFACTS, ExplainInput
from fakescope.explain.clip_scorer import _CLASS_NOUNS, ArtifactScores, ClipScorer
from fakescope.explain.idefics import DEFAULT_MAX_NEW_TOKENS, Idefics2Explainer, parse_explanation
from fakescope.explain.taxonomy import BY_NAME

__all__ = ["VLMExplainer"]

logger = logging.getLogger(__name__)


def _fallback(name: str, prob: float, verdict: ArtifactScores, threshold: float) -> str:
    return (
        f'CLIP rates "{BY_NAME[name].description}" at probability {prob:.2f} against a clean photograph '
        f"(threshold {threshold:.2f}), on an image it takes for {_CLASS_NOUNS[verdict.object_class]} "
        f"({verdict.class_probability:.0%})."
    )


class VLMExplainer:
    """CLIP artifact scoring followed by Idefics2 sentences."""

    name = "vlm"

    def __init__(self, scorer: ClipScorer, writer: Idefics2Explainer) -> None:
        self.scorer = scorer
        self.writer = writer

    @classmethod
    def load(
        cls,
        clip_model: str | None,
        vlm_model: str | None,
        vlm_lora: str | None = None,
        device: str = "auto",
        threshold: float = 0.5,
        top_k: int = MAX_ARTIFACTS,
        batch_size: int = 4,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> VLMExplainer:
        """Loads both models (once per process each).

        Raises:
            ExplainerConfigError: a model is not configured or its weights are missing.
        """
        if not 1 <= top_k <= MAX_ARTIFACTS:
            raise ValueError(f"top_k must be in 1..{MAX_ARTIFACTS}, got {top_k}")
        scorer = ClipScorer.load(clip_model, device=device, threshold=threshold, top_k=top_k, batch_size=32)
        writer = Idefics2Explainer.load(
            vlm_model, lora=vlm_lora, device=device, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        return cls(scorer, writer)

    def explain(self, inputs: Sequence[ExplainInput]) -> list[dict[str, str]]:
        if not inputs:
            return []
        images = [i.image for i in inputs]
        verdicts = self.scorer.score(images)
        detected = [v.artifacts or v.ranked[:1] for v in verdicts]
        answers = self.writer.generate(images, [[name for name, _ in d] for d in detected])
        out: list[dict[str, str]] = []
        for inp, v, d, answer in zip(inputs, verdicts, detected, answers, strict=True):
            parsed = parse_explanation(answer, [name for name, _ in d])
            missing = [name for name, _ in d if name not in parsed]
            if missing:
                logger.info(
                    "%s: model answer lacked %d of %d artifacts; using CLIP evidence", inp.name, len(missing), len(d)
                )
            out.append({name: parsed.get(name) or _fallback(name, p, v, self.scorer.threshold) for name, p in d})
        return out

    @property
    def models(self) -> dict[str, Any]:
        return {"clip": self.scorer.model, "idefics2": self.writer.model}
