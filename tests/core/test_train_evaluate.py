import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from fakescope import train as train_mod
from fakescope.checkpoint import load_checkpoint
from fakescope.cli import main
from fakescope.data import as_jpeg
from fakescope.detector import Detector
from fakescope.evaluate import fgsm_images, format_table, load_eval_data, robustness
from fakescope.train import TrainConfig, train
from tests.core.conftest import synth_image, write_cifake


def _cfg(data: Path, out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        data=[str(data)], out=str(out), epochs=2, batch_size=16, val_size=16, calib_size=8, threads=1
    )
    return TrainConfig(**{**base, **kw})


def test_train_writes_a_complete_checkpoint(synth_cifake: Path, tmp_path: Path) -> None:
    out = train(_cfg(synth_cifake, tmp_path / "ck"))
    model, meta = load_checkpoint(out)
    assert not model.training
    assert meta.variant == "freqnet_vgg" and meta.labels == ("real", "fake")
    assert meta.preprocess.input_size == (32, 32) and len(meta.preprocess.mean) == 3
    split = meta.training["split"]
    assert (split["train"], split["val"], split["calib"]) == (56, 16, 8)
    assert len(meta.training["history"]) == 2
    val = meta.metrics["validation"]
    assert val["n"] == 16 and set(val) >= {"accuracy", "roc_auc", "ece", "confusion"}
    assert 0.05 <= meta.metrics["temperature"] <= 20


def test_resume_continues_where_it_stopped(synth_cifake: Path, tmp_path: Path) -> None:
    full = train(_cfg(synth_cifake, tmp_path / "full"))
    part = train(_cfg(synth_cifake, tmp_path / "part", stop_after=1))
    assert len(json.loads((part / "config.json").read_text())["training"]["history"]) == 1
    resumed = train(_cfg(synth_cifake, tmp_path / "part", resume=True))
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_proxy_run_scores_dev_never_val(synth_cifake: Path, tmp_path: Path) -> None:
    # The proxy protocol's runs: a seeded training subset and a dev split carved from the training
    # part; they report dev metrics and nothing measured on validation.
    out = train(_cfg(synth_cifake, tmp_path / "ck", epochs=1, max_train=30, dev_size=10))
    meta = json.loads((out / "config.json").read_text())
    assert meta["training"]["split"]["train"] == 30
    assert meta["metrics"]["dev"]["n"] == 10 and "validation" not in meta["metrics"]
    assert all("val_acc" not in h and "calib_acc" in h for h in meta["training"]["history"])


def test_translate_batch_shifts_with_reflection() -> None:
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    gen = torch.Generator().manual_seed(0)
    out = train_mod.translate_batch(x, 2, gen)
    gen = torch.Generator().manual_seed(0)
    dy = torch.randint(0, 5, (2,), generator=gen)
    dx = torch.randint(0, 5, (2,), generator=gen)
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    for b in range(2):
        torch.testing.assert_close(out[b], padded[b, :, dy[b] : dy[b] + 6, dx[b] : dx[b] + 6])
    assert torch.equal(train_mod.translate_batch(x, 0, gen), x)


def test_black_border_shift_fills_with_black() -> None:
    x = torch.rand(3, 3, 8, 8) + 0.1  # nothing black to begin with
    gen = torch.Generator().manual_seed(1)
    out = train_mod.black_border_shift(x, 4, gen)
    gen = torch.Generator().manual_seed(1)
    dy = torch.randint(0, 9, (3,), generator=gen)
    dx = torch.randint(0, 9, (3,), generator=gen)
    padded = F.pad(x, (4, 4, 4, 4))
    for b in range(3):
        torch.testing.assert_close(out[b], padded[b, :, dy[b] : dy[b] + 8, dx[b] : dx[b] + 8])
    # A shift brings in exactly that many black rows and columns.
    shifted = [b for b in range(3) if (dy[b], dx[b]) != (4, 4)]
    assert shifted and all(bool((out[b] == 0).any()) for b in shifted)


def test_init_seed_changes_the_weights_not_the_split(synth_cifake: Path, tmp_path: Path) -> None:
    a = train(_cfg(synth_cifake, tmp_path / "a", epochs=1))
    b = train(_cfg(synth_cifake, tmp_path / "b", epochs=1, init_seed=7))
    ma, mb = load_checkpoint(a)[1], load_checkpoint(b)[1]
    assert ma.training["split"] == mb.training["split"]  # same validation images: members can be combined
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("kind", ["rescale", "blur"])
def test_degrade_keeps_shape_and_range_and_removes_detail(kind: str) -> None:
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = ((xx + yy) % 2).float().expand(4, 3, 32, 32).clone()
    out = train_mod.degrade(checker, kind, torch.Generator().manual_seed(0))
    assert out.shape == checker.shape and out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    # Both take away most of the finest (Nyquist) detail that the detector's evidence lives in.
    assert float((out - out.mean()).abs().mean()) < 0.5 * float((checker - checker.mean()).abs().mean())
    with pytest.raises(ValueError, match="unknown degradation"):
        train_mod.degrade(checker, "nope", torch.Generator())


def test_train_batch_applies_robust_share(synth_cifake: Path) -> None:
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    cfg = TrainConfig(data=["x"], out="y", robust_p=1.0, translate=0)
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    idx = torch.arange(64)
    x = train_mod.train_batch(images, images, idx, mean, std, cfg, torch.Generator().manual_seed(0))
    plain = images.permute(0, 3, 1, 2).float() / 255
    changed = ((x - plain).abs().flatten(1).amax(1) > 1e-6) & ((x - plain.flip(-1)).abs().flatten(1).amax(1) > 1e-6)
    # With robust_p=1 every image is rescaled, blurred or (here: the "JPEG copy" is itself) kept.
    assert changed.float().mean() > 0.4
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_noise_reaches_its_share_of_the_images() -> None:
    images = torch.full((400, 32, 32, 3), 128, dtype=torch.uint8)
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    idx = torch.arange(400)
    cfg = TrainConfig(data=["x"], out="y", robust_p=0.0, translate=0)
    quiet = train_mod.train_batch(images, None, idx, mean, std, cfg, torch.Generator().manual_seed(0))
    noisy_cfg = dataclasses.replace(cfg, noise_p=0.25)
    noisy = train_mod.train_batch(images, None, idx, mean, std, noisy_cfg, torch.Generator().manual_seed(0))
    changed = (noisy - quiet).abs().flatten(1).amax(1) > 1e-6
    assert 0.15 < float(changed.float().mean()) < 0.35
    spread = (noisy - quiet)[changed].std()
    assert 0.005 < float(spread) < 0.03


def _bare_batches(n: int) -> tuple[torch.Tensor, TrainConfig, Callable[[TrainConfig], torch.Tensor]]:
    """``n`` random 32x32 images, a recipe that leaves them be (no degradation, shift or border),
    and the function giving their whole batch, unnormalised, under a recipe: only the option a test
    turns on (and the flips) changes them."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    idx = torch.arange(n)
    cfg = TrainConfig(data=["x"], out="y", robust_p=0.0, translate=0, border_p=0.0)

    def batch(c: TrainConfig) -> torch.Tensor:
        return train_mod.train_batch(images, None, idx, mean, std, c, torch.Generator().manual_seed(0))

    return images, cfg, batch


def test_gray_reaches_its_share_and_costs_nothing_when_off() -> None:
    images, cfg, batch = _bare_batches(400)
    colour = batch(cfg)
    # Off, it draws nothing: the batch is the one a run before the option got (so --resume holds).
    torch.testing.assert_close(batch(dataclasses.replace(cfg, gray_p=0.0)), colour)
    half = batch(dataclasses.replace(cfg, gray_p=0.5))
    grey = (half - half.mean(1, keepdim=True)).abs().flatten(1).amax(1) < 1e-6
    assert 0.4 < float(grey.float().mean()) < 0.6  # these random images are never grey in colour
    # Each image is its source's luma if grey, the source itself if not (either way round: the
    # grey draw moves the stream the flips are drawn from).
    plain = images.permute(0, 3, 1, 2).float() / 255
    luma = (plain * torch.tensor(train_mod.LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    expected = torch.where(grey.view(-1, 1, 1, 1), luma, plain)
    gap = torch.minimum((half - expected).abs().flatten(1).amax(1), (half - expected.flip(-1)).abs().flatten(1).amax(1))
    assert float(gap.max()) < 1e-5
    with pytest.raises(ValueError, match="gray_p"):
        TrainConfig(data=["x"], out="y", gray_p=1.5)


def test_frequency_masking_zeroes_its_share_of_coefficients_and_costs_nothing_when_off() -> None:
    images, cfg, batch = _bare_batches(200)
    # Off, it draws nothing: the batch is the one a run before the option got (so --resume holds).
    torch.testing.assert_close(batch(dataclasses.replace(cfg, freq_mask_p=0.0)), batch(cfg))
    half = batch(dataclasses.replace(cfg, freq_mask_p=0.5))
    plain = images.permute(0, 3, 1, 2).float() / 255
    # Each image is its source, or its flip, unless masked (the mask draw moves the flips' stream).
    same = torch.minimum((half - plain).abs().flatten(1).amax(1), (half - plain.flip(-1)).abs().flatten(1).amax(1))
    masked = same > 1e-4
    assert 0.35 < float(masked.float().mean()) < 0.65

    # On the function itself: a masked image's spectrum has at least the ratio of its bins changed,
    # the same bins in every channel, and an unmasked one is untouched.
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.4  # far from clipping
    y = train_mod.frequency_mask(x, 1.0, 0.15, torch.Generator().manual_seed(2))
    moved = (torch.fft.fft2(y) - torch.fft.fft2(x)).abs() > 1e-3
    share = moved.flatten(2).float().mean(2)  # (images, channels)
    assert float(share.min()) >= 0.15 - 1e-6 and float(share.max()) <= 0.3 + 1e-6  # a zeroed bin's twin halves
    assert bool((moved == moved[:, :1]).all()) and not bool(moved[..., 0, 0].any())  # DC kept
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    torch.testing.assert_close(train_mod.frequency_mask(x, 0.0, 0.15, torch.Generator()), x)
    with pytest.raises(ValueError, match="freq_mask_p"):
        TrainConfig(data=["x"], out="y", freq_mask_p=-0.1)
    with pytest.raises(ValueError, match="freq_mask_ratio"):
        TrainConfig(data=["x"], out="y", freq_mask_p=0.5, freq_mask_ratio=1.0)


def test_folder_weights_even_out_folders_and_keep_each_labels_share() -> None:
    names = [f"d/FAKE/big/{i}.png" for i in range(90)] + [f"d/FAKE/small/{i}.png" for i in range(10)]
    names += [f"d/REAL/photos/{i}.png" for i in range(100)]
    labels = np.asarray([1] * 100 + [0] * 100)
    share = {}
    for power in (0.0, 0.5, 1.0):
        w = train_mod.folder_weights(names, labels, power)
        assert w[labels == 1].sum() == pytest.approx(100) and w[labels == 0].sum() == pytest.approx(100)
        share[power] = w[90:100].sum() / w[:100].sum()
    # Uniform, the small folder is a tenth of the fakes' draws; equal folders, a half; the root, 1/(1+3).
    assert share[0.0] == pytest.approx(0.1) and share[1.0] == pytest.approx(0.5)
    assert share[0.5] == pytest.approx(1 / (1 + 3))
    # An epoch's order draws by the weights; off, it is each image once a pass, as before.
    images, ys = torch.zeros(200, 4, 4, 3, dtype=torch.uint8), torch.from_numpy(labels)
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    plain = train_mod._Batches(images, None, ys, None, mean, std)
    assert sorted(plain.order(2).tolist()) == sorted(list(range(200)) * 2)
    torch.manual_seed(0)
    weights = torch.from_numpy(train_mod.folder_weights(names, labels, 0.5))
    drawn = train_mod._Batches(images, None, ys, None, mean, std, weights=weights).order(50)
    fakes = drawn[drawn < 100]
    assert len(drawn) == 10_000 and 0.45 < len(fakes) / len(drawn) < 0.55
    assert 0.22 < float((fakes >= 90).float().mean()) < 0.28
    with pytest.raises(ValueError, match="folder_balance"):
        TrainConfig(data=["x"], out="y", folder_balance=2.0)


def test_the_top_positions_readout_is_the_served_one_at_share_one_and_above_it_below() -> None:
    torch.manual_seed(0)
    net = train_mod.create_model("vgg2_wide_stem").eval()
    x = torch.rand(3, 3, 48, 48)
    fake, real = train_mod.LABELS.index("fake"), train_mod.LABELS.index("real")
    with torch.no_grad():
        served = net(x)
        every = train_mod.top_positions_logits(net, x, 1.0)
        top = train_mod.top_positions_logits(net, x, 0.1)
    served_diff = served[:, fake] - served[:, real]
    torch.testing.assert_close(every[:, fake] - every[:, real], served_diff, atol=1e-4, rtol=1e-4)
    assert bool(((top[:, fake] - top[:, real]) >= served_diff - 1e-5).all())
    assert train_mod.parse_readout("mean") is None and train_mod.parse_readout("top0.1") == 0.1
    for bad in ("top0", "top1.5", "max", "topx"):
        with pytest.raises(ValueError, match="readout"):
            train_mod.parse_readout(bad)


def test_resampling_history_reaches_its_share_and_costs_nothing_when_off() -> None:
    # The dcgan64 tiles' history: bilinear to 64, a 2x box back to 32, then the JPEG round trip.
    rng = np.random.default_rng(0)
    images_np = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    copies = train_mod.resampled_copies(images_np[:2], jpeg_quality=75)
    first = Image.fromarray(images_np[0]).resize((64, 64), Image.Resampling.BILINEAR).reduce(2)
    np.testing.assert_array_equal(copies[0], as_jpeg(np.asarray(first), 75))
    images = torch.from_numpy(images_np)
    resampled = torch.from_numpy(train_mod.resampled_copies(images_np))
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    idx = torch.arange(200)
    cfg = TrainConfig(data=["x"], out="y", robust_p=0.0, translate=0, border_p=0.0)

    def batch(c: TrainConfig, history: torch.Tensor | None) -> torch.Tensor:
        return train_mod.train_batch(images, None, idx, mean, std, c, torch.Generator().manual_seed(0), None, history)

    # Off, it draws nothing: the batch is the one a run without copies gets (so --resume holds).
    torch.testing.assert_close(batch(cfg, resampled), batch(cfg, None))
    half = batch(dataclasses.replace(cfg, resample_p=0.5), resampled)

    def same(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:  # per image, either way round
        ref = source.permute(0, 3, 1, 2).float() / 255
        return torch.minimum((x - ref).abs().flatten(1).amax(1), (x - ref.flip(-1)).abs().flatten(1).amax(1)) < 1e-6

    is_copy, is_plain = same(half, resampled), same(half, images)
    assert bool((is_copy ^ is_plain).all())  # every image is one or the other
    assert 0.35 < float(is_copy.float().mean()) < 0.65


def test_ema_is_what_gets_saved(synth_cifake: Path, tmp_path: Path) -> None:
    with_ema = train(_cfg(synth_cifake, tmp_path / "ema", epochs=1))
    no_ema = train(_cfg(synth_cifake, tmp_path / "plain", epochs=1, ema_decay=0.0))
    state = torch.load(with_ema / "train_state.pt", weights_only=False)
    saved = load_file(str(with_ema / "model.safetensors"))
    # The saved weights are the EMA's, not the last step's.
    assert any(not torch.allclose(saved[k], v.cpu()) for k, v in state["model"].items() if k in saved)
    for k, v in state["ema"].items():
        torch.testing.assert_close(saved[k], v.cpu())
    plain = torch.load(no_ema / "train_state.pt", weights_only=False)
    assert plain["ema"] is None


def test_evaluate_split_and_robustness(synth_cifake: Path, tmp_path: Path) -> None:
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
        "down_up_0.75x",
        "gaussian_blur_sigma1",
        "crop_pad_4px",
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


def test_cli_train_and_evaluate(synth_cifake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = tmp_path / "ck"
    args = ["--data", str(synth_cifake), "--val-size", "16", "--calib-size", "8"]
    train_args = ["--out", str(ck), "--epochs", "2", "--batch-size", "16", "--threads", "1"]
    assert main(["train", *args, *train_args, "--select-epoch", "calib_auc"]) == 0
    assert json.loads((ck / "config.json").read_text())["metrics"]["selected_epoch"] in (1, 2)
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--data", str(synth_cifake), "--checkpoint", str(ck), "--json", str(report)]) == 0
    assert "clean" in capsys.readouterr().out
    assert json.loads(report.read_text())["metrics"]["clean"]["n"] == 80


def test_recalibrate_with_flip_tta(synth_cifake: Path, tmp_path: Path) -> None:
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


def test_recalibrate_fits_the_domain_model(synth_cifake: Path, tmp_path: Path) -> None:
    from fakescope.evaluate import recalibrate

    ck = train(_cfg(synth_cifake, tmp_path / "ck", epochs=1))
    result = recalibrate(ck, [str(synth_cifake)], tta_hflip=None)
    assert result["tta_hflip"] == (result["calib_accuracy"]["hflip_tta"] > result["calib_accuracy"]["plain"])
    det = Detector.load(ck, device="cpu")
    assert (ck / "domain.safetensors").is_file() and det.domain is not None
    assert det.meta.domain["method"] == "mahalanobis" and det.meta.domain["fitted_on"] == 56
    calib = load_eval_data([synth_cifake], det, split="calib")
    a = det.analyze(calib.images)
    assert a.domain is not None and a.cams is None
    # The threshold puts 95% of the calibration split in domain (7 of 8 here).
    assert (a.domain <= 1.0).sum() == 7
    # Images unlike anything trained on (saturated noise) are far out of domain.
    noise = np.random.default_rng(0).choice([0, 255], size=(8, 32, 32, 3)).astype(np.uint8)
    far = det.analyze(noise).domain
    assert far is not None and (far > 1.0).all()
    np.testing.assert_allclose(det.analyze(calib.images, cams=True).probs, a.probs, rtol=1e-5, atol=1e-6)
    from fakescope.evaluate import domain_report

    rep = domain_report(det, calib, batch_size=4)
    assert rep["flagged"] == pytest.approx(1 / 8)
    assert 0.0 <= rep["confident_wrong_unflagged"] <= rep["confident_wrong"] <= 1.0
    # The domain model decides answers: it is part of the model version.
    version = det.model_version
    det.meta.domain = {}
    assert det.model_version != version


def test_held_out_matches_folder_names_and_source_paths() -> None:
    names = ["small/FAKE/began/a.png", "cifake/FAKE/1.jpg", "cifake/REAL/1.jpg", "full/FAKE/began2/x.jpg"]
    assert train_mod.held_out(names, ["began", "cifake/FAKE"]).tolist() == [True, True, False, False]


def test_holdout_fold_never_trains_on_the_held_out_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    write_cifake(tmp_path / "d" / "gen-a", 24)
    write_cifake(tmp_path / "d" / "gen-b", 12)
    held = tmp_path / "d" / "gen-b" / "FAKE"
    cfg = _cfg(tmp_path / "d", tmp_path / "ck", holdout=["gen-b/FAKE"], input_size=48, crop=32, scale_p=1.0)
    out = train(dataclasses.replace(cfg, repeats=2, calib_every=5))
    meta = json.loads((out / "config.json").read_text())
    # Two passes an epoch; the calibration split scored only after the last epoch.
    first, last = meta["training"]["history"]
    assert "calib_acc" not in first and "calib_acc" in last
    assert first["train_images_per_s"] > 0 and meta["training"]["split"]["train"] > 0
    hold = meta["metrics"]["holdout"]
    # Every held-out fake, scored against the validation split's reals, which were never trained on either.
    n_val_reals = meta["metrics"]["validation"]["confusion"][0][0] + meta["metrics"]["validation"]["confusion"][0][1]
    assert hold["n"] == len(list(held.iterdir())) + n_val_reals
    split = meta["training"]["split"]
    assert split["train"] + split["val"] + split["calib"] == 72 - 12  # the held-out fakes are in none of them
    assert meta["preprocess"]["input_size"] == [48, 48]


def test_holdout_only_fold_scores_the_held_out_folders_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    write_cifake(tmp_path / "d" / "gen-a", 24)
    write_cifake(tmp_path / "d" / "gen-b", 12)
    cfg = _cfg(tmp_path / "d", tmp_path / "ck", holdout=["gen-b/FAKE"], holdout_only=True, content_only=8)
    meta = json.loads((train(cfg) / "config.json").read_text())
    assert set(meta["metrics"]) == {"holdout"} and meta["metrics"]["holdout"]["folders"] == ["gen-b/FAKE"]
    assert all("calib_acc" not in h for h in meta["training"]["history"])
    with pytest.raises(ValueError, match="name them in holdout"):
        _cfg(tmp_path / "d", tmp_path / "x", holdout_only=True)


def test_content_only_leaves_no_pixel_trace(synth_cifake: Path) -> None:
    from fakescope.data import load_labelled

    data = load_labelled([synth_cifake])
    flat = train_mod.content_only(data.images, 4)
    assert flat.shape == data.images.shape and flat.dtype == np.uint8
    # The fakes' 2-pixel checkerboard is gone: neighbouring pixels barely differ anywhere.
    assert np.abs(np.diff(flat.astype(int), axis=2)).max() < np.abs(np.diff(data.images.astype(int), axis=2)).max()


def test_scaled_crops_cut_and_shrink() -> None:
    gen = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    assert train_mod.crop_batch(raw, 24, gen).shape == (4, 24, 24, 3)
    cfg = TrainConfig(data=["x"], out="y", input_size=64, crop=24, scale_p=1.0, scale_min=0.5)
    x = train_mod.scaled_crops(raw, cfg, gen)
    assert x.shape == (4, 3, 24, 24) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # A shrunk region is smoother than a plain crop of the same noise.
    plain = train_mod.scaled_crops(raw, dataclasses.replace(cfg, scale_p=0.0), gen)
    assert x.diff(dim=-1).abs().mean() < plain.diff(dim=-1).abs().mean()
    with pytest.raises(ValueError, match="needs crop"):
        TrainConfig(data=["x"], out="y", scale_p=0.5)


def test_tiles_are_windows_beside_the_crops_and_honour_the_holdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Thumbnails of other generators (CIFAKE, multigen/small) trained on as windows of a full-size
    # run: every batch gains tile_share of them, and a held-out folder is held out of them too.
    monkeypatch.setenv("FAKESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    write_cifake(tmp_path / "full", 24)
    write_cifake(tmp_path / "tiles" / "gen-a", 10)
    write_cifake(tmp_path / "tiles" / "gen-b", 6)
    cfg = _cfg(
        tmp_path / "full",
        tmp_path / "ck",
        input_size=48,
        crop=32,
        tiles=[str(tmp_path / "tiles")],
        tile_share=0.25,
        holdout=["gen-b/FAKE"],
    )
    tiles = train_mod._load_tiles(cfg, 0)
    assert tiles is not None and tiles.images.shape == (26, 32, 32, 3)  # 32 tiles less gen-b's 6 fakes
    assert int(tiles.labels.sum()) == 10 and tiles.cfg.crop == 0
    gen = torch.Generator().manual_seed(0)
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    x, y = torch.zeros(12, 3, 32, 32), torch.zeros(12, dtype=torch.long)
    bx, by = tiles.extend(x, y, mean, std, gen)
    assert bx.shape == (16, 3, 32, 32) and by.shape == (16,)  # 4 of 16 are tiles
    assert bool((bx[12:] != 0).any()) and set(by[12:].tolist()) <= {0, 1}
    meta = json.loads((train(cfg) / "config.json").read_text())
    assert meta["training"]["config"]["tiles"] == [str(tmp_path / "tiles")]
    assert meta["preprocess"]["input_size"] == [48, 48] and "validation" in meta["metrics"]
    with pytest.raises(ValueError, match="need crop"):
        _cfg(tmp_path / "full", tmp_path / "x", tiles=[str(tmp_path / "tiles")])


def test_cross_fit_parts_cover_the_training_split_once(synth_cifake: Path, tmp_path: Path) -> None:
    whole = train_mod._load_data(_cfg(synth_cifake, tmp_path / "ck"))
    parts = [train_mod._load_data(_cfg(synth_cifake, tmp_path / "ck", cross_fit=f"{k}/2")) for k in range(2)]
    # Each run trains without its part: the two together hold every training image once, as each
    # leaves out the images the other trains on; validation and calibration are untouched.
    assert set(parts[0].train_idx) | set(parts[1].train_idx) == set(whole.train_idx)
    assert not set(parts[0].train_idx) & set(parts[1].train_idx)
    assert all(np.array_equal(p.split.val, whole.split.val) for p in parts)
    # Parts follow the names, not the order they were read in.
    names = [whole.data.names[i] for i in whole.train_idx]
    assert train_mod.name_parts(names, 2).tolist() == train_mod.name_parts(names[::-1], 2).tolist()[::-1]
    for bad in ("2/2", "0/1", "a/2", "1"):
        with pytest.raises(ValueError, match="k/K"):
            _cfg(synth_cifake, tmp_path / "ck", cross_fit=bad)


def test_content_bias_predicts_each_training_image_out_of_fold(
    synth_cifake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fits = [train(_cfg(synth_cifake, tmp_path / f"b{k}", epochs=1, content_only=8, cross_fit=f"{k}/2")) for k in (0, 1)]
    d = train_mod._load_data(_cfg(synth_cifake, tmp_path / "ck"))
    images, names = d.data.images[d.train_idx], [d.data.names[i] for i in d.train_idx]
    device = torch.device("cpu")
    bias = train_mod.content_bias([str(f) for f in fits], images, names, device)
    part = train_mod.name_parts(names, 2)
    for k, fit in enumerate(fits):
        # Each image's bias is the checkpoint that never trained on it, on the image as it trained.
        net, meta = load_checkpoint(fit)
        own = train_mod.content_only(images[part == k], 8)
        expected = torch.log_softmax(train_mod.predict_arrays(net, own, meta.preprocess, device), dim=1)
        torch.testing.assert_close(bias[torch.from_numpy(part == k)], expected)
    # Images none of them trained on get the average; a part with no checkpoint is an error.
    averaged = train_mod.content_bias([str(f) for f in fits], images, names, device, out_of_fold=False)
    assert averaged.shape == (len(images), 2)
    # Both are kept beside the weights: the same images again cost no pass, other images one.
    with monkeypatch.context() as m:
        m.setattr(train_mod, "predict_arrays", lambda *a, **k: pytest.fail("scored the same images twice"))
        torch.testing.assert_close(train_mod.content_bias([str(f) for f in fits], images, names, device), bias)
        train_mod.content_bias([str(f) for f in fits], images, names, device, out_of_fold=False)
    fewer = train_mod.checkpoint_logits(str(fits[0]), images[:3], names[:3], device)
    assert fewer.shape == (3, 2)
    with pytest.raises(ValueError, match="no prediction"):
        train_mod.content_bias([str(fits[0])], images, names, device)


def test_an_uninformative_bias_trains_the_same_model(
    synth_cifake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The product of experts adds the bias's log-probabilities to the logits: a bias that says 50/50
    # for every image adds the same to both, and the model comes out as if trained alone.
    plain = train(_cfg(synth_cifake, tmp_path / "plain", epochs=1, label_smoothing=0.0))
    monkeypatch.setattr(train_mod, "content_bias", lambda c, images, n, d: torch.full((len(images), 2), -0.6931))
    flat = train(_cfg(synth_cifake, tmp_path / "flat", epochs=1, bias_from=["unused"]))
    a, b = load_file(str(plain / "model.safetensors")), load_file(str(flat / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    # One that already knows every label leaves the model less to learn: its weights move less.
    d = train_mod._load_data(_cfg(synth_cifake, tmp_path / "x"))
    known_labels = torch.from_numpy(d.data.labels[d.train_idx])
    monkeypatch.setattr(
        train_mod, "content_bias", lambda c, images, n, dev: torch.tensor([[0.0, -30.0], [-30.0, 0.0]])[known_labels]
    )
    starts: list[dict[str, torch.Tensor]] = []
    start_run = train_mod._start_run

    def spy(cfg: TrainConfig, model: Any, *rest: Any) -> Any:
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return start_run(cfg, model, *rest)

    monkeypatch.setattr(train_mod, "_start_run", spy)
    known = train(_cfg(synth_cifake, tmp_path / "known", epochs=1, bias_from=["unused"]))
    again = train(_cfg(synth_cifake, tmp_path / "again", epochs=1, label_smoothing=0.0))
    assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])

    def moved(out: Path) -> float:
        w = load_checkpoint(out)[0].state_dict()
        return sum(float((w[k] - starts[0][k]).abs().sum()) for k in w if w[k].is_floating_point())

    assert moved(known) < 0.5 * moved(again)


def _scripted_calib_auc(monkeypatch: pytest.MonkeyPatch, scores: list[float]) -> None:
    """The calibration ROC-AUC each scored epoch reports, in order (the selection's only input)."""
    it = iter(scores)
    monkeypatch.setattr(train_mod, "roc_auc", lambda labels, prob: next(it))


def test_select_epoch_keeps_the_epoch_the_calibration_split_ranks_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    write_cifake(tmp_path / "d" / "gen-a", 24)
    write_cifake(tmp_path / "d" / "gen-b", 12)
    cfg = _cfg(tmp_path / "d", tmp_path / "sel", epochs=3, holdout=["gen-b/FAKE"], holdout_only=True)
    # Epoch 1 ranks best; epoch 3 ties it and loses (a tie goes to the earlier epoch).
    _scripted_calib_auc(monkeypatch, [0.9, 0.5, 0.9])
    sel = json.loads((train(dataclasses.replace(cfg, select_epoch="calib_auc")) / "config.json").read_text())
    assert [h["calib_auc"] for h in sel["training"]["history"]] == [0.9, 0.5, 0.9]
    assert sel["metrics"]["selected_epoch"] == 1 and sel["metrics"]["selected_calib_auc"] == 0.9

    # The kept weights are epoch 1's: the same run stopped after its first epoch saved them.
    first = train(dataclasses.replace(cfg, out=str(tmp_path / "first"), stop_after=1))
    kept, one = load_file(str(tmp_path / "sel" / "model.safetensors")), load_file(str(first / "model.safetensors"))
    for k in one:
        torch.testing.assert_close(kept[k], one[k], atol=1e-5, rtol=1e-4)
    # Its held-out score is the selected weights'; the last epoch's is the run without the choice.
    last = json.loads((train(dataclasses.replace(cfg, out=str(tmp_path / "last"))) / "config.json").read_text())
    a, b = sel["metrics"]["holdout_last"], last["metrics"]["holdout"]
    assert a["confusion"] == b["confusion"] and a["ece"] == pytest.approx(b["ece"], abs=1e-6)
    assert "selected_epoch" not in last["metrics"] and "calib_acc" not in last["training"]["history"][-1]


def test_select_epoch_survives_a_resume(synth_cifake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(synth_cifake, tmp_path / "ck", epochs=3, select_epoch="calib_auc")
    _scripted_calib_auc(monkeypatch, [0.2, 0.8, 0.7])
    whole = train(cfg)
    _scripted_calib_auc(monkeypatch, [0.2, 0.8])
    train(dataclasses.replace(cfg, out=str(tmp_path / "part"), stop_after=2))
    _scripted_calib_auc(monkeypatch, [0.7])
    part = train(dataclasses.replace(cfg, out=str(tmp_path / "part"), resume=True))
    a, b = (json.loads((p / "config.json").read_text())["metrics"] for p in (whole, part))
    assert a["selected_epoch"] == b["selected_epoch"] == 2
    wa, wb = load_file(str(whole / "model.safetensors")), load_file(str(part / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="select_epoch"):
        _cfg(synth_cifake, tmp_path / "x", select_epoch="best")


def _names() -> list[str]:
    names = [f"d/FAKE/big/{i}.png" for i in range(60)] + [f"d/FAKE/small/{i}.png" for i in range(20)]
    return names + [f"d/REAL/a/{i}.png" for i in range(40)] + [f"d/REAL/b/{i}.png" for i in range(40)]


def _dro(step: float) -> tuple[train_mod.GroupDRO, np.ndarray]:
    labels = np.asarray([1] * 80 + [0] * 80)
    return train_mod.GroupDRO.build(_names(), labels, step), labels


def test_group_dro_weighs_the_folders_the_model_gets_wrong_and_keeps_each_labels_share() -> None:
    dro, labels = _dro(0.0)
    assert dro.folders == ["d/FAKE/big", "d/FAKE/small", "d/REAL/a", "d/REAL/b"]
    torch.testing.assert_close(dro.q, torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64))
    # At even weights, with every folder equally present, it is the plain mean loss.
    idx = torch.tensor([0, 1, 60, 61, 80, 81, 120, 121])
    y = torch.from_numpy(labels[idx.numpy()])
    logits = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    per_image = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(dro.loss(per_image, idx, y), per_image.mean())

    dro, _ = _dro(0.5)
    idx = torch.tensor([0, 60, 80, 120])
    y = torch.from_numpy(labels[idx.numpy()])
    per_image = torch.tensor([0.1, 2.0, 0.3, 0.3], requires_grad=True)  # the small fake folder is hard
    for _ in range(10):
        loss = dro.loss(per_image, idx, y)
    assert float(dro.q[1]) > 0.9 and float(dro.q[0]) < 0.1
    torch.testing.assert_close(dro.q[:2].sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(dro.q[2:], torch.tensor([0.5, 0.5], dtype=torch.float64))
    # The gradient follows the weights: the hard folder's image carries nearly all of its label's half.
    (grad,) = torch.autograd.grad(loss, per_image)
    assert float(grad[1]) > 0.45 and float(grad[0]) < 0.05
    torch.testing.assert_close(grad[2:], torch.tensor([0.25, 0.25]))
    assert dro.top(1) == "d/FAKE/small x2.00"

    # Started from the folders' sizes, its weights are each folder's share of its label's images,
    # so at step 0 a batch drawn in those shares gets the plain mean loss.
    sized = train_mod.GroupDRO.build(_names(), labels, 0.0, start="sizes")
    torch.testing.assert_close(sized.q, torch.tensor([0.75, 0.25, 0.5, 0.5], dtype=torch.float64))
    idx = torch.tensor([0, 1, 2, 60, 80, 120])
    y = torch.from_numpy(labels[idx.numpy()])
    per_image = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.4, 0.6])
    torch.testing.assert_close(sized.loss(per_image, idx, y), per_image.mean())

    mixed = ["d/x/0.png", "d/x/1.png"]
    with pytest.raises(ValueError, match="holds both"):
        train_mod.GroupDRO.build(mixed, np.asarray([0, 1]), 0.01)
    with pytest.raises(ValueError, match="group_dro"):
        TrainConfig(data=["x"], out="y", group_dro=-1.0)
    with pytest.raises(ValueError, match="group_dro"):
        TrainConfig(data=["x"], out="y", group_dro=0.01, recon="bank")
    with pytest.raises(ValueError, match="group_dro_start"):
        TrainConfig(data=["x"], out="y", group_dro=0.01, group_dro_start="uniform")


def test_group_dro_weights_survive_a_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two sources, so each label has two folders; a large step moves the weights far within an epoch,
    # and a resume that started them even again would train other weights.
    monkeypatch.setenv("FAKESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    roots = [str(write_cifake(tmp_path / name, 30)) for name in ("one", "two")]
    for i in range(30):  # the second source's fakes carry no trace: that folder stays hard
        Image.fromarray(synth_image("real", seed=5_000 + i)).save(tmp_path / "two" / "FAKE" / f"{i}.png")
    cfg = dataclasses.replace(_cfg(tmp_path, tmp_path / "full"), data=roots, group_dro=5.0)
    full = train(cfg)
    train(dataclasses.replace(cfg, out=str(tmp_path / "part"), stop_after=1))
    state = torch.load(tmp_path / "part" / train_mod.STATE_FILE, weights_only=False)
    assert state["group_dro"].shape == (4,) and float(state["group_dro"].max()) > 0.55
    resumed = train(dataclasses.replace(cfg, out=str(tmp_path / "part"), resume=True))
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_sharpness_aware_grad_is_the_gradient_at_the_moved_weights_and_puts_them_back() -> None:
    torch.manual_seed(0)
    norm_layer = torch.nn.BatchNorm1d(8)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), norm_layer, torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x, y = torch.randn(32, 6), torch.randint(0, 2, (32,))

    def loss_at() -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    loss_at().backward()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert norm_layer.running_mean is not None
    stats = norm_layer.running_mean.clone()
    train_mod.sharpness_aware_grad(model, 0.05, loss_at)
    for p, w in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), w)
    torch.testing.assert_close(norm_layer.running_mean, stats)  # the second pass leaves BatchNorm's statistics
    assert norm_layer.momentum == 0.1

    # The same gradient by hand: the weights moved 0.05 along the normalised gradient.
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for p, g in zip(probe.parameters(), grads, strict=True):
            p.add_(g * 0.05 / norm)
    F.cross_entropy(probe(x), y).backward()
    for p, q in zip(model.parameters(), probe.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad)
    moved = [p.grad for p in model.parameters() if p.grad is not None]
    assert not all(torch.allclose(g, m) for g, m in zip(grads, moved, strict=True))  # not the plain gradient


def _trains_differently_and_resumes(data: Path, tmp_path: Path, **option: Any) -> None:
    """A run with ``option`` ends with other weights than the plain run, and resumes to its own."""
    cfg = _cfg(data, tmp_path / "full", **option)
    full = train(cfg)
    plain = train(_cfg(data, tmp_path / "plain"))
    a, c = load_file(str(full / "model.safetensors")), load_file(str(plain / "model.safetensors"))
    assert any(not torch.allclose(a[k], c[k]) for k in a)  # the option reaches the steps
    train(dataclasses.replace(cfg, out=str(tmp_path / "part"), stop_after=1))
    resumed = train(dataclasses.replace(cfg, out=str(tmp_path / "part"), resume=True))
    b = load_file(str(resumed / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_sam_trains_resumes_and_is_refused_beside_group_dro(synth_cifake: Path, tmp_path: Path) -> None:
    _trains_differently_and_resumes(synth_cifake, tmp_path, sam=0.05)
    with pytest.raises(ValueError, match="sam is a radius"):
        TrainConfig(data=["x"], out="y", sam=-0.1)
    with pytest.raises(ValueError, match="second pass"):
        TrainConfig(data=["x"], out="y", sam=0.05, group_dro=0.01)


def test_the_position_loss_scores_every_position_and_serves_their_mean() -> None:
    torch.manual_seed(0)
    model = train_mod.create_model("vgg2_wide_stem", num_classes=2).eval()
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 1])
    cfg = TrainConfig(data=["x"], out="y", position_loss=True)
    with torch.no_grad():
        logits, maps = train_mod._forward(model, x, cfg)
        plain, none = train_mod._forward(model, x, dataclasses.replace(cfg, position_loss=False))
    assert none is None and maps is not None and maps.shape == (3, 2, 8, 8)
    torch.testing.assert_close(logits, model(x))  # the image's logits are the served ones
    torch.testing.assert_close(plain, model(x))

    # Every position against the image's label, by hand; not the loss on the positions' mean.
    by_hand = torch.stack(
        [
            F.cross_entropy(maps[i, :, r, c][None], y[i : i + 1], label_smoothing=cfg.label_smoothing)
            for i in range(3)
            for r in range(8)
            for c in range(8)
        ]
    ).mean()
    loss = train_mod._position_loss(maps, y, cfg)
    torch.testing.assert_close(loss, by_hand)
    assert not torch.allclose(loss, F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing))


def test_the_position_loss_trains_resumes_and_is_refused_where_the_loss_is_not_plain(
    synth_cifake: Path, tmp_path: Path
) -> None:
    _trains_differently_and_resumes(synth_cifake, tmp_path, position_loss=True)
    with pytest.raises(ValueError, match="every position"):
        TrainConfig(data=["x"], out="y", position_loss=True, group_dro=0.01)
    with pytest.raises(ValueError, match="every position"):
        TrainConfig(data=["x"], out="y", position_loss=True, bias_from=["bias.npy"])
