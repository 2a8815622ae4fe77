"""The detector's network: a CNN backbone (ResNet bottleneck, basic or plain VGG blocks), optionally
with a frequency-space branch merged in.

One class, :class:`DetectorNet`, builds every registered variant: FreqNet-ResNet-50 and its
compact forms, and the plain VGGs without any frequency branch that the ablation kept (the shipped
``vgg3_wide`` is one). Its old name, ``FreqNetResNet``, stays as an alias.

The frequency branch follows FreqNet (Tan et al., "Frequency-Aware Deepfake Detection", AAAI 2024):
a high-frequency representation of the image (HFRI), then alternating high-frequency feature
selection (HFRFS: FFT high-pass of the feature maps, then a conv) and frequency convolution layers
(FCL: amplitude and phase convolved separately, recombined in polar form, inverse FFT). Its features
are added to a ResNet bottleneck backbone (He et al., 2016; 7x7 stem, four stages) at several depths.
Downsampling uses wavelet attention (Zhao et al., "Wavelet-Attention CNN", 2022) in the main path and
a DWT + 1x1 conv in the shortcut, so no stride ever aliases away the traces a generator leaves in the
high frequencies. The CIFAKE solution this project starts from combined the same parts on 32x32 images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import nn

from fakescope.layers import WaveletAttention, WaveletDownsample, fft_highpass

__all__ = [
    "FCL",
    "HFRFS",
    "HFRI",
    "MODELS",
    "VARIANTS",
    "BasicBlock",
    "Bottleneck",
    "DetectorNet",
    "DetectorNetConfig",
    "FreqNetResNet",
    "FreqNetResNetConfig",
    "PlainBlock",
    "checkpoint_filter_fn",
    "freqnet_resnet50",
    "freqnet_resnet_s",
    "freqnet_resnet_tiny",
    "freqnet_vgg",
    "npr_residual",
    "register_model",
    "vgg1_wide_stem",
    "vgg2_wide_stem",
    "vgg3_anchor",
    "vgg3_wide",
    "vgg3_wide_freq",
    "vgg3_wide_npr",
    "vgg3_wide_stem",
    "vgg3_wide_wavelet",
    "vgg4_full",
]


# What builds a block's normalisation and activation (timm's norm_layer / act_layer): batch norm
# and ReLU unless a model is given others.
NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]
RELU: ActLayer = partial(nn.ReLU, inplace=True)


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int = 1, norm_layer: NormLayer = nn.BatchNorm2d) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False),
        norm_layer(out_chs),
    )


def _zero_init_last_norm(conv_bn: nn.Sequential) -> None:
    """Each residual block starts as the identity: its last norm's scale at zero (where it has one)."""
    weight = getattr(conv_bn[1], "weight", None)
    if isinstance(weight, torch.Tensor):
        nn.init.zeros_(weight)


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """Neighbouring-pixel relationships (Tan et al., "Rethinking the Up-Sampling Operations in
    CNN-based Generative Network for Generalizable Deepfake Detection", CVPR 2024): the image minus
    its nearest-neighbour 2x down-and-up copy, so every pixel becomes its difference from the
    top-left pixel of its 2x2 cell. What is left is local structure that upsampling layers shape and
    that carries little of the scene. Odd sizes keep their last row and column's own cells.
    """
    h, w = x.shape[-2:]
    up = x[..., ::2, ::2].repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return x - up[..., :h, :w]


INPUT_FILTERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"npr": npr_residual}


class HFRI(nn.Module):
    """High-frequency representation of the image: the input with its low frequencies removed."""

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fft_highpass(x, self.scale)


class HFRFS(nn.Module):
    """High-frequency representation of feature maps, then a conv, BN and ReLU."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        scale: int = 4,
        prefiltered: bool = False,
        *,
        act_layer: ActLayer = RELU,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.scale = scale
        # True when the input is already high-passed by the same mask (HFRI's output): filtering it
        # again would cost two FFTs to change only the mask's boundary bins.
        self.prefiltered = prefiltered
        self.conv = _conv_bn(in_chs, out_chs, kernel_size, norm_layer)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x if self.prefiltered else fft_highpass(x, self.scale)))


class FCL(nn.Module):
    """Frequency convolution: 1x1 convs on amplitude and on phase, recombined, inverse FFT.

    The amplitude passes a ReLU so that it stays non-negative; the phase does not, since clipping
    it would throw away half the angles. The real FFT is used: the input is real, so the other half
    of the spectrum is redundant, and the inverse returns a real map directly at half the cost. A
    residual keeps the spatial features the FCL refines.
    """

    def __init__(self, chs: int, *, act_layer: ActLayer = RELU, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.amp_conv = nn.Conv2d(chs, chs, kernel_size=1)
        self.pha_conv = nn.Conv2d(chs, chs, kernel_size=1)
        self.act = act_layer()
        self.bn = norm_layer(chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # cuFFT has no half-precision path for arbitrary sizes: keep the spectral part in fp32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.fft.rfft2(x.float(), norm="ortho")
            amp = torch.relu(self.amp_conv(spec.abs()))
            pha = self.pha_conv(spec.angle())
            y = torch.fft.irfft2(torch.polar(amp, pha), s=x.shape[-2:], norm="ortho")
        return self.act(x + self.bn(y.to(x.dtype)))


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1, expansion 4) with wavelet downsampling when ``stride == 2``."""

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        *,
        act_layer: ActLayer = RELU,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = _conv_bn(in_chs, planes, 1, norm_layer)
        self.down = WaveletAttention() if stride == 2 else nn.Identity()
        self.conv2 = _conv_bn(planes, planes, 3, norm_layer)
        self.conv3 = _conv_bn(planes, out_chs, 1, norm_layer)
        _zero_init_last_norm(self.conv3)
        self.act = act_layer()
        if stride == 2:
            self.shortcut: nn.Module = WaveletDownsample(in_chs, out_chs)
        elif in_chs != out_chs:
            self.shortcut = _conv_bn(in_chs, out_chs, 1, norm_layer)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(self.down(y)))
        y = self.conv3(y)
        return self.act(y + self.shortcut(x))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, expansion 1), downsampling *before* the first conv.

    Downsampling first puts both 3x3 convs at the lower resolution: at 32x32 input that halves the
    block's cost against a stride in the second conv, and the wavelet attention still sees the
    full-resolution detail bands when it decides what to keep. ``wavelet=False`` swaps in max
    pooling and a strided 1x1 shortcut (the plain ResNet), for the ablation.
    """

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        wavelet: bool = True,
        *,
        act_layer: ActLayer = RELU,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        super().__init__()
        self.down: nn.Module = nn.Identity()
        if stride == 2:
            self.down = WaveletAttention() if wavelet else nn.MaxPool2d(2)
        self.conv1 = _conv_bn(in_chs, planes, 3, norm_layer)
        self.conv2 = _conv_bn(planes, planes, 3, norm_layer)
        _zero_init_last_norm(self.conv2)
        self.act = act_layer()
        if stride == 2 and wavelet:
            self.shortcut: nn.Module = WaveletDownsample(in_chs, planes)
        elif stride == 2:
            self.shortcut = nn.Sequential(nn.Conv2d(in_chs, planes, 1, stride=2, bias=False), norm_layer(planes))
        elif in_chs != planes:
            self.shortcut = _conv_bn(in_chs, planes, 1, norm_layer)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(self.down(x)))
        y = self.conv2(y)
        return self.act(y + self.shortcut(x))


class PlainBlock(nn.Module):
    """VGG block: two 3x3 conv-BN-ReLU, then halving (wavelet attention, or 2x2 max pooling with
    ``wavelet=False``) when ``stride == 2``; no shortcut.

    On two CPU cores this is the fastest block per unit of accuracy (the proxy protocol's table in the
    model card): no shortcut branch, no extra DWT, and with bf16 on AMX the convs run at matrix speed.
    With ``freq_merges=0``, no stem and max pooling it is the published 3-block CIFAKE baseline.
    """

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        wavelet: bool = False,
        *,
        act_layer: ActLayer = RELU,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = _conv_bn(in_chs, planes, 3, norm_layer)
        self.conv2 = _conv_bn(planes, planes, 3, norm_layer)
        self.act = act_layer()
        self.pool: nn.Module = nn.Identity()
        if stride == 2:
            self.pool = WaveletAttention() if wavelet else nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv2(self.act(self.conv1(x)))))


BLOCKS: dict[str, type[Bottleneck] | type[BasicBlock] | type[PlainBlock]] = {
    "bottleneck": Bottleneck,
    "basic": BasicBlock,
    "plain": PlainBlock,
}


@dataclass(frozen=True)
class DetectorNetConfig:
    """Architecture hyper-parameters; saved with every checkpoint."""

    layers: tuple[int, ...] = (3, 4, 6, 3)
    planes: tuple[int, ...] = (64, 128, 256, 512)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    stem_chs: int = 64
    stem_downsample: bool = True
    freq_merges: int = 3
    hfri_scale: int = 4
    num_classes: int = 2
    drop_rate: float = 0.0
    in_chans: int = 3
    # "bottleneck" (the paper's ResNet-50 block) or "basic" (two 3x3 convs: wide and shallow is what
    # trains fast on a CPU, where small channel counts, not arithmetic, bound the speed).
    block: str = "bottleneck"
    stem_kernel: int = 7
    # False swaps wavelet attention for max pooling and strided shortcuts (the ablation).
    wavelet: bool = True
    # Width of the frequency branch; 0: as wide as the backbone at each merge point.
    freq_chs: int = 0
    # "npr": the network sees only each pixel's difference from its 2x2 cell's top-left pixel
    # (:func:`npr_residual`); "": the image itself.
    input_filter: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorNetConfig:
        d = dict(d)
        # Checkpoints written before the unused ``extra`` field was dropped carry it empty.
        if d.get("extra") == {}:
            del d["extra"]
        d["layers"] = tuple(d["layers"])
        d["planes"] = tuple(d["planes"])
        d["strides"] = tuple(d["strides"])
        return cls(**d)


class DetectorNet(nn.Module):
    """A backbone of ``block`` stages with, where ``freq_merges`` > 0, the FreqNet branch merged in by
    addition at that many depths (``freq_merges=0``: a plain CNN, as the shipped ``vgg3_wide``).

    Merge points, in order: the stem output, then the output of each of the first stages. The
    frequency branch at merge ``i`` is HFRFS then FCL with as many channels as the backbone has there,
    with a DWT downsample in front wherever the backbone has halved the resolution.

    Sub-module names are stable (``stem``, ``freq``, ``stages.N``, ``head``): GradCAM targets
    ``stages.<last>`` and checkpoints are loaded strictly against them. ``act_layer`` and
    ``norm_layer`` (timm's) build every activation and normalisation: ReLU and batch norm, which
    every shipped checkpoint was trained with, unless given others.
    """

    def __init__(
        self, cfg: DetectorNetConfig, *, act_layer: ActLayer = RELU, norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        if not 0 <= cfg.freq_merges <= len(cfg.layers):
            raise ValueError(f"freq_merges must be in [0, {len(cfg.layers)}], got {cfg.freq_merges}")
        if cfg.block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {cfg.block!r}")
        if cfg.block == "bottleneck" and not cfg.wavelet:
            raise ValueError("wavelet=False is only built for basic blocks")
        if cfg.input_filter and cfg.input_filter not in INPUT_FILTERS:
            raise ValueError(f"input_filter must be one of {sorted(INPUT_FILTERS)} or empty, got {cfg.input_filter!r}")
        if cfg.stem_chs == 0 and (cfg.freq_merges or cfg.stem_downsample):
            raise ValueError("a model without a stem (stem_chs=0) has no frequency merges and no stem pooling")
        block = BLOCKS[cfg.block]
        layers: dict[str, Any] = {"act_layer": act_layer, "norm_layer": norm_layer}
        self.cfg = cfg
        self.hfri = HFRI(cfg.hfri_scale)
        self.stem: nn.Module = nn.Identity()
        if cfg.stem_chs:
            self.stem = nn.Sequential(
                nn.Conv2d(cfg.in_chans, cfg.stem_chs, cfg.stem_kernel, padding=cfg.stem_kernel // 2, bias=False),
                norm_layer(cfg.stem_chs),
                act_layer(),
            )
        # The stem keeps full resolution: at 32x32 a stride-2 stem would discard exactly the
        # high-frequency bands the detector needs. Wavelet attention replaces ResNet's max pool.
        self.stem_pool: nn.Module = nn.Identity()
        if cfg.stem_downsample:
            self.stem_pool = WaveletAttention() if cfg.wavelet else nn.MaxPool2d(2)

        # Backbone channels at each merge point, and how often the resolution halves on the way there.
        merge_chs = [cfg.stem_chs] + [p * block.expansion for p in cfg.planes]
        merge_down = [0, int(cfg.stem_downsample) + int(cfg.strides[0] == 2)]
        merge_down += [int(s == 2) for s in cfg.strides[1:]]

        freq: list[nn.Module] = []
        proj: list[nn.Module] = []
        in_chs = cfg.in_chans
        for i in range(cfg.freq_merges):
            # Merge 0 lands before the stem pool, merge 1 after it: so merge 1's DWT covers the pool.
            down = [WaveletDownsample(in_chs, in_chs) for _ in range(merge_down[i])]
            # Merge 0's HFRFS would filter HFRI's output with the same mask again, which only halves
            # the two boundary bins once more (the mask is not symmetric about zero at +-H/scale, so
            # the real part keeps half of them): the basic-block variants skip that FFT pair. The
            # bottleneck variants keep it, so their checkpoints load with unchanged outputs.
            chs = cfg.freq_chs or merge_chs[i]
            # A narrower branch (freq_chs) is projected to the backbone's width where it merges: the
            # spectral ops cost in proportion to channels x pixels, and at full resolution they were
            # most of a step's time.
            hfrfs = HFRFS(
                in_chs,
                chs,
                kernel_size=3 if i == 0 else 1,
                scale=cfg.hfri_scale,
                prefiltered=i == 0 and cfg.block != "bottleneck",
                **layers,
            )
            freq.append(nn.Sequential(*down, hfrfs, FCL(chs, **layers)))
            proj.append(_conv_bn(chs, merge_chs[i], 1, norm_layer) if chs != merge_chs[i] else nn.Identity())
            in_chs = chs
        self.freq = nn.ModuleList(freq)
        self.freq_proj = nn.ModuleList(proj)

        stages: list[nn.Module] = []
        in_chs = cfg.stem_chs or cfg.in_chans
        for depth, planes, stride in zip(cfg.layers, cfg.planes, cfg.strides, strict=True):
            blocks: list[nn.Module] = []
            for j in range(depth):
                s = stride if j == 0 else 1
                if block is BasicBlock:
                    blocks.append(BasicBlock(in_chs, planes, stride=s, wavelet=cfg.wavelet, **layers))
                elif block is PlainBlock:
                    blocks.append(PlainBlock(in_chs, planes, stride=s, wavelet=cfg.wavelet, **layers))
                else:
                    blocks.append(Bottleneck(in_chs, planes, stride=s, **layers))
                in_chs = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        # timm's surface: each stage's channels, how far its grid is reduced from the input, its module.
        reduction = 2 if cfg.stem_downsample else 1
        self.feature_info: list[dict[str, Any]] = []
        for i, (planes, stride) in enumerate(zip(cfg.planes, cfg.strides, strict=True)):
            reduction *= stride
            self.feature_info.append(
                {"num_chs": planes * block.expansion, "reduction": reduction, "module": f"stages.{i}"}
            )
        self.num_features = in_chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(in_chs, cfg.num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def cam_target(self) -> nn.Module:
        """The module whose output GradCAM explains: the last entry of ``feature_info``."""
        return self.get_submodule(self.feature_info[-1]["module"])

    @property
    def features_are_cam_target(self) -> bool:
        """Whether ``forward_features`` returns ``cam_target``'s output unchanged: true unless the
        frequency branch merges after the last stage (then GradCAM's target is not the head's input)."""
        return len(self.freq) <= len(self.stages)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def get_classifier(self) -> nn.Linear:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh linear head for ``num_classes`` (fine-tuning to other labels); ``forward_head(...,
        pre_logits=True)`` gives the pooled features without one."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.input_filter:
            x = INPUT_FILTERS[self.cfg.input_filter](x)
        if not self.freq:
            x = self.stem_pool(self.stem(x))
            for stage in self.stages:
                x = stage(x)
            return x
        f = self.hfri(x)
        x = self.stem(x)
        f = self.freq[0](f)
        x = self.stem_pool(x + self.freq_proj[0](f))
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i + 1 < len(self.freq):
                f = self.freq[i + 1](f)
                x = x + self.freq_proj[i + 1](f)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# The names this module had when every variant was a FreqNet-ResNet; checkpoints do not record them.
FreqNetResNet = DetectorNet
FreqNetResNetConfig = DetectorNetConfig


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strips wrappers that training adds (``torch.compile``'s ``_orig_mod.``, DDP's ``module.``)."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


VARIANTS: dict[str, DetectorNetConfig] = {
    # The paper's size: ResNet-50 layout plus the frequency branch (about 25M parameters).
    "freqnet_resnet50": DetectorNetConfig(),
    # Compact: trains on 2 CPU cores in about two hours on 80k 32x32 images and serves on CPU.
    # The last stage keeps 4x4 at 32x32 input so GradCAM has more than four cells to show.
    "freqnet_resnet_tiny": DetectorNetConfig(
        layers=(1, 1, 2, 1),
        planes=(16, 32, 64, 128),
        strides=(1, 2, 2, 1),
        stem_chs=24,
        stem_downsample=True,
        freq_merges=3,
        drop_rate=0.1,
    ),
    # Wide and shallow, for 2 CPU cores: basic blocks, full resolution in the first stage (no stem
    # pooling), the frequency branch merged at the stem and after stage 1, an 8x8 last stage.
    "freqnet_resnet_s": DetectorNetConfig(
        layers=(1, 1, 1),
        planes=(32, 64, 128),
        strides=(1, 2, 2),
        stem_chs=32,
        stem_downsample=False,
        freq_merges=2,
        freq_chs=8,
        drop_rate=0.1,
        block="basic",
        stem_kernel=3,
    ),
    # The default before vgg3_wide, after the proxy protocol's first table (ops/proxy/results.jsonl): VGG-style
    # plain blocks (on 2 CPU cores the residual branch and the shortcut DWT cost more than they
    # bought), 64/128/256 channels, the first block at full resolution, max pooling after the first
    # two (wavelet attention cost a fifth of the step and 2.5 dev points), an 8x8 last stage for
    # GradCAM, and the 8-channel frequency branch (HFRI, HFRFS, FCL) merged at the stem.
    "freqnet_vgg": DetectorNetConfig(
        layers=(1, 1, 1),
        planes=(64, 128, 256),
        strides=(2, 2, 1),
        stem_chs=32,
        stem_kernel=3,
        stem_downsample=False,
        freq_merges=1,
        freq_chs=8,
        drop_rate=0.1,
        block="plain",
        wavelet=False,
    ),
}


# Not a detector fakescope ships: the plain-CNN anchor of the ablation table (3 VGG blocks of
# 32/64/128 channels, 0.29M parameters, as the published CIFAKE baseline), built by the same code.
ANCHORS: dict[str, DetectorNetConfig] = {
    "vgg3_anchor": DetectorNetConfig(
        layers=(1, 1, 1),
        planes=(32, 64, 128),
        strides=(2, 2, 2),
        stem_chs=0,
        stem_downsample=False,
        freq_merges=0,
        block="plain",
        wavelet=False,
    ),
}
# The anchor at twice the width (64/128/256, 1.15M parameters): the shipped default (its model card
# says why; `python ops/bench/bench_model.py --variants vgg3_anchor vgg3_wide` for its speed).
ANCHORS["vgg3_wide"] = replace(ANCHORS["vgg3_anchor"], planes=(64, 128, 256))
# The frequency question asked where FreqNet's claim lies, unseen generators (the model card's
# leave-one-family-out ablation, `ops/protocol.py --variant`): the wide anchor with FreqNet's branch
# (HFRI, HFRFS, FCL) merged at a 32-channel stem, the same stem alone (the control: the branch adds a
# stem too), and the anchor with wavelet attention in place of max pooling.
ANCHORS["vgg3_wide_stem"] = replace(ANCHORS["vgg3_wide"], stem_chs=32, stem_kernel=3)
ANCHORS["vgg3_wide_freq"] = replace(ANCHORS["vgg3_wide_stem"], freq_merges=1, freq_chs=8)
ANCHORS["vgg3_wide_wavelet"] = replace(ANCHORS["vgg3_wide"], wavelet=True)
# The shipped full-size network on neighbouring-pixel residuals instead of the image (NPR, CVPR 2024:
# generalisation across generator families from upsampling traces), asked on the full-size folds.
ANCHORS["vgg3_wide_npr"] = replace(ANCHORS["vgg3_wide_stem"], input_filter="npr")
# The same network cut after its second block (Chai et al., ECCV 2020: classifiers of small patches
# generalise across generators): each output position sees 18 pixels instead of 38, less of the picture.
ANCHORS["vgg2_wide_stem"] = replace(ANCHORS["vgg3_wide_stem"], layers=(1, 1), planes=(64, 128), strides=(2, 2))
# Cut once more, after the first block: 8 pixels (the next step of the same question).
ANCHORS["vgg1_wide_stem"] = replace(ANCHORS["vgg3_wide_stem"], layers=(1,), planes=(64,), strides=(2,))
# The full-size model: four plain blocks (16/32/64/128; 32/64/128/256 trained at a third of the
# speed on 2 cores), the first at full resolution (no pooling before it, where a generator's
# pixel-level traces live); 16x at the last stage, so a 224-pixel image gives a 14x14 GradCAM grid.
# Fully convolutional: trained on 96-pixel crops, scored on the whole image.
ANCHORS["vgg4_full"] = replace(
    ANCHORS["vgg3_anchor"], layers=(1, 1, 1, 1), planes=(16, 32, 64, 128), strides=(2, 2, 2, 2)
)
VARIANTS.update(ANCHORS)


# The registry: variant name -> builder, filled by @register_model below (timm's pattern).
MODELS: dict[str, Callable[..., DetectorNet]] = {}


def register_model(fn: Callable[..., DetectorNet]) -> Callable[..., DetectorNet]:
    """Registers a builder under its function's name, which is also its config's key in VARIANTS."""
    if fn.__name__ not in VARIANTS:
        raise KeyError(f"builder {fn.__name__!r} has no config in VARIANTS")
    MODELS[fn.__name__] = fn
    return fn


def _create(
    variant: str, *, act_layer: ActLayer = RELU, norm_layer: NormLayer = nn.BatchNorm2d, **overrides: Any
) -> DetectorNet:
    cfg = VARIANTS[variant]
    if overrides:
        cfg = DetectorNetConfig.from_dict({**cfg.to_dict(), **overrides})
    return DetectorNet(cfg, act_layer=act_layer, norm_layer=norm_layer)


def _builder(variant: str, doc: str) -> Callable[..., DetectorNet]:
    """The registered builder of ``variant``: ``builder(**overrides)`` is ``variant``'s network with
    random weights, ``overrides`` replacing fields of its config."""

    def build(**overrides: Any) -> DetectorNet:
        return _create(variant, **overrides)

    build.__name__ = build.__qualname__ = variant
    build.__doc__ = doc
    return register_model(build)


freqnet_resnet50 = _builder("freqnet_resnet50", "The paper-size model (about 25M parameters).")
freqnet_resnet_tiny = _builder(
    "freqnet_resnet_tiny",
    "The compact FreqNet-ResNet (0.78M): the default before vgg3_wide.",
)
freqnet_resnet_s = _builder(
    "freqnet_resnet_s",
    "Wide, shallow basic blocks with wavelet attention: the first CPU candidate (ablation rows).",
)
freqnet_vgg = _builder(
    "freqnet_vgg",
    "Plain VGG blocks with the frequency branch merged in (the ablation's FreqNet row).",
)
vgg3_anchor = _builder("vgg3_anchor", "The published plain-CNN anchor (0.29M).")
vgg3_wide = _builder("vgg3_wide", "The anchor at twice the width (1.15M): the shipped default.")
vgg3_wide_stem = _builder(
    "vgg3_wide_stem",
    "``vgg3_wide`` behind a 32-channel stem: the control of the frequency-branch ablation.",
)
vgg3_wide_freq = _builder(
    "vgg3_wide_freq",
    "``vgg3_wide_stem`` with FreqNet's frequency branch merged at the stem (the ablation's candidate).",
)
vgg3_wide_wavelet = _builder(
    "vgg3_wide_wavelet",
    "``vgg3_wide`` with wavelet attention in place of max pooling (the ablation's other candidate).",
)
vgg3_wide_npr = _builder(
    "vgg3_wide_npr",
    "``vgg3_wide_stem`` on neighbouring-pixel residuals (NPR) instead of the image: a full-size candidate.",
)
vgg1_wide_stem = _builder(
    "vgg1_wide_stem",
    "``vgg3_wide_stem`` cut after its first block (8-pixel receptive field): a full-size candidate.",
)
vgg2_wide_stem = _builder(
    "vgg2_wide_stem",
    "``vgg3_wide_stem`` cut after its second block (18-pixel receptive field): a full-size candidate.",
)
vgg4_full = _builder("vgg4_full", "Four plain blocks for full-size images (0.29M): the full-size route's model.")


if set(VARIANTS) != set(MODELS):  # a config without a builder could not be created by name
    raise RuntimeError(f"variants without a builder: {sorted(set(VARIANTS) - set(MODELS))}")
