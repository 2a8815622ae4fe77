"""The evidence explainer: grounded in measurements, calibrated on real photos and generated images,
citing only what is at least twice as common in generated images, deterministic."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fakescope.explain import (
    MAX_ARTIFACTS,
    ExplainerConfigError,
    ExplainInput,
    ExplainInputError,
    load_explainer,
)
from fakescope.explain.calibrate import main as calibrate_main
from fakescope.explain.evidence import RULES, Calibration, EvidenceExplainer, Rule
from fakescope.explain.signals import SIGNALS
from fakescope.explain.taxonomy import BY_NAME

NUMBER = re.compile(r"\d+\.\d+")


def _inputs(paths: list[Path]) -> list[ExplainInput]:
    out = []
    for p in paths:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        small = np.asarray(Image.fromarray(rgb).resize((32, 32), Image.Resampling.BICUBIC))
        out.append(ExplainInput(p.name, rgb, small, None, 0.9))
    return out


@pytest.fixture(scope="module")
def explainer() -> EvidenceExplainer:
    ex = load_explainer()
    assert isinstance(ex, EvidenceExplainer)
    return ex


def _check_explanation(expl: dict[str, str], *, at_least: int = 0) -> None:
    # An image may have no reason at all: nothing measured on it is evidence, and none is made up.
    assert at_least <= len(expl) <= MAX_ARTIFACTS
    for name, reason in expl.items():
        assert name in BY_NAME
        assert reason.endswith(".") and NUMBER.search(reason), reason
        assert "real" in reason and "median" in reason, reason


def test_default_backend_is_evidence_and_needs_no_weights(explainer: EvidenceExplainer) -> None:
    assert explainer.name == "evidence"
    assert explainer.class_gate is None


def test_explains_real_fakes_of_both_sizes_deterministically(
    explainer: EvidenceExplainer, shared_data: Callable[..., Path]
) -> None:
    paths = sorted(shared_data("genimage_explained", "FAKE").glob("*.jpg"))[:6]
    paths += sorted(shared_data("cifake_train_subset", "FAKE").glob("*.jpg"))[:6]
    first = explainer.explain(_inputs(paths))
    again = load_explainer("evidence").explain(_inputs(paths))
    assert first == again
    for expl in first:
        _check_explanation(expl)
        for reason in expl.values():
            assert re.search(r"(\d+\.\d|over 20)x more common in generated images than in real", reason), reason
    # 32x32 images are compared with 32x32 references, 256x256 ones with full-size photos.
    assert any("32x32" in r for e in first[6:] for r in e.values())
    assert not any("32x32" in r for e in first[:6] for r in e.values())


def test_reason_quotes_the_measured_value_the_ratio_and_the_real_median(
    explainer: EvidenceExplainer, shared_data: Callable[..., Path]
) -> None:
    paths = sorted(shared_data("cifake_train_subset", "FAKE").glob("*.jpg"))[:20]
    inp = next(i for i in _inputs(paths) if explainer.evidence_one(i))
    scored, m, bucket = explainer.score(inp)
    expl = explainer.explain([inp])[0]
    _check_explanation(expl, at_least=1)
    top = scored[0]
    assert top.ratio is not None and top.ratio >= 3.0
    reason = expl[top.rule.artifact]
    assert f"{m.values[top.rule.signal]:.4f}"[:4] in reason or f"{m.values[top.rule.signal]:.3f}" in reason
    assert f"{top.ratio:.1f}x more common" in reason or "over 20x" in reason
    assert explainer.calibration.count(bucket) > 0


def test_a_blurred_photo_is_not_called_generated_for_its_blur_alone(
    explainer: EvidenceExplainer, shared_data: Callable[..., Path]
) -> None:
    # Blur moves every smoothness signal far into the photos' tail, but generated full-size images are
    # no blurrier than photos (the calibration says so): a percentile rule would cite it, this does not.
    path = sorted(shared_data("genimage_explained", "REAL").glob("*.jpg"))[0]
    blurred = np.asarray(Image.open(path).convert("RGB").filter(ImageFilter.GaussianBlur(3)))
    inp = ExplainInput("blurred", blurred, blurred[:32, :32].copy(), None, 0.9)
    scored, _, _ = explainer.score(inp)
    assert max(s.score for s in scored) > 0.95  # far into the real photos' tail...
    assert all(e["ratio"] >= 3.0 for e in explainer.evidence_one(inp))  # ...but cited only as evidence


def test_one_signal_names_one_artifact(explainer: EvidenceExplainer, shared_data: Callable[..., Path]) -> None:
    paths = sorted(shared_data("cifake_train_subset", "FAKE").glob("*.jpg"))[:40]
    rule_of = {r.artifact: r for r in RULES}
    for expl in explainer.explain(_inputs(paths)):
        signals = [rule_of[name].signal for name in expl]
        assert len(signals) == len(set(signals))


def test_cam_location_appears_in_the_strongest_reason(explainer: EvidenceExplainer) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cam = np.zeros((32, 32), np.float32)
    cam[24:, :8] = 1
    expl = explainer.explain([ExplainInput("x", img, img, cam, 0.8)])[0]
    first = next(iter(expl.values()))
    assert "bottom left" in first


def test_class_gate_from_clip_changes_only_class_specific_rules(
    tiny_clip: Path, shared_data: Callable[..., Path]
) -> None:
    gated = load_explainer("evidence", clip_model=str(tiny_clip))
    assert isinstance(gated, EvidenceExplainer) and gated.class_gate is not None
    paths = sorted(shared_data("cifake_train_subset", "FAKE").glob("*.jpg"))[:8]
    inputs = _inputs(paths)
    classes = gated.class_gate.classify([i.image for i in inputs])
    for expl, cls in zip(gated.explain(inputs), classes, strict=True):
        _check_explanation(expl)  # may be empty: nothing measured was evidence
        assert all(BY_NAME[name].applies_to(cls) for name in expl)


def test_calibration_command_writes_a_file_the_explainer_loads(
    tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    make_images(tmp_path / "data" / "REAL", 12, size=32, seed=1)
    make_images(tmp_path / "data" / "FAKE", 3, size=32, seed=2)
    out = tmp_path / "cal.json"
    assert calibrate_main(["--data", str(tmp_path / "data"), "--out", str(out)]) == 0
    cal = json.loads(out.read_text())
    assert cal["buckets"]["small"]["n"] == 12  # REAL only
    assert "calibrate" in cal["produced_by"]["command"]
    ex = load_explainer("evidence", calibration=str(out))
    assert isinstance(ex, EvidenceExplainer)
    assert ex.calibration.count("small") == 12
    img = np.asarray(Image.open(tmp_path / "data" / "FAKE" / "img0.png").convert("RGB"))
    assert cal["buckets"]["small"]["n_fake"] == 3 and "auc" in cal["buckets"]["small"]["signals"]["hf_energy"]
    _check_explanation(ex.explain([ExplainInput("f", img, img, None, 0.7)])[0])


def test_reasons_are_evidence_twice_as_common_in_generated_images(
    explainer: EvidenceExplainer, shared_data: Callable[..., Path]
) -> None:
    """What the name claims, counted on labelled images rather than read back from the ratio the
    explainer computes (it cites nothing under its own threshold by construction): each artifact is
    cited at least twice as often on generated images as on real photos. Also: each reason carries its
    signal, value and likelihood ratio, strongest first, and a signal that separates nothing (light
    gradient, texture energy at 32x32) is never cited."""
    cal = explainer.calibration

    def directional_auc(r: Rule) -> float:
        return cal.auc("small", r.signal) if r.tail == "high" else 1 - cal.auc("small", r.signal)

    dead = {(r.artifact, r.signal) for r in RULES if directional_auc(r) < 0.55}  # the rules not used
    assert {s for _, s in dead} >= {"light_gradient", "texture_energy"}
    cited: dict[str, Counter[str]] = {}
    for label in ("REAL", "FAKE"):
        # 300 of each, spread over the folder: every artifact is then cited at least a dozen times on photos.
        paths = sorted(shared_data("cifake_train_subset", label).glob("*.jpg"))[::33][:300]
        assert len(paths) == 300
        cited[label] = Counter()
        for items in (explainer.evidence_one(inp) for inp in _inputs(paths)):
            for e in items:
                assert set(e) == {"artifact", "signal", "value", "ratio", "reason"}
                assert (e["artifact"], e["signal"]) not in dead, e
                assert f"{e['ratio']:.1f}x" in e["reason"] or "over 20x" in e["reason"]
            assert [e["ratio"] for e in items] == sorted((e["ratio"] for e in items), reverse=True)
            cited[label].update(e["artifact"] for e in items)
    # Measured here: 2.8x (aliasing) to 4.3x (depth of field); the explainer's threshold is 3.
    assert cited["FAKE"].keys() >= cited["REAL"].keys(), cited
    for artifact, on_fakes in cited["FAKE"].items():
        assert on_fakes >= 2 * cited["REAL"][artifact], (artifact, cited)


def test_cdf_interpolates_and_splits_ties() -> None:
    levels = np.linspace(0, 1, 5).tolist()
    sig = {"median": 0.0, "quantiles": [0.0, 0.0, 0.0, 1.0, 2.0], "fake_quantiles": [0.0] * 5, "auc": 0.5}
    cal = Calibration({"levels": levels, "buckets": {"small": {"n": 5, "signals": dict.fromkeys(SIGNALS, sig)}}})
    assert cal.cdf("small", "contrast", -1.0) == 0.0
    assert cal.cdf("small", "contrast", 0.0) == pytest.approx(0.25)  # ties: middle of the tied levels
    assert cal.cdf("small", "contrast", 0.5) == pytest.approx(0.625)
    assert cal.cdf("small", "contrast", 3.0) == 1.0


def test_missing_or_bad_calibration_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ExplainerConfigError, match="not found"):
        load_explainer("evidence", calibration=str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text('{"levels": [0, 1], "buckets": {"small": {"n": 1, "signals": {}}}}')
    with pytest.raises(ExplainerConfigError, match="lacks signals"):
        load_explainer("evidence", calibration=str(tmp_path / "bad.json"))
    # A calibration of real photos only (the old format 1) has no likelihood ratio to cite.
    real_only = {"median": 0.0, "quantiles": [0.0, 1.0]}
    (tmp_path / "real.json").write_text(
        json.dumps({"levels": [0, 1], "buckets": {"small": {"n": 1, "signals": dict.fromkeys(SIGNALS, real_only)}}})
    )
    with pytest.raises(ExplainerConfigError, match="no generated images"):
        load_explainer("evidence", calibration=str(tmp_path / "real.json"))


def test_unknown_backend_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExplainerConfigError, match="unknown explain backend"):
        load_explainer("gpt")
    monkeypatch.setenv("FAKESCOPE_EXPLAIN_BACKEND", "nonsense")
    with pytest.raises(ExplainerConfigError, match="nonsense"):
        load_explainer()


def test_bad_input_is_an_error_for_that_image_only(explainer: EvidenceExplainer) -> None:
    good = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ExplainInputError, match="img7: image has shape"):
        ExplainInput("img7", np.zeros((32, 32)), good, None, 0.9)
    with pytest.raises(ExplainInputError, match="dtype"):
        ExplainInput("x", good.astype(np.float32), good, None, 0.9)
    with pytest.raises(ExplainInputError, match="NaN"):
        ExplainInput("x", good, good, np.full((32, 32), np.nan), 0.9)
    with pytest.raises(ExplainInputError, match="outside"):
        ExplainInput("x", good, good, None, 1.5)
    assert len(explainer.explain([ExplainInput("ok", good, good, None, 0.9)])) == 1
