import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fakescope.checkpoint import load_checkpoint
from fakescope.cli import main
from fakescope.detector import Detector
from fakescope.evaluate import fgsm_images, format_table, load_eval_data, robustness
from fakescope.train import TrainConfig, train
from tests.core.conftest import write_cifake


def _cfg(data, out, **kw):
    base = dict(data=[str(data)], out=str(out), epochs=2, batch_size=16, val_size=16, calib_size=8, threads=1)
    return TrainConfig(**{**base, **kw})


def test_train_writes_a_complete_checkpoint(synth_cifake, tmp_path):
    out = train(_cfg(synth_cifake, tmp_path / "ck"))
    model, meta = load_checkpoint(out)
    assert not model.training
    assert meta.variant == "freqnet_resnet_tiny" and meta.labels == ("real", "fake")
    assert meta.preprocess.input_size == (32, 32) and len(meta.preprocess.mean) == 3
    split = meta.training["split"]
    assert (split["train"], split["val"], split["calib"]) == (56, 16, 8)
    assert len(meta.training["history"]) == 2
    val = meta.metrics["validation"]
    assert val["n"] == 16 and set(val) >= {"accuracy", "roc_auc", "ece", "confusion"}
    assert 0.05 <= meta.metrics["temperature"] <= 20


def test_resume_continues_where_it_stopped(synth_cifake, tmp_path):
    full = train(_cfg(synth_cifake, tmp_path / "full"))
    part = train(_cfg(synth_cifake, tmp_path / "part", stop_after=1))
    assert len(json.loads((part / "config.json").read_text())["training"]["history"]) == 1
    resumed = train(_cfg(synth_cifake, tmp_path / "part", resume=True))
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_paper_recipe_bounds():
    with pytest.raises(ValueError, match="20 to 100 epochs"):
        TrainConfig(data=["x"], out="y", recipe="paper", epochs=5)


def test_evaluate_split_and_robustness(synth_cifake, tmp_path):
    ck = train(_cfg(synth_cifake, tmp_path / "ck"))
    det = Detector.load(ck, device="cpu")
    val = load_eval_data([synth_cifake], det, split="val")
    assert len(val) == 16
    table = robustness(det, val, batch_size=8)
    assert list(table) == [
        "clean",
        "jpeg_q75",
        "gaussian_noise_sigma0.02",
        "down_up_0.5x",
        "fgsm_eps2/255",
        "fgsm_eps4/255",
    ]
    assert all(0.0 <= row["accuracy"] <= 1.0 and row["n"] == 16 for row in table.values())
    # FGSM moves every pixel by eps along the sign of the loss gradient w.r.t. the input.
    adv = fgsm_images(det, val.images, val.labels, 2 / 255)
    x = torch.from_numpy(val.images).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    loss = F.cross_entropy(det.model((x - det._mean) / det._std), torch.from_numpy(val.labels))
    (grad,) = torch.autograd.grad(loss, x)
    step = torch.from_numpy(adv.astype(np.int16) - val.images.astype(np.int16)).permute(0, 3, 1, 2)
    # Threaded reductions can flip the sign of a gradient within rounding of zero: compare the rest.
    inside = (x > 2 / 255) & (x < 1 - 2 / 255) & (grad.abs() > 1e-4 * grad.abs().max())
    assert inside.float().mean() > 0.5
    assert torch.equal(step[inside], 2 * grad.sign()[inside].to(torch.int16))
    assert "fgsm_eps4/255" in format_table(table)
    # Other sources give another split: refused instead of silently scoring trained-on images.
    other = write_cifake(tmp_path / "other", 30)
    with pytest.raises(ValueError, match="do not reproduce"):
        load_eval_data([other], det, split="val")


def test_cli_train_and_evaluate(synth_cifake, tmp_path, capsys):
    ck = tmp_path / "ck"
    args = ["--data", str(synth_cifake), "--val-size", "16", "--calib-size", "8"]
    assert main(["train", *args, "--out", str(ck), "--epochs", "1", "--batch-size", "16", "--threads", "1"]) == 0
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--data", str(synth_cifake), "--checkpoint", str(ck), "--json", str(report)]) == 0
    assert "clean" in capsys.readouterr().out
    assert json.loads(report.read_text())["metrics"]["clean"]["n"] == 80


def test_recalibrate_with_flip_tta(synth_cifake, tmp_path):
    from fakescope.evaluate import recalibrate

    ck = train(_cfg(synth_cifake, tmp_path / "ck", epochs=1))
    result = recalibrate(ck, [str(synth_cifake)], tta_hflip=True)
    assert set(result["calib_accuracy"]) == {"plain", "hflip_tta"}
    det = Detector.load(ck, device="cpu")
    assert det.meta.tta_hflip and det.meta.temperature == pytest.approx(result["temperature"])
    assert det.meta.metrics["validation"]["n"] == 16
    # With mirror TTA an image and its mirror image get the same verdict and probability.
    images = load_eval_data([synth_cifake], det, split="val").images
    np.testing.assert_allclose(det.predict(images), det.predict(images[:, :, ::-1].copy()), rtol=1e-5, atol=1e-6)
    probs, cams = det.predict_with_cam(images)
    assert cams.shape == (16, 32, 32)
    np.testing.assert_allclose(probs, det.predict(images), rtol=1e-5, atol=1e-6)
