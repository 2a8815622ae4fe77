"""Aligned fakes: the reconstruction bank, and training reals made into fakes by it."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fakescope.cli import main
from fakescope.models.recon import ReconBank, ReconConfig, load_recon, save_recon
from fakescope.train import TrainConfig, _Batches


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    torch.manual_seed(96_000)
    return save_recon(ReconBank(ReconConfig(width=8, latent=4)), tmp_path / "bank", {"steps": 0})


def test_a_saved_bank_loads_frozen_and_reconstructs_any_size(bank: Path) -> None:
    loaded = load_recon(bank)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.cfg.upsamplers == ("transposed", "nearest", "bilinear")
    x = torch.rand(2, 3, 37, 30)  # not a multiple of 4: padded and cropped back
    for member in range(3):
        out = loaded(x, member)
        assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert json.loads((bank / "recon.json").read_text())["record"] == {"steps": 0}


def test_a_bank_with_a_missing_tensor_is_refused(bank: Path) -> None:
    state = load_file(str(bank / "recon.safetensors"))
    state.pop(next(iter(state)))
    save_file(state, str(bank / "recon.safetensors"))
    with pytest.raises(RuntimeError, match="Missing key"):
        load_recon(bank)
    with pytest.raises(FileNotFoundError, match="not a reconstruction bank"):
        load_recon(bank.parent)


def test_aligned_fakes_are_reals_through_the_bank_labelled_fake(bank: Path) -> None:
    # Reals are one grey, fakes another: every slot the bank filled must hold a real's reconstruction.
    n = 400
    labels = torch.tensor([0, 1] * (n // 2))
    images = torch.where(labels.view(n, 1, 1, 1) == 0, 60, 200).expand(n, 32, 32, 3).to(torch.uint8).contiguous()
    zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    batches = _Batches(images, None, labels, None, zero, one, load_recon(bank))
    cfg = TrainConfig(data=["x"], out="y", robust_p=0.0, translate=0, border_p=0.0, recon="bank", recon_p=0.5)
    x, y = batches.batch(torch.arange(n), cfg, torch.Generator().manual_seed(96_001))
    assert torch.equal(y, labels)  # the labels keep their balance
    plain = torch.where(labels.view(n, 1, 1, 1) == 0, 60 / 255, 200 / 255).expand(n, 3, 32, 32)
    made = (x - plain).abs().flatten(1).amax(1) > 1e-4
    assert not bool(made[labels == 0].any())  # reals are left alone
    share = float(made[labels == 1].float().mean())
    assert 0.4 < share < 0.6
    real = torch.full((1, 3, 32, 32), 60 / 255)
    outputs = [load_recon(bank)(real, m)[0] for m in range(3)]
    for i in torch.nonzero(made).flatten():
        assert any(torch.allclose(x[i], o, atol=1e-5) or torch.allclose(x[i], o.flip(-1), atol=1e-5) for o in outputs)


def test_train_with_a_bank_records_it(synth_cifake: Path, bank: Path, tmp_path: Path) -> None:
    out = tmp_path / "ck"
    args = ["train", "--data", str(synth_cifake), "--out", str(out), "--epochs", "1", "--batch-size", "16"]
    args += ["--val-size", "16", "--calib-size", "8", "--threads", "1", "--recon", str(bank), "--recon-p", "0.5"]
    assert main(args) == 0
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["config"]["recon"] == str(bank) and training["config"]["recon_p"] == 0.5
    with pytest.raises(ValueError, match="recon_p"):
        TrainConfig(data=["x"], out="y", recon=str(bank), recon_p=0.0)


def test_aligned_fakes_made_larger_are_shrunk_back_to_the_window(bank: Path) -> None:
    # A generator's output is shrunk on its way to us: made at up to 3x, the fakes keep the window's
    # size and differ from those made at 1x.
    torch.manual_seed(96_002)
    n = 64
    labels = torch.tensor([0, 1] * (n // 2))
    images = (torch.rand(n, 32, 32, 3) * 255).to(torch.uint8)
    zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    cfg = TrainConfig(data=["x"], out="y", robust_p=0.0, translate=0, border_p=0.0, recon="bank", recon_p=1.0)
    out = {}
    batches = _Batches(images, None, labels, None, zero, one, load_recon(bank))
    for scale in (1.0, 3.0):
        scaled = dataclasses.replace(cfg, recon_scale=scale)
        out[scale] = batches.batch(torch.arange(n), scaled, torch.Generator().manual_seed(96_003))[0]
    assert out[3.0].shape == out[1.0].shape == (n, 3, 32, 32)
    reals = labels == 0
    plain = images.permute(0, 3, 1, 2).float() / 255
    for i in torch.nonzero(reals).flatten():  # reals are only flipped, at either scale
        assert torch.allclose(out[3.0][i], plain[i]) or torch.allclose(out[3.0][i], plain[i].flip(-1))
    assert float((out[3.0][~reals] - out[1.0][~reals]).abs().mean()) > 1e-3
    with pytest.raises(ValueError, match="recon_scale"):
        TrainConfig(data=["x"], out="y", recon_scale=0.5)
