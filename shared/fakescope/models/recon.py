"""Reconstruction autoencoders: aligned fakes made from the training run's own real photos.

A generator's last steps are a decoder: features at a fraction of the resolution, upsampled (a
transposed convolution, or nearest or bilinear interpolation followed by a convolution) and mixed
down to RGB. Those steps leave their trace on every image it makes, whatever it depicts. A real
photo passed through such a decoder keeps its content and gains the trace, so a detector trained on
the pair cannot separate them by content, only by the trace (Zhang, Karaman and Chang, "Detecting and
Simulating Artifacts in GAN Fake Images", WIFS 2019, simulate GAN artifacts this way; Rajan et al.,
"Aligned Datasets Improve Detection of Latent Diffusion-Generated Images", ICLR 2025, reconstruct
real images through a latent diffusion model's autoencoder). ``multigen/full``'s known shortcut is
content (fakes are mostly art, reals mostly photos): aligned fakes are the lever against it that
needs no generator's weights.

``ReconBank`` holds a few small autoencoders that differ in their upsampling layer; training passes
a share of its real images through one of them, picked at random per batch, and labels the result
fake (``TrainConfig.recon``). The bank is trained once (``python -m ops.train_recon``) on CIFAKE's
training-split real photos, and saved as ``recon.safetensors`` and ``recon.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["UPSAMPLERS", "ReconBank", "ReconConfig", "load_recon", "save_recon"]

# The upsampling layers of the generators a detector meets: a transposed convolution (DCGAN and its
# descendants), nearest neighbour then a convolution (latent diffusion's VAE decoder, StyleGAN2's
# skip), bilinear then a convolution.
UPSAMPLERS = ("transposed", "nearest", "bilinear")
WEIGHTS_FILE = "recon.safetensors"
CONFIG_FILE = "recon.json"


@dataclass(frozen=True)
class ReconConfig:
    """One autoencoder per entry of ``upsamplers``: two stride-2 stages down, a ``latent``-channel
    bottleneck at a quarter of the resolution, two upsampling stages back up."""

    upsamplers: tuple[str, ...] = UPSAMPLERS
    width: int = 32
    latent: int = 16

    def __post_init__(self) -> None:
        unknown = sorted(set(self.upsamplers) - set(UPSAMPLERS))
        if unknown or not self.upsamplers:
            raise ValueError(f"upsamplers must be some of {UPSAMPLERS}, got {self.upsamplers!r}")


def _up(kind: str, in_chs: int, out_chs: int) -> nn.Module:
    if kind == "transposed":
        return nn.ConvTranspose2d(in_chs, out_chs, 4, stride=2, padding=1)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode=kind, **({"align_corners": False} if kind == "bilinear" else {})),
        nn.Conv2d(in_chs, out_chs, 3, padding=1),
    )


class Autoencoder(nn.Module):
    """A 4x autoencoder with one kind of upsampling; input and output in [0, 1], any size divisible by 4
    (other sizes are reflect-padded and cropped back)."""

    def __init__(self, kind: str, width: int, latent: int) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w // 2, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(w // 2, w, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(w, w, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(w, latent, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, w, 3, padding=1),
            nn.SiLU(),
            _up(kind, w, w),
            nn.SiLU(),
            _up(kind, w, w // 2),
            nn.SiLU(),
            nn.Conv2d(w // 2, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % 4, -w % 4
        if ph or pw:
            x = nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
        # The decoder predicts the image in [0, 1] through a sigmoid-free clamp: a sigmoid would
        # squash highlights and shadows, a trace no generator leaves.
        out = self.decoder(self.encoder(x)).clamp(0, 1)
        return out[..., :h, :w]


class ReconBank(nn.Module):
    """The autoencoders of ``cfg.upsamplers``, one per entry (``members.<i>``)."""

    def __init__(self, cfg: ReconConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(Autoencoder(k, cfg.width, cfg.latent) for k in cfg.upsamplers)

    def forward(self, x: torch.Tensor, member: int) -> torch.Tensor:
        return self.members[member](x)


def save_recon(bank: ReconBank, out: str | Path, record: dict[str, object] | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in bank.state_dict().items()}, str(out / WEIGHTS_FILE))
    cfg = {**asdict(bank.cfg), "upsamplers": list(bank.cfg.upsamplers)}
    (out / CONFIG_FILE).write_text(json.dumps({"config": cfg, "record": record or {}}, indent=2) + "\n")
    return out


def load_recon(path: str | Path) -> ReconBank:
    """The bank saved in folder ``path``, frozen and in eval mode; strict about every key."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_FILE}: not a reconstruction bank")
    raw = json.loads((path / CONFIG_FILE).read_text())["config"]
    bank = ReconBank(ReconConfig(**{**raw, "upsamplers": tuple(raw["upsamplers"])}))
    bank.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=True)
    bank.requires_grad_(False)
    return bank.eval()
