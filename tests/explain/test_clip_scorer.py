"""The CLIP scorer, loaded through the production loader from a tiny checkpoint saved to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from fakescope.explain import ExplainerConfigError
from fakescope.explain.clip_scorer import ClipScorer, artifact_prompt
from fakescope.explain.taxonomy import BY_NAME, OBJECT_CLASSES


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (24 + 8 * k, 40, 3), dtype=np.uint8) for k in range(n)]


def test_loads_from_a_local_folder_in_fp32_on_cpu(tiny_clip: Path) -> None:
    import torch

    scorer = ClipScorer.load(str(tiny_clip), device="cpu")
    assert type(scorer.model).__name__ == "CLIPModel"
    assert next(scorer.model.parameters()).dtype == torch.float32
    # Once per process: a second load returns the same weights.
    assert ClipScorer.load(str(tiny_clip), device="cpu").model is scorer.model


def test_scores_respect_threshold_top_k_and_class_gate(tiny_clip: Path) -> None:
    scorer = ClipScorer.load(str(tiny_clip), device="cpu", threshold=0.0, top_k=3)
    verdicts = scorer.score(_images(5))
    assert len(verdicts) == 5
    for v in verdicts:
        assert v.object_class in OBJECT_CLASSES and 0 < v.class_probability <= 1
        assert len(v.artifacts) == 3
        probs = [p for _, p in v.ranked]
        assert probs == sorted(probs, reverse=True)
        assert all(BY_NAME[name].applies_to(v.object_class) for name, _ in v.ranked)
        assert all(0.0 <= p <= 1.0 for p in probs)
    strict = ClipScorer(scorer.model, scorer.processor, threshold=1.01)
    assert all(v.artifacts == [] and v.ranked for v in strict.score(_images(2)))


def test_batching_does_not_change_scores(tiny_clip: Path) -> None:
    one = ClipScorer.load(str(tiny_clip), device="cpu", batch_size=1).embed_images(_images(4))
    many = ClipScorer.load(str(tiny_clip), device="cpu", batch_size=8).embed_images(_images(4))
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_prompts_carry_the_description() -> None:
    a = BY_NAME["Incorrect wheel geometry"]
    assert a.description in artifact_prompt(a)


def test_missing_weights_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ExplainerConfigError, match=str(tmp_path / "absent")):
        ClipScorer.load(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExplainerConfigError, match=r"no config\.json"):
        ClipScorer.load(str(tmp_path / "empty"))
    with pytest.raises(ExplainerConfigError, match="nobody/no-such-clip"):
        ClipScorer.load("nobody/no-such-clip")
    with pytest.raises(ExplainerConfigError, match="FAKESCOPE_CLIP_MODEL"):
        ClipScorer.load(None)
