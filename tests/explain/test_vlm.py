"""The vlm backend: tiny CLIP + tiny Idefics2 (+ LoRA) through the production loaders, and the parser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from fakescope.explain import MAX_ARTIFACTS, ExplainerConfigError, ExplainInput, load_explainer
from fakescope.explain.evidence import EvidenceExplainer
from fakescope.explain.idefics import build_prompt_text, format_answer, parse_explanation
from fakescope.explain.taxonomy import BY_NAME
from fakescope.explain.vlm import VLMExplainer

ALLOWED = [
    "Artificial smoothness",
    "Ghosting effects: Semi-transparent duplicates of elements",
    "Texture repetition patterns",
    "Scale inconsistencies within single objects",
    "Scale inconsistencies within the same object class",
]


def _inputs(n: int) -> list[ExplainInput]:
    rng = np.random.default_rng(5)
    out = []
    for k in range(n):
        img = rng.integers(0, 256, (32 + 16 * k, 48, 3), dtype=np.uint8)
        out.append(ExplainInput(f"img{k}", img, img[:32, :32].copy(), None, 0.9))
    return out


def test_parser_reads_lines_bullets_bold_and_near_misses() -> None:
    text = (
        "Here is what I see:\n"
        "1. **Artificial smoothness**: The fur on the back is waxy. It has no grain.\n"
        "- ghosting effects - semi-transparent duplicates of elements: A faint copy of the ear floats\n"
        "Texture repetition pattern: the same bricks repeat\n"
        "Scale inconsistencies within the same object class: two dogs differ in size.\n"
    )
    out = parse_explanation(text, ALLOWED)
    assert out == {
        "Artificial smoothness": "The fur on the back is waxy.",
        "Ghosting effects: Semi-transparent duplicates of elements": "A faint copy of the ear floats.",
        "Texture repetition patterns": "The same bricks repeat.",
        "Scale inconsistencies within the same object class": "Two dogs differ in size.",
    }


def test_parser_never_turns_a_sentence_or_an_unasked_name_into_a_key() -> None:
    text = (
        "The image looks fake because the cat has no shadow: it floats.\n"
        "Frequency domain signatures: not asked about.\n"
        "Artificial smoothness:\n"
    )
    assert parse_explanation(text, ALLOWED) == {}


def test_parser_reads_json_and_the_fine_tuning_format_round_trips() -> None:
    assert parse_explanation('{"artificial smoothness": "Too smooth", "Bad key": "x"}', ALLOWED) == {
        "Artificial smoothness": "Too smooth."
    }
    expl = {"Artificial smoothness": "The sky has no noise.", "Texture repetition patterns": "Tiles repeat."}
    assert parse_explanation(format_answer(expl), ALLOWED) == expl


def test_prompt_lists_the_detected_artifacts_with_descriptions() -> None:
    text = build_prompt_text(["Incorrect wheel geometry"])
    assert "Incorrect wheel geometry" in text and BY_NAME["Incorrect wheel geometry"].description in text


def test_vlm_backend_end_to_end_with_lora(tiny_clip: Path, tiny_idefics2: Path, tiny_lora: Path) -> None:
    ex = load_explainer(
        "vlm", clip_model=str(tiny_clip), vlm_model=str(tiny_idefics2), vlm_lora=str(tiny_lora), max_new_tokens=12
    )
    assert isinstance(ex, VLMExplainer)
    assert ex.name == "vlm"
    inputs = _inputs(3)
    first = ex.explain(inputs)
    assert first == ex.explain(inputs)  # greedy decoding: same input, same output
    verdicts = ex.scorer.score([i.image for i in inputs])
    for expl, v in zip(first, verdicts, strict=True):
        assert 1 <= len(expl) <= MAX_ARTIFACTS
        # The tiny model writes gibberish: every detected artifact survives with its CLIP evidence.
        assert list(expl) == [name for name, _ in (v.artifacts or v.ranked[:1])]
        assert all(reason.strip() and "CLIP rates" in reason for reason in expl.values())


def test_lora_adapter_changes_the_loaded_weights(tiny_idefics2: Path, tiny_lora: Path) -> None:
    import torch

    from fakescope.explain.idefics import Idefics2Explainer

    base = Idefics2Explainer.load(str(tiny_idefics2), device="cpu").model
    tuned = Idefics2Explainer.load(str(tiny_idefics2), lora=str(tiny_lora), device="cpu").model
    assert type(tuned).__name__ == "Idefics2ForConditionalGeneration"  # merged, no peft wrapper left
    name = "model.text_model.layers.0.self_attn.q_proj.weight"
    b, t = base.state_dict()[name], tuned.state_dict()[name]
    assert b.dtype == torch.float32
    assert not torch.equal(b, t)
    vision = "model.vision_model.encoder.layers.0.self_attn.q_proj.weight"
    assert torch.equal(base.state_dict()[vision], tuned.state_dict()[vision])


def test_env_configures_the_vlm_backend(monkeypatch: pytest.MonkeyPatch, tiny_clip: Path, tiny_idefics2: Path) -> None:
    monkeypatch.setenv("FAKESCOPE_CLIP_MODEL", str(tiny_clip))
    monkeypatch.setenv("FAKESCOPE_VLM_MODEL", str(tiny_idefics2))
    assert load_explainer(max_new_tokens=4).name == "vlm"
    monkeypatch.setenv("FAKESCOPE_EXPLAIN_BACKEND", "evidence")
    ex = load_explainer()
    assert isinstance(ex, EvidenceExplainer) and ex.class_gate is not None  # CLIP still names the class


def test_missing_vlm_weights_name_what_is_missing(tmp_path: Path, tiny_clip: Path, tiny_idefics2: Path) -> None:
    with pytest.raises(ExplainerConfigError, match="FAKESCOPE_VLM_MODEL"):
        load_explainer("vlm", clip_model=str(tiny_clip))
    with pytest.raises(ExplainerConfigError, match="FAKESCOPE_CLIP_MODEL"):
        load_explainer("vlm", vlm_model=str(tiny_idefics2))
    with pytest.raises(ExplainerConfigError, match="LoRA adapter folder not found"):
        load_explainer("vlm", clip_model=str(tiny_clip), vlm_model=str(tiny_idefics2), vlm_lora=str(tmp_path / "x"))


@pytest.mark.gpu
def test_gpu_loads_fp16_with_a_device_map(tiny_clip: Path, tiny_idefics2: Path, tiny_lora: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ex = load_explainer(
        "vlm",
        clip_model=str(tiny_clip),
        vlm_model=str(tiny_idefics2),
        vlm_lora=str(tiny_lora),
        device="cuda",
        max_new_tokens=4,
    )
    assert isinstance(ex, VLMExplainer)
    assert ex.writer.model.dtype == torch.float16 and ex.scorer.model.dtype == torch.float16
    assert getattr(ex.writer.model, "hf_device_map", None), "accelerate placed no device map"
    out = ex.explain(_inputs(2))
    assert len(out) == 2 and all(1 <= len(e) <= MAX_ARTIFACTS for e in out)
