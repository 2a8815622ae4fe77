"""The evidence explainer: artifacts named from measured image statistics, needing no pretrained weights.

Each rule ties one tail of one signal (:mod:`fakescope.explain.signals`) to the taxonomy artifact
that shifts it: high-frequency energy above the real range is a frequency-domain signature, residual
noise below it in flat regions is artificial smoothness, and so on. A rule's strength is a
likelihood ratio: how much more common a value this far into the rule's tail is among generated
images than among real photos, both measured on held-out images (the calibration file written by
:mod:`fakescope.explain.calibrate`). A reason is cited only where that ratio is at least
``min_ratio`` (3), strongest first, and rules whose signal separates fakes from reals no better than
``min_auc`` (0.6) are not used at all: a sentence that reads like evidence but is as likely on a real photo
is not written. The sentence quotes the value, the ratio and the real median, so a reader can check
the claim.

Object class: pixel statistics cannot tell a cat from a truck, so without a class gate this backend
names only class-agnostic artifacts. When a CLIP model is configured it names the object class
zero-shot (:class:`fakescope.explain.clip_scorer.ClipScorer`), and rules for class-specific
artifacts (fur flow on furred animals) and class-dependent wording (natural textures on animals)
come into play.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fakescope.explain import MAX_ARTIFACTS, ExplainerConfigError, ExplainInput
from fakescope.explain.signals import SIGNALS, Measurements, measure, size_bucket
from fakescope.explain.taxonomy import BY_NAME

__all__ = ["DEFAULT_CALIBRATION", "RULES", "Calibration", "EvidenceExplainer", "Rule", "Scored"]

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION = "calibration.json"

# A reason is cited only where its value is at least this many times as common among generated images
# as among real photos; a rule whose signal's ROC-AUC (in the rule's direction) is below MIN_AUC
# separates too little to be used at all. Chosen on 1,000 + 1,000 training-split images outside the
# calibration set (`python ops/explain_faithfulness.py runs/train-split --outside-calibration 2000
# --limit 1000 --min-ratio 2`, then 3): at 2, artifacts were cited on fakes only 1.2-2.1x as often as
# on photos (the tail past a threshold of 2 is barely over 2); at 3, 2.8-3.5x.
MIN_RATIO = 3.0
MIN_AUC = 0.6


@dataclass(frozen=True)
class Rule:
    """One tail of one signal, read as one artifact.

    Attributes:
        signal: key in :data:`fakescope.explain.signals.SIGNALS`.
        tail: ``"high"`` or ``"low"``: which side of the real distribution is suspicious.
        artifact: the taxonomy name reported.
        template: the sentence; fields ``{label}``, ``{value}``, ``{rel}`` (the likelihood ratio,
            e.g. "a value 4.2x more common in generated images than in real photos"), ``{median}``,
            plus any measurement detail.
        kinds: object kinds (taxonomy) the rule needs; empty means any image, class known or not.
    """

    signal: str
    tail: str
    artifact: str
    template: str
    kinds: frozenset[str] = frozenset()


RULES: tuple[Rule, ...] = (
    Rule("hf_energy", "high", "Frequency domain signatures",
         "{label} is {value} of the spectrum, {rel} (median {median})."),
    Rule("hf_energy", "low", "Loss of fine detail in complex structures",
         "{label} is only {value} of the spectrum, {rel} (median {median}), so fine structure is missing."),
    Rule("grid_peak", "high", "Regular grid-like artifacts in textures",
         "{label} stands {value} above its frequency band, {rel} (median {median}), "
         "a periodic grid of the kind upsampling layers leave."),
    Rule("spectral_peak", "high", "Texture repetition patterns",
         "{label} stands {value} above its frequency band at a period of {peak_period:.1f} px, "
         "{rel} (median {median}), a repeated pattern."),
    Rule("texture_energy", "low", "Over-smoothing of natural textures",
         "{label} is {value}, {rel} (median {median}): surfaces lack the fine grain of real texture.",
         frozenset({"animal", "person"})),
    Rule("texture_energy", "low", "Loss of fine detail in complex structures",
         "{label} is {value}, {rel} (median {median}): detailed structures are rendered without fine grain."),
    Rule("flat_noise", "low", "Artificial smoothness",
         "{label} is {value}, {rel} (median {median}): flat areas lack the sensor noise of a camera."),
    Rule("flat_noise", "high", "Artificial noise patterns in uniform surfaces",
         "{label} is {value}, {rel} (median {median}): plain surfaces carry extra structured noise."),
    Rule("sharpness_spread", "high", "Resolution inconsistencies within regions",
         "{label} varies {value} between the sharpest and softest tenth of the image, {rel} (median {median})."),
    Rule("edge_overshoot", "high", "Over-sharpening artifacts",
         "{label} is {value} the gradient, {rel} (median {median}), the halo a sharpening filter leaves."),
    Rule("aliasing", "high", "Aliasing along high-contrast edges",
         "{label} is {value} of the high-frequency band, {rel} (median {median}), so edges step rather than blend."),
    Rule("chroma_detail", "high", "Color coherence breaks",
         "{label} carry {value} of the luminance's fine-detail energy, {rel} (median {median}): "
         "colour changes where brightness does not."),
    Rule("saturation", "high", "Artificial enhancement artifacts",
         "{label} is {value}, {rel} (median {median}), the boosted look of an enhanced render."),
    Rule("colour_entropy", "low", "Systematic color distribution anomalies",
         "{label} spans only {value} of entropy, {rel} (median {median}), "
         "a narrower colour distribution than a camera records."),
    Rule("contrast", "high", "Dramatic lighting that defies natural physics",
         "{label} is {value}, {rel} (median {median}), stronger than the scene's light would give."),
    Rule("highlights", "high", "Unrealistic specular highlights",
         "{label} cover {value} of the image, {rel} (median {median})."),
    Rule("vignette", "high", "Cinematization Effects",
         "{label} is {value}, {rel} (median {median}), the darkened frame of cinematic grading."),
    Rule("light_gradient", "high", "Unnatural Lighting Gradients",
         "{label} spans {value} of the brightness range across the frame, {rel} (median {median})."),
    Rule("centre_detail", "high", "Artificial depth of field in object presentation",
         "{label} is {value} the border's, {rel} (median {median}): a sharp subject on a uniformly soft backdrop."),
    Rule("orientation_disorder", "high", "Improper fur direction flows",
         "{label} is {value}, {rel} (median {median}): the fur's direction changes where a coat's would flow.",
         frozenset({"fur"})),
)  # fmt: skip


@dataclass
class Scored:
    """A rule's verdict on one image."""

    rule: Rule
    value: float
    # Share of real photos this value lies beyond, in the rule's tail.
    score: float
    # How many times as common this value (this far into the rule's tail) is among generated images as
    # among real photos.
    ratio: float


class Calibration:
    """Per-signal quantiles of real photos and of generated images, and each signal's ROC-AUC, one
    table per size bucket (see :mod:`.calibrate`)."""

    def __init__(self, data: dict[str, Any], source: str = "") -> None:
        self.source = source
        self.levels = np.asarray(data["levels"], dtype=np.float64)
        self.buckets: dict[str, dict[str, Any]] = data["buckets"]
        for bucket, table in self.buckets.items():
            missing = sorted(set(SIGNALS) - set(table["signals"]))
            if missing:
                raise ExplainerConfigError(f"calibration {source}: bucket {bucket!r} lacks signals {missing}")
            # A calibration of real photos only (format 1) gives no likelihood ratio to cite.
            real_only = sorted(s for s in SIGNALS if "fake_quantiles" not in table["signals"][s])
            if real_only:
                raise ExplainerConfigError(
                    f"calibration {source}: bucket {bucket!r} has no generated images for {real_only}; "
                    "write one with `python -m fakescope.explain.calibrate`"
                )
        self._q = {
            (b, s): np.asarray(t["signals"][s]["quantiles"], dtype=np.float64)
            for b, t in self.buckets.items()
            for s in t["signals"]
        }
        self._fq = {
            (b, s): np.asarray(t["signals"][s]["fake_quantiles"], dtype=np.float64)
            for b, t in self.buckets.items()
            for s in t["signals"]
        }

    @classmethod
    def load(cls, path: str | Path | None = None) -> Calibration:
        """Reads a calibration JSON; None reads the one shipped with the package.

        Raises:
            ExplainerConfigError: the file is missing or not a calibration file.
        """
        try:
            if path is None:
                text = resources.files("fakescope.explain").joinpath(DEFAULT_CALIBRATION).read_text()
                source = DEFAULT_CALIBRATION
            else:
                text, source = Path(path).read_text(), str(path)
            return cls(json.loads(text), source)
        except FileNotFoundError as e:
            raise ExplainerConfigError(
                f"evidence calibration file not found: {path or DEFAULT_CALIBRATION}; "
                "write one with `python -m fakescope.explain.calibrate`"
            ) from e
        except (KeyError, json.JSONDecodeError) as e:
            raise ExplainerConfigError(f"not a calibration file: {path or DEFAULT_CALIBRATION} ({e})") from e

    def bucket_for(self, height: int, width: int) -> str:
        bucket = size_bucket(height, width)
        # A calibration made from one resolution only still serves the other, with a warning in the
        # log: the percentiles are then rougher but the output stays defined.
        if bucket not in self.buckets:
            fallback = sorted(self.buckets)[0]
            logger.warning("calibration %s has no %r bucket; using %r", self.source, bucket, fallback)
            return fallback
        return bucket

    def fake_cdf(self, bucket: str, signal: str, x: float) -> float:
        """Fraction of generated images whose ``signal`` is below ``x`` (ties count half)."""
        return self._cdf(self._fq[(bucket, signal)], x)

    def auc(self, bucket: str, signal: str) -> float:
        """The signal's ROC-AUC on the calibration images, read as "higher is generated"."""
        return float(self.buckets[bucket]["signals"][signal]["auc"])

    def count_fake(self, bucket: str) -> int:
        return int(self.buckets[bucket].get("n_fake", 0))

    def cdf(self, bucket: str, signal: str, x: float) -> float:
        """Fraction of real photos whose ``signal`` is below ``x`` (ties count half)."""
        return self._cdf(self._q[(bucket, signal)], x)

    def _cdf(self, q: np.ndarray, x: float) -> float:
        lv = self.levels
        i = int(np.searchsorted(q, x, side="left"))
        j = int(np.searchsorted(q, x, side="right"))
        if i != j:
            return float((lv[i] + lv[j - 1]) / 2)
        if i == 0:
            return 0.0
        if i == len(q):
            return 1.0
        return float(lv[i - 1] + (lv[i] - lv[i - 1]) * (x - q[i - 1]) / (q[i] - q[i - 1]))

    def median(self, bucket: str, signal: str) -> float:
        return float(self.buckets[bucket]["signals"][signal]["median"])

    def count(self, bucket: str) -> int:
        return int(self.buckets[bucket]["n"])

    def reference_name(self, bucket: str) -> str:
        return str(self.buckets[bucket].get("reference", "real photos"))


# Past this the tails are too thin in the calibration set for the ratio to be read more exactly.
MAX_QUOTED_RATIO = 20.0


def _ratio_phrase(ratio: float, reference: str) -> str:
    times = f"over {MAX_QUOTED_RATIO:.0f}x" if ratio > MAX_QUOTED_RATIO else f"{ratio:.1f}x"
    return f"a value {times} more common in generated images than in {reference}"


_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "centre", "right")


def _where(details: dict[str, float]) -> str | None:
    if "cam_y" not in details:
        return None
    row = _ROWS[min(2, int(details["cam_y"] * 3))]
    col = _COLS[min(2, int(details["cam_x"] * 3))]
    place = "centre" if row == "middle" and col == "centre" else f"{row} {col}".replace("middle ", "")
    share = details["cam_top_tenth"]
    return f"the detector looks mostly at the {place}, with {share:.0%} of its attention on the hottest tenth"


class EvidenceExplainer:
    """Scores :data:`RULES` on each image and writes the strongest as reasons.

    Args:
        calibration: real-photo reference quantiles.
        class_gate: optional zero-shot classifier with ``classify(images) -> list[str]`` naming one
            of :data:`fakescope.explain.taxonomy.OBJECT_CLASSES` per image.
        max_artifacts: at most this many artifacts per image.
        min_ratio: the least likelihood ratio a reason needs.
        min_auc: the least ROC-AUC (in the rule's direction) a rule's signal needs.
    """

    name = "evidence"

    def __init__(
        self,
        calibration: Calibration,
        class_gate: Any | None = None,
        max_artifacts: int = MAX_ARTIFACTS,
        min_ratio: float = MIN_RATIO,
        min_auc: float = MIN_AUC,
    ) -> None:
        if not 1 <= max_artifacts <= MAX_ARTIFACTS:
            raise ValueError(f"max_artifacts must be in 1..{MAX_ARTIFACTS}, got {max_artifacts}")
        self.calibration = calibration
        self.class_gate = class_gate
        self.max_artifacts = max_artifacts
        self.min_ratio = min_ratio
        self.min_auc = min_auc
        for rule in RULES:
            # A typo in a rule would otherwise surface as a key outside the task's taxonomy.
            assert rule.artifact in BY_NAME, rule.artifact

    @classmethod
    def load(
        cls,
        calibration: str | Path | None = None,
        clip_model: str | None = None,
        max_artifacts: int = MAX_ARTIFACTS,
        device: str = "auto",
    ) -> EvidenceExplainer:
        """Loads the calibration and, when ``clip_model`` is given, the CLIP class gate."""
        gate = None
        if clip_model:
            from fakescope.explain.clip_scorer import ClipScorer

            gate = ClipScorer.load(clip_model, device=device)
        return cls(Calibration.load(calibration), gate, max_artifacts=max_artifacts)

    def score(self, inp: ExplainInput, object_class: str | None = None) -> tuple[list[Scored], Measurements, str]:
        """Every applicable rule's score on one image, strongest first (ties in rule order)."""
        h, w = inp.image.shape[:2]
        bucket = self.calibration.bucket_for(h, w)
        m = measure(inp.image, inp.cam)
        kinds = _kinds(object_class)
        cal = self.calibration
        scored: list[Scored] = []
        for rule in RULES:
            if rule.kinds and not (rule.kinds & kinds):
                continue
            value = m.values[rule.signal]
            below = cal.cdf(bucket, rule.signal, value)
            score = below if rule.tail == "high" else 1.0 - below
            auc = cal.auc(bucket, rule.signal)
            if (auc if rule.tail == "high" else 1.0 - auc) < self.min_auc:
                continue  # the signal separates fakes from reals too little to be evidence
            fake_below = cal.fake_cdf(bucket, rule.signal, value)
            # The share of each side at least this far into the tail; a tail the calibration set
            # never reached counts as half an image, so the ratio stays finite and honest.
            p_fake = (1.0 - fake_below) if rule.tail == "high" else fake_below
            p_real = (1.0 - below) if rule.tail == "high" else below
            p_fake = max(p_fake, 0.5 / max(1, cal.count_fake(bucket)))
            p_real = max(p_real, 0.5 / max(1, cal.count(bucket)))
            ratio = round(p_fake / p_real, 2)  # as reported: the sentence and the data agree
            scored.append(Scored(rule, value, score, ratio))
        # Strongest first by likelihood ratio (stable: ties keep rule order).
        scored.sort(key=lambda s: -s.ratio)
        return scored, m, bucket

    def evidence_one(self, inp: ExplainInput, object_class: str | None = None) -> list[dict[str, Any]]:
        """The reasons for one image as data: artifact, signal, measured value, likelihood ratio and
        the sentence, strongest first."""
        scored, m, bucket = self.score(inp, object_class)
        chosen: list[Scored] = []
        seen_artifacts: set[str] = set()
        seen_signals: set[str] = set()
        for s in scored:
            # One observation, one name: a signal read twice (e.g. low detail as both smoothness
            # and detail loss) would be the padding this explainer exists to avoid.
            if s.rule.artifact in seen_artifacts or s.rule.signal in seen_signals:
                continue
            if s.ratio < self.min_ratio:
                break  # sorted by ratio: nothing after this is evidence either
            chosen.append(s)
            seen_artifacts.add(s.rule.artifact)
            seen_signals.add(s.rule.signal)
            if len(chosen) == self.max_artifacts:
                break
        return [
            {
                "artifact": s.rule.artifact,
                "signal": s.rule.signal,
                "value": float(f"{s.value:.6g}"),
                "ratio": s.ratio,
                "reason": self._sentence(s, m, bucket, with_cam=k == 0),
            }
            for k, s in enumerate(chosen)
        ]

    def _sentence(self, s: Scored, m: Measurements, bucket: str, with_cam: bool) -> str:
        sig = SIGNALS[s.rule.signal]
        cal = self.calibration
        text = s.rule.template.format(
            label=sig.label,
            value=sig.fmt.format(s.value),
            median=sig.fmt.format(cal.median(bucket, s.rule.signal)),
            rel=_ratio_phrase(s.ratio, cal.reference_name(bucket)),
            **m.details,
        )
        where = _where(m.details) if with_cam else None
        if where:
            text = f"{text[:-1]}; {where}."
        return text

    def evidence(self, inputs: Sequence[ExplainInput]) -> list[list[dict[str, Any]]]:
        """:meth:`evidence_one` of each input (the class gate, when configured, run once for all)."""
        classes: list[str | None] = [None] * len(inputs)
        if self.class_gate is not None and inputs:
            classes = list(self.class_gate.classify([i.image for i in inputs]))
        return [self.evidence_one(inp, c) for inp, c in zip(inputs, classes, strict=True)]

    def explain(self, inputs: Sequence[ExplainInput]) -> list[dict[str, str]]:
        return [{e["artifact"]: e["reason"] for e in items} for items in self.evidence(inputs)]


def _kinds(object_class: str | None) -> frozenset[str]:
    from fakescope.explain.taxonomy import OBJECT_CLASSES

    return OBJECT_CLASSES.get(object_class, frozenset()) if object_class else frozenset()
