"""The LoRA fine-tuning command and its data format."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("peft")

from fakescope.explain.finetune import DataError, load_records


def test_adapter_is_saved_in_peft_format_with_its_training_record(tiny_lora: Path) -> None:
    assert (tiny_lora / "adapter_config.json").is_file()
    assert (tiny_lora / "adapter_model.safetensors").is_file()
    info = json.loads((tiny_lora / "training.json").read_text())
    assert info["steps"] == 2 and info["records"] == 2  # the record labelled real is skipped
    assert all(loss > 0 for loss in info["losses"])
    cfg = json.loads((tiny_lora / "adapter_config.json").read_text())
    assert "text_model" in str(cfg["target_modules"])


def test_reads_the_genimage_annotations(shared_data: Callable[..., Path]) -> None:
    records = load_records(shared_data("genimage_explained", "annotations.json"))
    assert len(records) == 89  # the fakes of the finetune split; reals and eval records carry no reason
    assert all(r.image.is_file() and r.answer for r in records)


def test_rejects_names_outside_the_taxonomy_and_missing_images(
    tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    img = make_images(tmp_path, 1)[0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"file": img.name, "explanation": {"Weird vibes": "x"}}]))
    with pytest.raises(DataError, match="Weird vibes"):
        load_records(bad)
    bad.write_text(json.dumps([{"file": "nope.png", "explanation": "x"}]))
    with pytest.raises(DataError, match="image not found"):
        load_records(bad)
