"""Training a detector on CIFAKE-layout data: the paper's recipe, or the faster one that beats it.

Images are decoded once (cached) and held as one uint8 tensor; batches are indexed, normalised,
flipped, translated and (for a share of them) degraded on the fly, so on a 2-core machine the cores
run the model rather than JPEG decoders. The ``fast`` recipe follows CIFAR speed-run practice: flips
and small reflect-padded translations, label smoothing, an EMA of the weights (the EMA is what gets
saved), one-cycle AdamW, bf16 autocast where the CPU has AMX. Robustness augmentation (Wang et al.,
CVPR 2020) down-up rescales, blurs or JPEG-recompresses ``robust_p`` of the images, so the detector
does not collapse when a platform resizes an upload.

The validation split is never augmented, never trained on and never looked at during training: the
per-epoch record is measured on the calibration split, and validation is scored once, at the end.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from fakescope.checkpoint import CONFIG_FILE, CheckpointMeta, Preprocess, load_checkpoint, save_checkpoint
from fakescope.data import LABELS, LabelledArray, Split, as_jpeg, load_labelled, make_split
from fakescope.machine import resolve_device
from fakescope.metrics import binary_metrics, roc_auc
from fakescope.models import DetectorNet, Network, create_model, list_models
from fakescope.models.recon import ReconBank, load_recon
from fakescope.temperature import fit_temperature

__all__ = [
    "TrainConfig",
    "checkpoint_logits",
    "content_bias",
    "holdout_set",
    "predict_arrays",
    "score_holdout",
    "score_holdout_with_bias",
    "train",
]

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
RECIPES = ("fast", "paper")
SELECT_EPOCH = ("last", "calib_auc")
GROUP_DRO_STARTS = ("even", "sizes")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved into the checkpoint's ``training`` record."""

    data: list[str]
    out: str
    variant: str = "freqnet_vgg"
    recipe: str = "fast"
    epochs: int = 12
    batch_size: int = 128
    lr: float | None = None
    weight_decay: float = 0.05
    label_smoothing: float = 0.05
    val_size: int = 10_000
    calib_size: int = 2_000
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    resume: bool = False
    # A seeded random subset of the training part (the proxy protocol trains on 20,000), and a dev
    # split carved from the rest of it: with dev_size > 0 the run is scored on dev, never on val.
    max_train: int | None = None
    dev_size: int = 0
    # Fields of the variant's architecture to replace (ablations: freq_merges=0, wavelet=False).
    model_overrides: dict[str, Any] = field(default_factory=dict)
    stop_after: int | None = None
    init_from: str | None = None
    # Fast recipe only: reflect-padded random translation (pixels), the EMA's decay per step (0: no
    # EMA), the share of images given one random degradation, and bf16 autocast ("auto": on CUDA, and
    # on CPUs whose matrix units run bf16, where it is several times faster).
    translate: int = 2
    ema_decay: float = 0.999
    robust_p: float = 0.15
    # The share of images (both labels) given Gaussian noise, sigma in [0.005, 0.03] of the range,
    # after any other degradation: small GANs' samples are noisy, and a model trained on them without
    # it learns "noisy" as "fake" and calls a grainy photo fake (0: off, and no random draw, so
    # recipes without it reproduce as before).
    noise_p: float = 0.0
    # The share of images (both labels) seen in grey, luma (BT.601) in all three channels, after any
    # other degradation: multigen/full's fakes are mostly art and its reals mostly photos, so colour
    # alone is a label there; in grey an image's only evidence is its texture and traces. Served
    # images keep their colour (0: off, and no random draw, so recipes without it reproduce as before).
    gray_p: float = 0.0
    # Frequency masking (Doloriel and Cheung, ICASSP 2024): the share of images (both labels) with a
    # random ``freq_mask_ratio`` of their 2-D Fourier coefficients zeroed, the same bins in every
    # channel, after any other degradation: a model kept from leaning on one set of frequencies may
    # carry better to generators whose traces sit in others. Never at scoring (0: off, and no random
    # draw, so recipes without it reproduce as before).
    freq_mask_p: float = 0.0
    freq_mask_ratio: float = 0.15
    # Draw each training image with weight n ** -folder_balance, n the training images in its folder
    # (a generator's for fakes, a source's for reals), each label keeping its share: multigen/full's
    # folders run from 21 images to 943, and uniform draws teach mostly the largest one's trace.
    # 1: every folder of a label drawn equally; 0.5: a folder's share goes as the root of its size
    # (0: off, a fresh permutation each pass as before).
    folder_balance: float = 0.0
    # Online group DRO's step (``GroupDRO``): each training folder's weight in the loss grows with
    # its loss, so the generators and sources the model still gets wrong weigh more than the largest
    # one's trace (0: off, the plain mean loss as before).
    group_dro: float = 0.0
    # Where group DRO's weights start: "even" (every folder of a label weighed equally, Sagawa et
    # al.'s start) or "sizes" (in proportion to the folders' images: the plain mean loss at step 0).
    group_dro_start: str = "even"
    # Sharpness-aware minimisation's radius (Foret et al., ICLR 2021): each step's gradient is taken
    # at the weights moved this far along the batch's normalised gradient, so training seeks weights
    # whose whole neighbourhood has a low loss; BatchNorm's statistics follow the first pass only.
    # Twice the passes a step (0: off, the plain step as before).
    sam: float = 0.0
    # The loss at every position of the last feature map (Chai et al., ECCV 2020): each position's
    # logits (the linear head applied before the global average pooling) against the image's label,
    # averaged, so every patch has to carry evidence of its own instead of a few deciding the
    # pooled logit. The image's logits, what is served and scored, are the positions' mean as
    # before (False: the pooled loss as before).
    position_loss: bool = False
    # The share of images shifted by up to 4 px with a black fill instead of a reflected one: a
    # re-framed upload has a border, and without it the detector reads any border as a fake's.
    border_p: float = 0.0
    # Seeds the initial weights, the batch order and the augmentations, never the split (that is
    # ``seed``): ensemble members differ in it and share their validation images. None: ``seed``.
    init_seed: int | None = None
    amp: str = "auto"
    # Full-size training: images are decoded at ``input_size`` square (multigen/full is stored at 224)
    # and trained on random ``crop``-pixel crops (0: the whole image, shifted by ``translate``); the
    # network is fully convolutional with global pooling, so it is scored on the whole image. With
    # probability ``scale_p`` a batch of crops is seen shrunk by a factor in [``scale_min``, 1], on both
    # labels, so how strongly an image was resampled before it reached us is not a label.
    input_size: int = 32
    resize: str = "stretch"
    interpolation: str = "bicubic"
    crop: int = 0
    # Passes over the training images per epoch: with small crops each pass sees another part of
    # every image, and the per-epoch scoring of whole images is paid once per ``repeats`` passes.
    repeats: int = 1
    # Score the calibration split every this many epochs (and after the last): scoring whole full-size
    # images can cost more than an epoch of small crops. The paper recipe needs it every epoch.
    calib_every: int = 1
    scale_p: float = 0.0
    scale_min: float = 0.5
    # Folders (a path part, e.g. a generator's folder) never trained on or calibrated on: their images
    # and the validation split's images of the other label are scored once, at the end, as "holdout"
    # (the leave-one-generator-out and leave-one-family-out protocol, ops/protocol.py).
    holdout: list[str] = field(default_factory=list)
    # A protocol fold: score the held-out folders only (no calibration or validation scoring, which a
    # fold does not report and which cost as much as its training on full-size images).
    holdout_only: bool = False
    # The content-only baseline: every image shrunk to this side and back before anything else, so no
    # generator trace survives and only content is left to learn (0: off).
    content_only: int = 0
    # Give every image whose file is not a JPEG one JPEG round trip at this quality (4:2:0) when it
    # is decoded: CIFAKE's files, both labels, are all quality-75 JPEGs and multigen/small's tiles are
    # all PNGs, so without it "never JPEG-compressed" marks the tiles, and a fold scores compression
    # history instead of a generator's trace (0: off).
    match_jpeg: int = 0
    # The share of training images, of both labels, swapped for a copy with the resampling history of
    # multigen/small's dcgan64-* tiles (bilinear up to twice the size, a 2x box filter back; then the
    # ``match_jpeg`` round trip, as the tiles had): most of those tiles are fakes, so without it "box
    # filtered" is a label (multigen's README asks for this control). 32x32 training only (no crop).
    resample_p: float = 0.0
    # Sources trained on in full and never split: more generators beside ``data``, whose split (and
    # so its validation images) stays what it was without them.
    train_only: list[str] = field(default_factory=list)
    # Full-size training (``crop`` > 0): sources of small images (CIFAKE, multigen/small) decoded at
    # ``crop`` pixels a side and mixed into every batch as windows, ``tile_share`` of it beside the
    # crops: generators that exist only as thumbnails still teach the window model their traces.
    # Trained on in full like ``train_only``; a ``holdout`` folder is held out of them too.
    tiles: list[str] = field(default_factory=list)
    tile_share: float = 0.25
    # Aligned fakes (``fakescope.models.recon``): a folder holding a reconstruction bank, and the share
    # of each batch's fakes replaced by training reals passed through one of its autoencoders (picked
    # per batch) before any other augmentation. The pair differs in an upsampling trace, not content.
    recon: str | None = None
    recon_p: float = 0.3
    # Most fakes were made larger than they reach us and shrunk on the way (multigen/full's originals:
    # shorter sides 128 to 5,663 px, median 512, all normalised to 224), which shrinks the decoder's
    # trace with them. Above 1, each batch's aligned fakes are made at a factor drawn log-uniformly
    # in [1, ``recon_scale``]: enlarged (bicubic), reconstructed, shrunk back (antialiased).
    recon_scale: float = 1.0
    # Cross-fitting: "k/K" trains without the k-th of K parts of the training split (parts fixed by
    # each image's name, so every run of a fold cuts them alike), and so can predict that part as if
    # unseen: out-of-fold predictions for ``bias_from``. Empty: the whole training split.
    cross_fit: str = ""
    # Product of experts (Clark et al., EMNLP 2019; He et al., 2019): checkpoints of a biased model,
    # for this data the content-only baseline, whose log-probabilities on each training image are
    # added to the model's logits in the loss. What content already explains costs the model little,
    # so its gradient goes to what content does not; the model alone is saved and scored (trained
    # without ``label_smoothing``, which would push it against the bias's surest images). Either one
    # checkpoint, or K trained with ``cross_fit`` 0/K ... K-1/K, each predicting its own left-out part
    # (a model's predictions on the images it trained on are overconfident).
    bias_from: list[str] = field(default_factory=list)
    # Which epoch's weights the run keeps: "last", or "calib_auc", the scored epoch (``calib_every``)
    # whose weights rank the calibration split best (a tie goes to the earlier). The calibration
    # split holds only what the run trains on, never validation or ``holdout``, so the choice sees
    # neither; the temperature is then fitted on the same split, which the choice has seen once.
    select_epoch: str = "last"

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.variant not in list_models():
            raise ValueError(f"unknown variant {self.variant!r}")
        if self.resume and self.init_from:
            raise ValueError("resume continues a run; init_from starts a new one from trained weights: pick one")
        if self.crop and self.crop > self.input_size:
            raise ValueError(f"crop ({self.crop}) must not exceed input_size ({self.input_size})")
        if self.holdout_only and not self.holdout:
            raise ValueError("holdout_only scores the held-out folders: name them in holdout")
        if self.scale_p and not self.crop:
            raise ValueError("scale_p shrinks crops: it needs crop")
        if not 0 <= self.gray_p <= 1:
            raise ValueError(f"gray_p is a share of the images, in [0, 1], got {self.gray_p}")
        if not 0 <= self.freq_mask_p <= 1:
            raise ValueError(f"freq_mask_p is a share of the images, in [0, 1], got {self.freq_mask_p}")
        if not 0 < self.freq_mask_ratio < 1:
            raise ValueError(f"freq_mask_ratio is a share of the coefficients, in (0, 1), got {self.freq_mask_ratio}")
        if not 0 <= self.folder_balance <= 1:
            raise ValueError(f"folder_balance is a power in [0, 1], got {self.folder_balance}")
        if self.tiles and not self.crop:
            raise ValueError("tiles are windows beside the crops of full-size images: they need crop")
        if self.tiles and not 0 < self.tile_share < 1:
            raise ValueError(f"tile_share must be in (0, 1), got {self.tile_share}")
        if self.recon and not 0 < self.recon_p <= 1:
            raise ValueError(f"recon_p must be in (0, 1], got {self.recon_p}")
        if self.recon_scale < 1:
            raise ValueError(f"recon_scale is a largest enlargement, at least 1, got {self.recon_scale}")
        if self.cross_fit:
            parse_cross_fit(self.cross_fit)
        if self.bias_from and (self.tiles or self.recon):
            raise ValueError("bias_from gives each training image its bias: tiles and recon change the batch's images")
        if self.group_dro < 0:
            raise ValueError(f"group_dro is a step, at least 0, got {self.group_dro}")
        if self.group_dro_start not in GROUP_DRO_STARTS:
            raise ValueError(f"group_dro_start must be one of {GROUP_DRO_STARTS}, got {self.group_dro_start!r}")
        if self.group_dro and (self.tiles or self.recon or self.bias_from):
            raise ValueError("group_dro weighs each training image by its folder: tiles, recon, bias_from change that")
        if self.sam < 0:
            raise ValueError(f"sam is a radius, at least 0, got {self.sam}")
        if self.sam and self.group_dro:
            raise ValueError("group_dro moves its weights with each loss: sam's second pass would move them twice")
        if self.position_loss and (self.group_dro or self.bias_from):
            raise ValueError(
                "position_loss is a plain cross-entropy at every position: not with group_dro or bias_from"
            )
        if self.select_epoch not in SELECT_EPOCH:
            raise ValueError(f"select_epoch must be one of {SELECT_EPOCH}, got {self.select_epoch!r}")


def parse_cross_fit(spec: str) -> tuple[int, int]:
    """``"k/K"`` -> ``(k, K)``, with 0 <= k < K and K >= 2."""
    k, sep, n = spec.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 0 <= int(k) < int(n) and int(n) >= 2):
        raise ValueError(f"cross_fit is 'k/K' with 0 <= k < K and K >= 2, got {spec!r}")
    return int(k), int(n)


def name_parts(names: list[str], parts: int) -> np.ndarray:
    """Each image's part of ``parts``, from a hash of its name: the same for every run and order."""
    return np.asarray([int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "big") % parts for n in names])


def _batch(
    images: torch.Tensor, idx: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, device: torch.device, flip: bool
) -> torch.Tensor:
    x = images[idx].to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - mean) / std
    if flip:
        mask = torch.rand(x.shape[0], 1, 1, 1, device=device) < 0.5
        x = torch.where(mask, x.flip(-1), x)
    return x.contiguous(memory_format=torch.channels_last)


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX512-BF16), where bf16 autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def use_bf16(amp: str, device: torch.device) -> bool:
    if amp not in ("auto", "on", "off"):
        raise ValueError(f"amp must be auto, on or off, got {amp!r}")
    if amp == "auto":
        return device.type == "cuda" or cpu_has_bf16_matmul()
    return amp == "on"


def resampled_copies(images: np.ndarray, jpeg_quality: int = 0) -> np.ndarray:
    """Each image bilinear to twice its size and 2x box-filtered back (the dcgan64 tiles' history), then
    given one JPEG round trip at ``jpeg_quality`` (0: none)."""
    out = np.empty_like(images)
    h, w = images.shape[1:3]
    for i in tqdm(range(len(images)), desc="resample", leave=False):
        im = Image.fromarray(images[i]).resize((2 * w, 2 * h), Image.Resampling.BILINEAR).reduce(2)
        out[i] = as_jpeg(np.asarray(im), jpeg_quality) if jpeg_quality else np.asarray(im)
    return out


def jpeg_copies(images: np.ndarray, seed: int, quality: tuple[int, int] = (60, 95)) -> np.ndarray:
    """Each image re-encoded once as JPEG at a random quality: the JPEG half of the degradations."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for i, q in enumerate(tqdm(rng.integers(quality[0], quality[1] + 1, len(images)), desc="jpeg", leave=False)):
        out[i] = as_jpeg(images[i], int(q))
    return out


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def degrade(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """One degradation of a ``(B, C, H, W)`` batch in [0, 1]: ``rescale`` (down then back up by a
    random factor in [0.5, 0.9]) or ``blur`` (Gaussian, sigma in [0.3, 1.2]); one draw per batch."""
    u = float(torch.rand(1, generator=gen))
    if kind == "rescale":
        h, w = x.shape[-2:]
        f = 0.5 + 0.4 * u
        small = F.interpolate(x, size=(max(1, round(h * f)), max(1, round(w * f))), mode="bicubic", antialias=True)
        return F.interpolate(small, size=(h, w), mode="bicubic").clamp_(0, 1)
    if kind == "blur":
        return _gaussian_blur(x, 0.3 + 0.9 * u)
    raise ValueError(f"unknown degradation {kind!r}")


def add_noise(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise on a ``p`` share of a ``(B, C, H, W)`` batch in [0, 1], each picked image with
    its own sigma in [0.005, 0.03]."""
    b = x.shape[0]
    sel = torch.rand(b, generator=gen) < p
    sigma = (0.005 + 0.025 * torch.rand(b, 1, 1, 1, generator=gen)) * sel.view(b, 1, 1, 1)
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype) * sigma
    return (x + noise).clamp_(0, 1)


# ITU-R BT.601 luma weights: what a JPEG encoder keeps at full resolution.
LUMA = (0.299, 0.587, 0.114)


def to_gray(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A ``p`` share of a ``(B, 3, H, W)`` batch in [0, 1] with each channel replaced by the luma."""
    sel = torch.rand(x.shape[0], generator=gen) < p
    if not bool(sel.any()):
        return x
    luma = torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    x = x.clone()
    x[sel] = (x[sel] * luma).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    return x


def frequency_mask(x: torch.Tensor, p: float, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """A ``p`` share of a ``(B, C, H, W)`` batch in [0, 1] with a random ``ratio`` of each picked image's
    2-D Fourier coefficients zeroed (the same bins in every channel) and the real part taken back.

    The DC coefficient (the image's mean) is never zeroed: without it half the pixels would clip
    at black, where the paper's 8-bit cast wraps them around. The real part of an unpaired zero
    halves that frequency's amplitude (and its conjugate twin's) instead of removing it.
    """
    b, _, h, w = x.shape
    sel = torch.rand(b, generator=gen) < p
    if not bool(sel.any()):
        return x
    n = int(sel.sum())
    # Each picked image's bins ranked by a random key: the lowest ``ratio`` share are zeroed.
    keys = torch.rand(n, h * w, generator=gen)
    keys[:, 0] = 2.0  # above every draw: DC is never among the zeroed
    cut = math.ceil(ratio * h * w)
    keep = torch.ones(n, h * w, dtype=torch.bool)
    keep.scatter_(1, keys.argsort(dim=1)[:, :cut], False)
    spectrum = torch.fft.fft2(x[sel].float()) * keep.view(n, 1, h, w)
    x = x.clone()
    x[sel] = torch.fft.ifft2(spectrum).real.clamp_(0, 1).to(x.dtype)
    return x


def translate_batch(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Shifts each image by up to ``pad`` pixels either way, reflect-padded (no black borders: a
    border would be a feature no real upload has)."""
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    out = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def crop_batch(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """An independent random ``size`` x ``size`` crop of each image of a ``(B, H, W, C)`` batch."""
    b, h, w, _ = x.shape
    dy = torch.randint(0, h - size + 1, (b,), generator=gen)
    dx = torch.randint(0, w - size + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(size))[:, :, None]
    cols = (dx[:, None] + torch.arange(size))[:, None, :]
    return x[torch.arange(b)[:, None, None], rows, cols]


@dataclass(frozen=True)
class Reconstruct:
    """Which images of a batch become aligned fakes (``mask``), and the bank that makes them."""

    bank: ReconBank
    mask: torch.Tensor
    scale: float = 1.0  # TrainConfig.recon_scale

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``x`` (``(B, 3, H, W)`` in [0, 1]) with its masked images reconstructed by one member, at
        one factor for the batch."""
        if not bool(self.mask.any()):
            return x
        member = int(torch.randint(0, len(self.bank.members), (1,), generator=gen))
        sel = x[self.mask]
        h, w = sel.shape[-2:]
        f = math.exp(math.log(self.scale) * float(torch.rand(1, generator=gen))) if self.scale > 1 else 1.0
        with torch.no_grad():
            if round(h * f) > h:
                big = F.interpolate(sel, size=(round(h * f), round(w * f)), mode="bicubic", align_corners=False)
                out = self.bank(big.clamp_(0, 1), member)
                out = F.interpolate(out, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
            else:
                out = self.bank(sel, member)
        x[self.mask] = out.clamp_(0, 1)
        return x


def scaled_crops(
    raw: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, recon: Reconstruct | None = None
) -> torch.Tensor:
    """``cfg.crop``-pixel crops of a ``(B, H, W, 3)`` uint8 batch as ``(B, 3, crop, crop)`` in [0, 1].

    With probability ``cfg.scale_p`` the batch is seen shrunk by one random factor in
    [``cfg.scale_min``, 1]: a region ``crop / factor`` pixels a side is cut and shrunk to ``crop``
    (antialiased), which is what shrinking the whole image and cropping would give, at the cost of the
    crops alone. ``recon`` makes its aligned fakes from the region before the shrink: a generator's
    output is resampled after it is made, like every other fake.
    """
    side = min(raw.shape[1], raw.shape[2])
    region = cfg.crop
    if cfg.scale_p > 0 and float(torch.rand(1, generator=gen)) < cfg.scale_p:
        f = cfg.scale_min + (1.0 - cfg.scale_min) * float(torch.rand(1, generator=gen))
        region = min(side, round(cfg.crop / f))
    x = crop_batch(raw, region, gen).permute(0, 3, 1, 2).float().div_(255.0)
    if recon is not None:
        x = recon(x, gen)
    if region != cfg.crop:
        x = F.interpolate(x, size=(cfg.crop, cfg.crop), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(0, 1)


def content_only(images: np.ndarray, side: int) -> np.ndarray:
    """Each ``(N, H, W, 3)`` uint8 image shrunk to ``side`` pixels a side and back (the content baseline)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    out = []
    for i in range(0, len(x), 256):
        small = F.interpolate(x[i : i + 256], size=(side, side), mode="area")
        out.append(F.interpolate(small, size=images.shape[1:3], mode="bilinear", align_corners=False))
    return torch.cat(out).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy().copy()


def black_border_shift(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Shifts each image of a ``(B, C, H, W)`` batch in [0, 1] by up to ``pad`` pixels either way,
    filling what comes in with black: the crop-and-pad a careless re-frame does."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="constant", value=0.0)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)


def train_batch(
    images: torch.Tensor,
    jpeg: torch.Tensor | None,
    idx: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    cfg: TrainConfig,
    gen: torch.Generator,
    recon: Reconstruct | None = None,
    resampled: torch.Tensor | None = None,
) -> torch.Tensor:
    """An augmented, normalised ``channels_last`` training batch (CPU; the caller moves it).

    ``recon``'s images are reconstructed first, the rest of the augmentation follows; the JPEG
    copies are of the photos, so an image to be reconstructed never takes one. ``resampled``: the
    images' ``resampled_copies``, a ``cfg.resample_p`` share of the batch taken from them.
    """
    raw = images[idx]
    robust = cfg.recipe == "fast" and cfg.robust_p > 0
    kinds = torch.randint(0, 3, (len(idx),), generator=gen)
    hit = torch.rand(len(idx), generator=gen) < (cfg.robust_p if robust else 0.0)
    swap = hit & (kinds == 2) if recon is None else hit & (kinds == 2) & ~recon.mask
    if resampled is not None and cfg.resample_p > 0:
        # Drawn only when on, so that runs without it keep their random stream (and --resume).
        history = torch.rand(len(idx), generator=gen) < cfg.resample_p
        if recon is not None:
            history &= ~recon.mask
        raw = raw.clone()
        raw[history] = resampled[idx[history]]
        swap &= ~history  # the copy's own JPEG is its history; the random-quality one would replace it
    if jpeg is not None and bool(swap.any()):
        raw = raw.clone()
        raw[swap] = jpeg[idx[swap]]
    if cfg.crop:
        x = scaled_crops(raw, cfg, gen, recon)
    else:
        x = raw.permute(0, 3, 1, 2).float().div_(255.0)
        if recon is not None:
            x = recon(x, gen)
    for k, kind in enumerate(("rescale", "blur")):
        sel = hit & (kinds == k)
        if bool(sel.any()):
            x[sel] = degrade(x[sel], kind, gen)
    if cfg.recipe == "fast" and cfg.noise_p > 0:
        x = add_noise(x, cfg.noise_p, gen)
    if cfg.recipe == "fast" and cfg.gray_p > 0:
        x = to_gray(x, cfg.gray_p, gen)
    if cfg.recipe == "fast" and cfg.freq_mask_p > 0:
        x = frequency_mask(x, cfg.freq_mask_p, cfg.freq_mask_ratio, gen)
    flip = torch.rand(len(idx), 1, 1, 1, generator=gen) < 0.5
    x = torch.where(flip, x.flip(-1), x)
    if cfg.recipe == "fast":
        x = translate_batch(x, cfg.translate, gen)
        if cfg.border_p > 0:
            sel = torch.rand(len(idx), generator=gen) < cfg.border_p
            if bool(sel.any()):
                x[sel] = black_border_shift(x[sel], 4, gen)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last)


def parse_readout(readout: str) -> float | None:
    """``readout``'s share of positions: None for "mean" (the served readout), Q for "topQ", Q in (0, 1]."""
    if readout == "mean":
        return None
    try:
        share = float(readout.removeprefix("top")) if readout.startswith("top") else math.nan
    except ValueError:
        share = math.nan
    if not 0 < share <= 1:
        raise ValueError(f"readout must be 'mean' or 'topQ' with Q in (0, 1] (e.g. top0.1), got {readout!r}")
    return share


def position_logits(model: Network, x: torch.Tensor) -> torch.Tensor:
    """The linear head applied at every position of the last feature map, ``(N, classes, H, W)``: the
    served logits are their mean (global average pooling commutes with a linear head; the head's
    dropout, off in the ``vgg`` variants, is skipped)."""
    head = model.get_classifier()
    return F.conv2d(model.forward_features(x), head.weight[:, :, None, None], head.bias)


def top_positions_logits(model: Network, x: torch.Tensor, share: float) -> torch.Tensor:
    """Logits from the ``share`` of positions with the most fake evidence (a protocol readout).

    The head is linear after global average pooling, so the served logits' fake-minus-real difference
    is the mean of that difference at every position of the last feature map; this averages only the
    top ``share`` of them (at least one). With share 1 it is the served readout's difference.
    """
    maps = position_logits(model, x).float()
    fake, real = LABELS.index("fake"), LABELS.index("real")
    diff = (maps[:, fake] - maps[:, real]).flatten(1)
    top = diff.topk(max(1, round(share * diff.shape[1])), dim=1).values.mean(1)
    out = top.new_zeros(len(top), len(LABELS))
    out[:, fake] = top
    return out


@torch.no_grad()
def predict_arrays(
    model: Network,
    images: np.ndarray,
    preprocess: Preprocess,
    device: torch.device,
    batch_size: int = 512,
    desc: str | None = None,
    readout: str = "mean",
) -> torch.Tensor:
    """Logits for ``(N, H, W, 3)`` uint8 images already at the input size (``readout``: ``parse_readout``)."""
    share = parse_readout(readout)
    model.eval()
    # The same activation memory per batch at any size: 512 thumbnails, or 10 images at 224x224 (a
    # batch of 512 of those held gigabytes in the first block alone).
    batch_size = max(1, min(batch_size, batch_size * 32 * 32 // (images.shape[1] * images.shape[2])))
    mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
    tensor = torch.from_numpy(images)
    out = []
    for i in tqdm(range(0, len(tensor), batch_size), desc=desc, leave=False, disable=desc is None):
        idx = torch.arange(i, min(i + batch_size, len(tensor)))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            x = _batch(tensor, idx, mean, std, device, flip=False)
            logits = model(x) if share is None else top_positions_logits(model, x, share)
            out.append(logits.float().cpu())
    return torch.cat(out)


def checkpoint_logits(path: str | Path, images: np.ndarray, names: list[str], device: torch.device) -> torch.Tensor:
    """A checkpoint's logits on named ``(N, H, W, 3)`` uint8 images at its input size, as it reads
    them (a content-only baseline sees them shrunk and blown back up).

    Kept beside its weights, keyed by the weights' hash and the names: a product fold and its control
    score the same held-out images with the same checkpoints, at minutes a pass on full-size images.
    """
    net, meta = load_checkpoint(path, device)
    if tuple(meta.preprocess.input_size) != tuple(images.shape[1:3]):
        raise ValueError(f"{path} reads {meta.preprocess.input_size} images, these are {images.shape[1:3]}")
    cache = _logits_cache(path, meta, names)
    if cache.exists():
        return torch.load(cache)
    side = meta.training.get("config", {}).get("content_only", 0)
    logits = predict_arrays(net, content_only(images, side) if side else images, meta.preprocess, device)
    torch.save(logits, cache)
    return logits


def checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The training config a checkpoint was trained with, read without loading its weights."""
    return json.loads((Path(path) / CONFIG_FILE).read_text()).get("training", {}).get("config", {})


def _logits_cache(path: str | Path, meta: CheckpointMeta, names: list[str]) -> Path:
    key = hashlib.sha256("\n".join([meta.training.get("weights_sha256", ""), *names]).encode()).hexdigest()
    return Path(path) / f"logits-{key[:16]}.pt"


def content_bias(
    checkpoints: list[str], images: np.ndarray, names: list[str], device: torch.device, out_of_fold: bool = True
) -> torch.Tensor:
    """A biased model's log-probabilities ``(N, 2)`` on named ``(N, H, W, 3)`` uint8 images.

    ``out_of_fold`` (images some of the checkpoints trained on): a cross-fitted checkpoint predicts
    only the part it left out, one that is not predicts every image, and each image must get exactly
    one prediction. Otherwise (images none of them trained on) their log-probabilities are averaged.
    """
    out = torch.zeros(len(images), len(LABELS))
    covered = np.zeros(len(images), dtype=int)
    for path in checkpoints:
        spec = checkpoint_config(path).get("cross_fit", "")
        rows = np.arange(len(images))
        if out_of_fold and spec:
            k, parts = parse_cross_fit(spec)
            rows = np.flatnonzero(name_parts(names, parts) == k)
        logits = checkpoint_logits(path, images[rows], [names[i] for i in rows], device)
        logp = torch.log_softmax(logits, dim=1)
        if not out_of_fold:
            out += logp / len(checkpoints)
        else:
            out[torch.from_numpy(rows)] = logp
            covered[rows] += 1
    if out_of_fold and not (covered == 1).all():
        raise ValueError(
            f"bias_from must predict each training image once: {int((covered == 0).sum())} have no prediction, "
            f"{int((covered > 1).sum())} more than one (cross-fitted checkpoints 0/K ... K-1/K, or one checkpoint)"
        )
    return out


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    if cfg.recipe == "paper":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr or 1e-3)
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=0.1, patience=5, min_lr=1e-6, threshold=1e-3
        )
        return opt, sched
    # No weight decay on norms and biases: decaying them only fights BatchNorm.
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr or 3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr or 3e-3, total_steps=steps, pct_start=0.15, div_factor=20, final_div_factor=200
    )
    return opt, sched


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_p: list[torch.Tensor] = list(ema.parameters())
    torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers(), strict=True):
        if eb.dtype.is_floating_point:
            eb.lerp_(mb, 1.0 - decay)
        else:
            eb.copy_(mb)


@dataclass
class Tiles:
    """Small images trained on as windows beside a full-size run's crops (``TrainConfig.tiles``)."""

    images: torch.Tensor
    jpeg: torch.Tensor | None
    labels: torch.Tensor
    cfg: TrainConfig  # the run's, as for images already cut to the window size

    def extend(
        self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The crops' batch ``(x, y)`` with tiles added, ``tile_share`` of the result."""
        n = max(1, round(len(x) * self.cfg.tile_share / (1 - self.cfg.tile_share)))
        idx = torch.randint(0, len(self.images), (n,), generator=gen)
        tx = train_batch(self.images, self.jpeg, idx, mean, std, self.cfg, gen)
        return torch.cat([x, tx]).contiguous(memory_format=torch.channels_last), torch.cat([y, self.labels[idx]])


def _load_tiles(cfg: TrainConfig, seed: int) -> Tiles | None:
    if not cfg.tiles:
        return None
    data = load_labelled(cfg.tiles, size=(cfg.crop, cfg.crop), jpeg_quality=cfg.match_jpeg)
    keep = ~held_out(data.names, cfg.holdout) if cfg.holdout else np.ones(len(data), dtype=bool)
    if cfg.content_only:
        data = LabelledArray(
            content_only(data.images, cfg.content_only * cfg.crop // cfg.input_size or 1), data.labels, data.names
        )
    images = data.images[keep]
    logger.info("%d tiles of %s (%d held out)", len(images), cfg.tiles, int((~keep).sum()))
    jpeg = torch.from_numpy(jpeg_copies(images, seed)) if cfg.recipe == "fast" and cfg.robust_p > 0 else None
    # Already window-sized: no crop, no shrink; the rest of the augmentation is the run's.
    as_windows = replace(cfg, crop=0, scale_p=0.0, tiles=[], holdout=[], holdout_only=False)
    return Tiles(torch.from_numpy(images), jpeg, torch.from_numpy(data.labels[keep]), as_windows)


def folder_index(names: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The images' folders (a generator's for fakes, a source's for reals), each image's position in
    them and each folder's number of images."""
    folders, inverse, counts = np.unique([n.rsplit("/", 1)[0] for n in names], return_inverse=True, return_counts=True)
    return [str(f) for f in folders], inverse, counts


def folder_weights(names: list[str], labels: np.ndarray, power: float) -> np.ndarray:
    """Each image's draw weight, ``n ** -power`` with ``n`` the images of its folder, scaled so each
    label's weights sum to its count (``TrainConfig.folder_balance``)."""
    _, inverse, counts = folder_index(names)
    weights = counts[inverse].astype(np.float64) ** -power
    for label in np.unique(labels):
        mask = labels == label
        weights[mask] *= mask.sum() / weights[mask].sum()
    return weights


@dataclass
class GroupDRO:
    """Online group DRO (Sagawa et al. 2020, "Distributionally robust neural networks") over the
    training folders (``TrainConfig.group_dro``): each folder's weight ``q`` grows as
    ``exp(step * its mean loss)`` batch after batch, and the loss is each label's present folders'
    mean losses weighted by ``q``, the label keeping its share of the batch. The folders the model
    still gets wrong weigh more, and no folder is ever ignored."""

    folders: list[str]
    groups: torch.Tensor  # each training image's folder
    folder_labels: torch.Tensor  # each folder's label (a folder holds one)
    step: float
    q: torch.Tensor  # the folders' weights; each label's sum to 1
    start: torch.Tensor  # where they started

    @classmethod
    def build(cls, names: list[str], labels: np.ndarray, step: float, start: str = "even") -> GroupDRO:
        """``start``: "even" weights or in proportion to the folders' images (``GROUP_DRO_STARTS``)."""
        folders, inverse, counts = folder_index(names)
        folder_labels = np.full(len(folders), -1)
        for g, label in zip(inverse, labels, strict=True):
            if folder_labels[g] not in (-1, label):
                raise ValueError(f"group DRO needs one label a folder; {folders[g]} holds both")
            folder_labels[g] = label
        q = torch.from_numpy((counts if start == "sizes" else np.ones_like(counts)).astype(np.float64))
        dro = cls(folders, torch.from_numpy(inverse), torch.from_numpy(folder_labels), step, q, q)
        dro.q = dro.start = dro._per_label(q)
        return dro

    def _per_label(self, q: torch.Tensor) -> torch.Tensor:
        """``q`` scaled so each label's folders' weights sum to 1."""
        totals = torch.zeros(int(self.folder_labels.max()) + 1, dtype=q.dtype).index_add_(0, self.folder_labels, q)
        return q / totals[self.folder_labels]

    def loss(self, per_image: torch.Tensor, idx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's robust loss from its images' losses (``idx`` their training positions), after
        updating the weights with it."""
        g = self.groups[idx].to(per_image.device)
        n = len(self.folders)
        counts = torch.zeros(n, device=per_image.device).index_add_(0, g, torch.ones_like(per_image))
        sums = torch.zeros(n, device=per_image.device).index_add_(0, g, per_image)
        present = counts > 0
        mean = sums / counts.clamp(min=1)
        with torch.no_grad():
            step = torch.where(present.cpu(), self.step * mean.detach().double().cpu(), 0.0)
            self.q = self._per_label(self.q * torch.exp(step))
        q = self.q.to(per_image.device, per_image.dtype) * present
        labels = self.folder_labels.to(per_image.device)
        total = per_image.new_zeros(())
        for label in torch.unique(y):
            mine = labels == label
            share = (y == label).float().mean()
            total = total + share * (q[mine] * mean[mine]).sum() / q[mine].sum()
        return total

    def top(self, k: int = 3) -> str:
        """The ``k`` folders most weighed up since the start, for the epoch's log line."""
        ratio = self.q / self.start
        order = torch.argsort(ratio, descending=True)[:k]
        return ", ".join(f"{self.folders[i]} x{float(ratio[i]):.2f}" for i in order)


def held_out(names: list[str], folders: list[str]) -> np.ndarray:
    """A boolean mask of the images under any of ``folders``: a folder name (``began``) or a run of
    folders (``cifake_train_subset/FAKE``) anywhere in the image's path."""
    wanted = [f"/{f.strip('/')}/" for f in folders]
    return np.asarray([any(w in f"/{n.rsplit('/', 1)[0]}/" for w in wanted) for n in names], dtype=bool)


@dataclass
class _Data:
    """The labelled images of a run and which of them it trains on, scores on and holds out."""

    data: LabelledArray
    split: Split
    train_idx: np.ndarray
    # A proxy run's dev split (``dev_size``), carved out of training; empty otherwise.
    dev_idx: np.ndarray
    # The ``holdout`` folders and the validation images of the other label to score them against.
    holdout_idx: np.ndarray


def _read(folders: list[str], cfg: TrainConfig) -> LabelledArray:
    data = load_labelled(folders, size=(cfg.input_size, cfg.input_size), jpeg_quality=cfg.match_jpeg)
    if cfg.content_only:
        data = LabelledArray(content_only(data.images, cfg.content_only), data.labels, data.names)
    return data


def _load_data(cfg: TrainConfig) -> _Data:
    """Step 1: the images and the split (``train_only`` sources trained on in full, ``holdout``
    folders out of every part, then the dev split and ``max_train`` subset taken from training)."""
    data = _read(cfg.data, cfg)
    split = make_split(data.names, data.labels, cfg.val_size, cfg.calib_size, cfg.seed)
    if cfg.train_only:
        more = _read(cfg.train_only, cfg)
        added = np.arange(len(data), len(data) + len(more))
        images, labels = np.concatenate([data.images, more.images]), np.concatenate([data.labels, more.labels])
        data = LabelledArray(images, labels, data.names + more.names)
        split = Split(np.concatenate([split.train, added]), split.val, split.calib)
    holdout_idx = split.val[:0]
    if cfg.holdout:
        held_mask = held_out(data.names, cfg.holdout)
        held_labels = set(data.labels[held_mask].tolist())
        val_other = split.val[~np.isin(data.labels[split.val], list(held_labels))]
        holdout_idx = np.sort(np.concatenate([np.flatnonzero(held_mask), val_other]))
        keep = ~held_mask[split.train]
        split = Split(split.train[keep], split.val[~held_mask[split.val]], split.calib[~held_mask[split.calib]])
    train_idx, dev_idx = split.train, split.train[:0]
    if cfg.max_train is not None or cfg.dev_size:
        order = np.random.default_rng(cfg.seed + 1).permutation(len(split.train))
        dev_idx = np.sort(split.train[order[: cfg.dev_size]])
        rest = order[cfg.dev_size :]
        train_idx = np.sort(split.train[rest if cfg.max_train is None else rest[: cfg.max_train]])
    if cfg.cross_fit:
        k, parts = parse_cross_fit(cfg.cross_fit)
        train_idx = train_idx[name_parts([data.names[i] for i in train_idx], parts) != k]
    logger.info("%d images: train %d, val %d, calib %d", len(data), len(train_idx), len(split.val), len(split.calib))
    return _Data(data, split, train_idx, dev_idx, holdout_idx)


def _preprocess(cfg: TrainConfig, train_images: np.ndarray) -> Preprocess:
    """The preprocessing saved with the weights: the training images' own mean and std."""
    mean = tuple(float(v) for v in train_images.reshape(-1, 3).mean(0) / 255.0)
    std = tuple(float(v) for v in train_images.reshape(-1, 3).std(0) / 255.0)
    size = (cfg.input_size, cfg.input_size)
    return Preprocess(input_size=size, mean=mean, std=std, interpolation=cfg.interpolation, resize=cfg.resize)  # type: ignore[arg-type]


def _build_model(cfg: TrainConfig, device: torch.device) -> DetectorNet:
    """Step 2: the variant with random weights, or ``init_from``'s."""
    model = create_model(cfg.variant, **cfg.model_overrides).to(device).to(memory_format=torch.channels_last)
    if cfg.init_from:
        # A warm restart: trained weights, a fresh optimiser and schedule. The split is the same
        # (same seed and sizes), so the new run still never sees its validation images.
        start, start_meta = load_checkpoint(cfg.init_from, device)
        if start_meta.variant != cfg.variant:
            raise ValueError(f"--init-from holds {start_meta.variant}, not {cfg.variant}")
        model.load_state_dict(start.state_dict())
        logger.info("initialised from %s", cfg.init_from)
    return model


@dataclass
class _Run:
    """What an epoch changes and a resume restores: weights, EMA, optimiser, schedule, the
    augmentation generator, the record and the counters."""

    model: DetectorNet
    ema: DetectorNet | None
    opt: torch.optim.Optimizer
    sched: Any
    gen: torch.Generator
    history: list[dict[str, float]] = field(default_factory=list)
    epoch: int = 0
    steps: int = 0
    # With ``select_epoch``: the chosen epoch so far, its calibration ROC-AUC and its saved weights.
    best_epoch: int = 0
    best_score: float = -math.inf
    best_weights: dict[str, torch.Tensor] | None = None
    dro: GroupDRO | None = None  # with ``group_dro``: its folders' weights move with every batch

    @property
    def saved(self) -> DetectorNet:
        """What gets evaluated and saved: the EMA when there is one."""
        return self.ema if self.ema is not None else self.model

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "history": self.history,
            "epoch": self.epoch,
            "steps": self.steps,
            "rng": torch.get_rng_state(),
            "gen": self.gen.get_state(),
            "best": {"epoch": self.best_epoch, "score": self.best_score, "weights": self.best_weights},
            "group_dro": self.dro.q if self.dro is not None else None,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.history, self.epoch, self.steps = state["history"], state["epoch"], state.get("steps", 0)
        torch.set_rng_state(state["rng"])
        self.gen.set_state(state["gen"])
        best = state.get("best") or {}
        self.best_epoch = best.get("epoch", 0)
        self.best_score = best.get("score", -math.inf)
        self.best_weights = best.get("weights")
        if self.dro is not None:
            if state.get("group_dro") is None:
                raise ValueError("the run being resumed trained without group DRO: resume it as it started")
            self.dro.q = state["group_dro"].cpu()

    def consider(self, epoch: int, score: float) -> None:
        """Keeps the saved weights as the chosen epoch's if they score better than the last choice."""
        if score > self.best_score:
            self.best_epoch, self.best_score = epoch, score
            self.best_weights = {k: v.detach().clone() for k, v in self.saved.state_dict().items()}

    def restore_best(self) -> None:
        """Puts the chosen epoch's weights back into the saved network."""
        if self.best_weights is None:
            raise RuntimeError("no epoch was scored on the calibration split: nothing to select from")
        self.saved.load_state_dict(self.best_weights)


def _start_run(
    cfg: TrainConfig,
    model: DetectorNet,
    total_steps: int,
    seed: int,
    state_path: Path,
    device: torch.device,
    dro: GroupDRO | None = None,
) -> _Run:
    """Step 3: optimiser and schedule, the EMA, group DRO's weights, and with ``resume`` the state of
    the last epoch."""
    opt, sched = _optimizer(model, cfg, total_steps)
    # The EMA is what gets evaluated and saved: a running average of the weights generalises better
    # than the last step's, and its BN statistics are averaged along with them.
    ema = copy.deepcopy(model) if cfg.recipe == "fast" and cfg.ema_decay > 0 else None
    run = _Run(model, ema, opt, sched, torch.Generator().manual_seed(seed), dro=dro)
    if cfg.resume and state_path.exists():
        run.restore(torch.load(state_path, map_location=device, weights_only=False))
        logger.info("resumed from epoch %d", run.epoch)
    return run


@dataclass
class _Batches:
    """The training images as tensors (and their JPEG copies and tiles), cut into augmented batches."""

    images: torch.Tensor
    jpeg: torch.Tensor | None
    labels: torch.Tensor
    tiles: Tiles | None
    mean: torch.Tensor
    std: torch.Tensor
    recon: ReconBank | None = None
    resampled: torch.Tensor | None = None  # ``resampled_copies`` of the images, with ``resample_p``
    bias: torch.Tensor | None = None  # ``bias_from``'s log-probabilities on each image, with it
    weights: torch.Tensor | None = None  # ``folder_weights`` of the images, with ``folder_balance``
    # The training reals' positions, the slots aligned fakes are drawn from (with ``recon``).
    reals: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.reals = torch.nonzero(self.labels == 0).flatten()

    @classmethod
    def build(cls, cfg: TrainConfig, d: _Data, preprocess: Preprocess, seed: int, device: torch.device) -> _Batches:
        train_images = d.data.images[d.train_idx]
        jpeg = None
        if cfg.recipe == "fast" and cfg.robust_p > 0:
            jpeg = torch.from_numpy(jpeg_copies(train_images, seed))
        labels = torch.from_numpy(d.data.labels[d.train_idx])
        tiles = _load_tiles(cfg, seed)
        mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
        std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
        recon = load_recon(cfg.recon) if cfg.recon else None
        resampled = None
        if cfg.resample_p > 0:
            if cfg.crop:
                raise ValueError("resample_p gives 32x32 images the dcgan64 tiles' history: it needs crop=0")
            resampled = torch.from_numpy(resampled_copies(train_images, cfg.match_jpeg))
        bias = None
        if cfg.bias_from:
            bias = content_bias(cfg.bias_from, train_images, [d.data.names[i] for i in d.train_idx], device)
        weights = None
        if cfg.folder_balance:
            names = [d.data.names[i] for i in d.train_idx]
            weights = torch.from_numpy(folder_weights(names, d.data.labels[d.train_idx], cfg.folder_balance))
        return cls(torch.from_numpy(train_images), jpeg, labels, tiles, mean, std, recon, resampled, bias, weights)

    def order(self, repeats: int) -> torch.Tensor:
        """One epoch's image order: ``repeats`` permutations, or as many draws by ``weights``."""
        if self.weights is None:
            return torch.cat([torch.randperm(len(self.images)) for _ in range(repeats)])
        return torch.multinomial(self.weights, len(self.images) * repeats, replacement=True)

    def batch(self, idx: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.labels[idx]
        recon = None
        if self.recon is not None:
            idx, recon = self._aligned_fakes(idx, y, cfg, gen)
        x = train_batch(self.images, self.jpeg, idx, self.mean, self.std, cfg, gen, recon, self.resampled)
        if self.tiles is not None:
            x, y = self.tiles.extend(x, y, self.mean, self.std, gen)
        return x, y

    def _aligned_fakes(
        self, idx: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
    ) -> tuple[torch.Tensor, Reconstruct]:
        """``idx`` with a ``cfg.recon_p`` share of its fakes swapped for random training reals, and the
        mask of those slots: their label stays fake, and the batch keeps its balance of labels."""
        assert self.recon is not None
        mask = (y == 1) & (torch.rand(len(idx), generator=gen) < cfg.recon_p)
        idx = idx.clone()
        idx[mask] = self.reals[torch.randint(0, len(self.reals), (int(mask.sum()),), generator=gen)]
        return idx, Reconstruct(self.recon, mask, cfg.recon_scale)


@contextlib.contextmanager
def _batchnorm_stats_frozen(model: torch.nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise by the batch as in training but leave their running statistics be."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum


def sharpness_aware_grad(model: torch.nn.Module, rho: float, loss_at: Callable[[], torch.Tensor]) -> None:
    """Replace the gradients in ``model`` (those of the batch's loss at the weights w) by the gradient
    of ``loss_at()`` at w + rho * g / |g| (Foret et al. 2021); the weights are w again on return."""
    pairs = [(p, g) for p in model.parameters() if (g := p.grad) is not None]
    scale = rho / (
        float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for _, g in pairs]))) + 1e-12
    )
    moves = []
    with torch.no_grad():
        for p, g in pairs:
            move = g * scale
            p.add_(move)
            moves.append(move)
    model.zero_grad(set_to_none=True)
    with _batchnorm_stats_frozen(model):
        loss_at().backward()
    with torch.no_grad():
        for (p, _), move in zip(pairs, moves, strict=True):
            p.sub_(move)


def _forward(model: Network, x: torch.Tensor, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch's image logits and, with ``cfg.position_loss``, the logits at every position
    (``position_logits``), whose mean the image logits then are."""
    if not cfg.position_loss:
        return model(x), None
    maps = position_logits(model, x)
    return maps.mean((2, 3)), maps


def _position_loss(maps: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Cross-entropy at every position of ``maps`` ``(N, classes, H, W)`` against its image's label, averaged."""
    targets = y[:, None, None].expand(-1, maps.shape[2], maps.shape[3])
    return F.cross_entropy(maps.float(), targets, label_smoothing=cfg.label_smoothing)


def _plain_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    batches: _Batches,
    cfg: TrainConfig,
    device: torch.device,
    maps: torch.Tensor | None = None,
) -> torch.Tensor:
    """The batch's loss without group DRO: cross-entropy (at every position with ``maps``), or against
    the content bias if there is one."""
    if maps is not None:
        return _position_loss(maps, y, cfg)
    if batches.bias is None:
        return F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    # The product of experts: the model's logits plus the bias's log-probabilities. Without label
    # smoothing: a smoothed target is less sure than a confident bias, so on the images content
    # explains best it would teach the model the opposite of their labels.
    return F.cross_entropy(logits.float() + batches.bias[idx].to(device), y)


def _train_epoch(
    run: _Run, batches: _Batches, cfg: TrainConfig, device: torch.device, steps: int, bf16: bool
) -> dict[str, float]:
    """Step 4: one pass of ``steps`` batches; returns the epoch's record (loss, accuracy, speed)."""
    run.model.train()
    perm = batches.order(cfg.repeats)
    t0, seen, loss_sum, correct = time.time(), 0, 0.0, 0
    bar = tqdm(range(steps), desc=f"epoch {run.epoch + 1}/{cfg.epochs}", unit="batch")
    for step in bar:
        idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x, y = batches.batch(idx, cfg, run.gen)
        x, y = x.to(device, non_blocking=True), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, maps = _forward(run.model, x, cfg)
        if run.dro is not None:
            per_image = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing, reduction="none")
            loss = run.dro.loss(per_image, idx, y)
        else:
            loss = _plain_loss(logits, y, idx, batches, cfg, device, maps)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.sam:

            def loss_at(x: torch.Tensor = x, y: torch.Tensor = y, idx: torch.Tensor = idx) -> torch.Tensor:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    moved, moved_maps = _forward(run.model, x, cfg)
                return _plain_loss(moved, y, idx, batches, cfg, device, moved_maps)

            sharpness_aware_grad(run.model, cfg.sam, loss_at)
        run.opt.step()
        if cfg.recipe == "fast":
            run.sched.step()
        run.steps += 1
        if run.ema is not None:
            _ema_update(run.ema, run.model, min(cfg.ema_decay, (1 + run.steps) / (10 + run.steps)))
        seen += len(idx)
        loss_sum += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
    seconds = time.time() - t0
    return {
        "epoch": run.epoch + 1,
        "train_loss": loss_sum / seen,
        "train_acc": correct / seen,
        "lr": run.opt.param_groups[0]["lr"],
        "seconds": seconds,
        "train_images_per_s": seen / seconds,
    }


def _score_on_calibration(
    rec: dict[str, float], run: _Run, calib: LabelledArray, preprocess: Preprocess, device: torch.device
) -> None:
    """The per-epoch score, on the calibration split: validation stays unseen until the end."""
    calib_logits = predict_arrays(run.saved, calib.images, preprocess, device)
    rec["calib_loss"] = float(F.cross_entropy(calib_logits, torch.from_numpy(calib.labels)))
    rec["calib_acc"] = float((calib_logits.argmax(1).numpy() == calib.labels).mean())
    rec["calib_auc"] = roc_auc(calib.labels, torch.softmax(calib_logits, dim=1)[:, LABELS.index("fake")].numpy())


def _report_epoch(rec: dict[str, float]) -> None:
    logger.info("epoch %d: %s", rec["epoch"], rec)
    calib_txt = f"calib_acc {rec['calib_acc']:.4f} calib_loss {rec['calib_loss']:.4f} " if "calib_acc" in rec else ""
    calib_txt += f"calib_auc {rec['calib_auc']:.4f} " if "calib_auc" in rec else ""
    tqdm.write(
        f"epoch {rec['epoch']}: train_acc {rec['train_acc']:.4f} {calib_txt}"
        f"({rec['seconds']:.0f}s, {rec['train_images_per_s']:.0f} img/s)"
    )


def _meta(
    cfg: TrainConfig,
    run: _Run,
    d: _Data,
    preprocess: Preprocess,
    metrics: dict[str, Any],
    temperature: float = 1.0,
) -> CheckpointMeta:
    """What is saved beside the weights: architecture, preprocessing, the run's config, split and record."""
    return CheckpointMeta(
        variant=cfg.variant,
        arch=run.model.cfg,
        preprocess=preprocess,
        labels=LABELS,
        temperature=temperature,
        training={
            "config": asdict(cfg),
            "split": {
                "seed": cfg.seed,
                "train": len(d.train_idx),
                "val": len(d.split.val),
                "calib": len(d.split.calib),
                "val_fingerprint": d.split.fingerprint(d.data.names),
            },
            "history": run.history,
            "train_seconds": sum(h["seconds"] for h in run.history),
            # The same recipe and seed differ by up to 0.02 a fold between bf16 and fp32 machines.
            "precision": "bf16" if use_bf16(cfg.amp, torch.device(resolve_device(cfg.device))) else "fp32",
        },
        metrics=metrics,
    )


def _fake_probability(
    model: Network,
    part: LabelledArray,
    preprocess: Preprocess,
    device: torch.device,
    temperature: float,
    readout: str = "mean",
) -> np.ndarray:
    logits = predict_arrays(model, part.images, preprocess, device, readout=readout)
    return torch.softmax(logits / temperature, dim=1)[:, LABELS.index("fake")].numpy()


def _final_metrics(
    cfg: TrainConfig, run: _Run, d: _Data, preprocess: Preprocess, device: torch.device
) -> tuple[dict[str, Any], float]:
    """Step 5: the temperature fitted on the calibration split, then the scores on validation (or a
    proxy run's dev split) and the held-out folders: the calibration and scored images never overlap."""
    calib = d.data.subset(d.split.calib)
    temperature = fit_temperature(
        predict_arrays(run.saved, calib.images, preprocess, device), torch.from_numpy(calib.labels)
    )
    # A proxy run (dev_size > 0) is scored on its dev split: choices made from it never see val.
    name, part = ("dev", d.dev_idx) if cfg.dev_size else ("validation", d.split.val)
    held = d.data.subset(part)
    metrics = {
        name: binary_metrics(held.labels, _fake_probability(run.saved, held, preprocess, device, temperature)),
        "temperature": temperature,
    }
    if len(d.holdout_idx):
        metrics["holdout"] = _holdout_metrics(cfg, run, d, preprocess, device, temperature)[0]
    return metrics, temperature


def _holdout_metrics(
    cfg: TrainConfig, run: _Run, d: _Data, preprocess: Preprocess, device: torch.device, temperature: float
) -> tuple[dict[str, Any], torch.Tensor]:
    """The held-out folders' scores, and the logits they came from (at temperature 1)."""
    hold = d.data.subset(d.holdout_idx)
    logits = predict_arrays(run.saved, hold.images, preprocess, device)
    fake_prob = torch.softmax(logits / temperature, dim=1)[:, LABELS.index("fake")].numpy()
    return {"folders": cfg.holdout, **binary_metrics(hold.labels, fake_prob)}, logits


def holdout_set(cfg: TrainConfig) -> LabelledArray:
    """``cfg``'s held-out folders and the validation images of the other label they are scored
    against, as a ``holdout_only`` run splits them."""
    if not cfg.holdout:
        raise ValueError("a held-out set needs the held-out folders: name them in holdout")
    d = _load_data(cfg)
    return d.data.subset(d.holdout_idx)


def score_holdout(cfg: TrainConfig, checkpoint: str | Path, readout: str = "mean") -> dict[str, Any]:
    """A trained checkpoint's scores on ``cfg``'s held-out folders, as a ``holdout_only`` run reports
    them: the folders against the validation images of the other label, at temperature 1.

    For a checkpoint ``cfg`` did not train, such as an ensemble of fold checkpoints that share its
    split: ``cfg`` gives the images and the split, the checkpoint its own preprocessing. ``readout``:
    how the feature map becomes logits (``parse_readout``; the served one is "mean").
    """
    device = torch.device(resolve_device(cfg.device))
    hold = holdout_set(cfg)
    net, meta = load_checkpoint(checkpoint, device)
    return {
        "folders": cfg.holdout,
        **binary_metrics(hold.labels, _fake_probability(net, hold, meta.preprocess, device, 1.0, readout)),
    }


def score_holdout_with_bias(cfg: TrainConfig, checkpoint: str | Path) -> dict[str, Any]:
    """A product-of-experts fold's other two readouts on ``cfg``'s held-out set: the biased model
    (``cfg.bias_from``, averaged) alone, and the product of both experts (the sum of their
    log-probabilities). ``score_holdout`` gives the model alone."""
    if not cfg.bias_from:
        raise ValueError("scoring with a bias needs bias_from")
    device = torch.device(resolve_device(cfg.device))
    hold = holdout_set(cfg)
    model = torch.log_softmax(checkpoint_logits(checkpoint, hold.images, hold.names, device), dim=1)
    bias = content_bias(cfg.bias_from, hold.images, hold.names, device, out_of_fold=False)
    fake = LABELS.index("fake")
    return {
        "holdout_bias": {"folders": cfg.holdout, **binary_metrics(hold.labels, bias.exp()[:, fake].numpy())},
        "holdout_product": {
            "folders": cfg.holdout,
            **binary_metrics(hold.labels, torch.softmax(model + bias, dim=1)[:, fake].numpy()),
        },
    }


def train(cfg: TrainConfig) -> Path:
    """Trains, calibrates and writes a checkpoint folder at ``cfg.out``; returns it.

    In steps: the data and its split, the model, the optimiser and schedule (or the state a resume
    continues from), the epochs (each saved as it ends), and the final calibration and scores.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(resolve_device(cfg.device))
    init_seed = cfg.seed if cfg.init_seed is None else cfg.init_seed
    random.seed(init_seed)
    np.random.seed(init_seed)
    torch.manual_seed(init_seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    d = _load_data(cfg)
    preprocess = _preprocess(cfg, d.data.images[d.train_idx])
    model = _build_model(cfg, device)
    steps_per_epoch = math.ceil(len(d.train_idx) * cfg.repeats / cfg.batch_size)
    dro = None
    if cfg.group_dro:
        names = [d.data.names[i] for i in d.train_idx]
        dro = GroupDRO.build(names, d.data.labels[d.train_idx], cfg.group_dro, cfg.group_dro_start)
    run = _start_run(cfg, model, steps_per_epoch * cfg.epochs, init_seed, out / STATE_FILE, device, dro)
    bf16 = use_bf16(cfg.amp, device)
    batches = _Batches.build(cfg, d, preprocess, init_seed, device)
    calib = d.data.subset(d.split.calib)

    last_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after)
    while run.epoch < last_epoch:
        rec = _train_epoch(run, batches, cfg, device, steps_per_epoch, bf16)
        scored = cfg.recipe == "paper" or rec["epoch"] % cfg.calib_every == 0 or rec["epoch"] == cfg.epochs
        if scored and (not cfg.holdout_only or cfg.select_epoch != "last"):
            _score_on_calibration(rec, run, calib, preprocess, device)
            if cfg.recipe == "paper":
                run.sched.step(rec["calib_loss"])
            if cfg.select_epoch == "calib_auc":
                run.consider(int(rec["epoch"]), rec["calib_auc"])
        run.history.append(rec)
        run.epoch += 1
        _report_epoch(rec)
        if run.dro is not None:
            logger.info("group DRO's heaviest folders: %s", run.dro.top())
        save_checkpoint(out, run.saved, _meta(cfg, run, d, preprocess, {}))
        torch.save(run.state(), out / STATE_FILE)

    if last_epoch < cfg.epochs:
        logger.info("stopped after epoch %d of %d; continue with resume", last_epoch, cfg.epochs)
        return out
    selected: dict[str, Any] = {}
    if cfg.select_epoch != "last":
        selected = {"selected_epoch": run.best_epoch, "selected_calib_auc": run.best_score}
        if cfg.holdout_only and run.best_epoch != cfg.epochs:
            # The last epoch's weights on the same held-out images: the run without the choice.
            selected["holdout_last"] = _holdout_metrics(cfg, run, d, preprocess, device, 1.0)[0]
        run.restore_best()
        logger.info("selected epoch %d of %d (calibration ROC-AUC %.4f)", run.best_epoch, cfg.epochs, run.best_score)
    if cfg.holdout_only:
        # Accuracy at 0.5 needs no temperature: scaling two logits never changes which is larger.
        fold, logits = _holdout_metrics(cfg, run, d, preprocess, device, 1.0)
        meta = _meta(cfg, run, d, preprocess, {"holdout": fold, **selected})
        save_checkpoint(out, run.saved, meta)
        names = d.data.subset(d.holdout_idx).names
        torch.save(logits, _logits_cache(out, meta, names))  # what checkpoint_logits would compute
        logger.info("holdout: %s", fold)
        return out
    metrics, temperature = _final_metrics(cfg, run, d, preprocess, device)
    metrics.update(selected)
    save_checkpoint(out, run.saved, _meta(cfg, run, d, preprocess, metrics, temperature))
    logger.info("validation: %s", metrics)
    return out
