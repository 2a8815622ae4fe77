"""An ensemble checkpoint: one network whose answers are its members' weighted logit average."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fakescope.checkpoint import CheckpointMeta, Preprocess, combine_checkpoints, load_checkpoint, save_checkpoint
from fakescope.detector import Detector
from fakescope.gradcam import GradCAM
from fakescope.models import EnsembleConfig, FreqNetEnsemble, create_model

SPLIT = {"seed": 0, "train": 10, "val": 4, "calib": 2, "val_fingerprint": "abc"}
PRE = Preprocess(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _member(directory: Path, variant: str, seed: int, split: dict[str, Any] | None = None, **overrides: Any) -> Path:
    torch.manual_seed(seed)
    model = create_model(variant, **overrides).eval()
    # Non-trivial BN statistics and heads, so a wrong copy would show.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    meta = CheckpointMeta(
        variant=variant,
        arch=model.cfg,
        preprocess=PRE,
        temperature=1.7,
        training={"config": {"val_size": 4, "calib_size": 2, "seed": 0}, "split": split or SPLIT, "train_seconds": 3},
    )
    return save_checkpoint(directory, model, meta)


@pytest.fixture
def members(tmp_path: Path) -> list[Path]:
    # Different grids at the last stage (8x8 and 4x4): the coarser one is repeated up to the finer.
    a = _member(tmp_path / "a", "freqnet_vgg", 0, planes=(8, 8, 16), stem_chs=8, freq_chs=4)
    b = _member(tmp_path / "b", "vgg3_anchor", 1, planes=(4, 8, 8))
    return [a, b]


def _images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_logits_are_the_weighted_mean_of_the_members(members: list[Path], tmp_path: Path) -> None:
    out = combine_checkpoints(members, tmp_path / "ens", weights=[3, 1])
    ens, meta = load_checkpoint(out)
    assert isinstance(ens, FreqNetEnsemble)
    assert meta.variant == "freqnet_vgg+vgg3_anchor"
    assert isinstance(meta.arch, EnsembleConfig) and meta.arch.weights == (0.75, 0.25)
    assert meta.temperature == 1.0 and meta.training["split"] == SPLIT
    assert [m["model_version"] for m in meta.training["members"]] == [
        load_checkpoint(p)[1].model_version for p in members
    ]
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        want = 0.75 * load_checkpoint(members[0])[0](x) + 0.25 * load_checkpoint(members[1])[0](x)
        got = ens(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert ens.forward_features(x).shape == (5, 16 + 8, 8, 8)


def test_a_detector_on_an_ensemble_gives_probabilities_maps_and_domain(members: list[Path], tmp_path: Path) -> None:
    out = combine_checkpoints(members, tmp_path / "ens")
    det = Detector.load(out, device="cpu")
    assert det.cam_from_head
    batch = _images()
    a = det.analyze(batch, cams=True)
    assert a.probs.shape == (6,) and a.cams is not None and a.cams.shape == (6, 32, 32)
    assert a.domain is None
    # The forward-only maps equal GradCAM's hooks-and-gradients ones on the concatenated map.
    x = det.to_tensor(batch)
    _, cams = GradCAM(det.model, det.model.cam_target)(x, torch.from_numpy((a.probs > 0.5).astype(np.int64)))
    np.testing.assert_allclose(a.cams, cams.numpy(), atol=1e-4)
    assert det.pooled_features(batch).shape == (6, 24)


def test_members_on_other_splits_or_preprocessing_are_refused(members: list[Path], tmp_path: Path) -> None:
    other = _member(tmp_path / "c", "vgg3_anchor", 2, split={**SPLIT, "val_fingerprint": "zzz"}, planes=(4, 8, 8))
    with pytest.raises(ValueError, match="not trained on the same split"):
        combine_checkpoints([members[0], other], tmp_path / "bad")
    cfg = json.loads((members[1] / "config.json").read_text())
    cfg["preprocess"]["mean"] = [0.4, 0.4, 0.4]
    (members[1] / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="other preprocessing"):
        combine_checkpoints(members, tmp_path / "bad")
    with pytest.raises(ValueError, match="at least two"):
        combine_checkpoints(members[:1], tmp_path / "bad")


def test_an_ensemble_given_as_a_member_is_taken_apart(members: list[Path], tmp_path: Path) -> None:
    ens = combine_checkpoints(members, tmp_path / "ens")
    again = combine_checkpoints([ens, members[0]], tmp_path / "again")
    model, meta = load_checkpoint(again)
    assert isinstance(model, FreqNetEnsemble)
    assert meta.variant == "freqnet_vgg+vgg3_anchor+freqnet_vgg"
    assert [m["path"] for m in meta.training["members"]] == [str(members[0]), str(members[1]), str(members[0])]
    x = torch.from_numpy(_images()).permute(0, 3, 1, 2).float() / 255.0
    singles = [load_checkpoint(m)[0] for m in members]
    with torch.no_grad():
        expected = (2 * singles[0](x) + singles[1](x)) / 3
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    # PATH#N takes one member: the second member of the ensemble alone, beside the first file.
    picked = combine_checkpoints([f"{ens}#1", members[0]], tmp_path / "picked")
    assert load_checkpoint(picked)[1].variant == "vgg3_anchor+freqnet_vgg"
    assert (
        load_checkpoint(picked)[1].training["members"][0]["model_version"]
        == load_checkpoint(members[1])[1].model_version
    )
    with pytest.raises(ValueError, match="there is no member 5"):
        combine_checkpoints([f"{ens}#5", members[0]], tmp_path / "bad")
    with pytest.raises(ValueError, match="at least two members"):
        combine_checkpoints([f"{ens}#0"], tmp_path / "bad")
