import pytest
import torch

from fakescope.models import create_model, list_models
from fakescope.models.freqnet_resnet import FCL, HFRFS, DetectorNet, checkpoint_filter_fn


@pytest.mark.parametrize("name", list_models())
def test_variant_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.ndim == 4 and feats.shape[1] == model.num_features
    logits = model.forward_head(feats)
    assert logits.shape == (2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_paper_size_parameter_count() -> None:
    n = sum(p.numel() for p in create_model("freqnet_resnet50").parameters())
    assert 23e6 < n < 36e6


def test_compact_is_small() -> None:
    n = sum(p.numel() for p in create_model("freqnet_resnet_tiny").parameters())
    assert n < 2e6


def test_stable_submodule_names() -> None:
    model = create_model("freqnet_resnet_tiny")
    names = dict(model.named_modules())
    for key in ("hfri", "stem", "freq.0", "stages.0", "stages.3", "head"):
        assert key in names
    # Every merge of the frequency branch ends in HFRFS then FCL, after any DWT downsampling.
    for branch in model.freq:
        assert isinstance(branch, torch.nn.Sequential)
        assert isinstance(branch[-2], HFRFS) and isinstance(branch[-1], FCL)


def test_any_input_size_works() -> None:
    model = create_model("freqnet_resnet_tiny").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 48)).shape == (1, 2)


def test_unknown_variant() -> None:
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        create_model("nope")


def test_checkpoint_filter_strips_wrappers() -> None:
    sd = {"_orig_mod.head.weight": torch.zeros(1), "module.stem.0.weight": torch.ones(1)}
    assert set(checkpoint_filter_fn(sd)) == {"head.weight", "stem.0.weight"}


def test_shipped_variant_surface() -> None:
    model = create_model("freqnet_resnet_s").eval()
    names = dict(model.named_modules())
    for key in ("hfri", "stem", "freq.0", "freq.1", "freq_proj.0", "stages.0", "stages.2", "head"):
        assert key in names
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 32, 32))
    # Full resolution in the first stage, an 8x8 last stage for GradCAM.
    assert feats.shape == (1, 128, 8, 8)


def test_hfrfs_after_hfri_skips_the_second_filter_on_basic_variants_only() -> None:
    # The bottleneck variants keep the paper's second high-pass, so their checkpoints load with the
    # outputs they were trained with; the basic-block variants feed HFRI's output to the conv.
    assert _first_hfrfs(create_model("freqnet_resnet_s").freq[0]).prefiltered
    assert not _first_hfrfs(create_model("freqnet_resnet_tiny").freq[0]).prefiltered
    assert not any(_first_hfrfs(b).prefiltered for b in list(create_model("freqnet_resnet_s").freq)[1:])
    h = HFRFS(3, 4, kernel_size=1, prefiltered=True).eval()
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(h(x), h.act(h.conv(x)))


def _first_hfrfs(branch: torch.nn.Module) -> HFRFS:
    """The HFRFS a frequency branch opens with (a ``ModuleList`` holds its branches as plain modules)."""
    assert isinstance(branch, torch.nn.Sequential) and isinstance(branch[0], HFRFS)
    return branch[0]


@pytest.mark.parametrize("overrides", [{"freq_merges": 0}, {"wavelet": False}, {"freq_chs": 0}, {"layers": (2, 1, 1)}])
def test_ablations_build_and_run(overrides: dict[str, object]) -> None:
    model = create_model("freqnet_resnet_s", **overrides)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2)
    if overrides.get("freq_merges") == 0:
        assert len(model.freq) == 0


def test_plain_anchor_is_the_published_size() -> None:
    n = sum(p.numel() for p in create_model("vgg3_anchor").parameters())
    assert 0.28e6 < n < 0.30e6


def test_bad_block_configs() -> None:
    with pytest.raises(ValueError, match="block must be one of"):
        create_model("freqnet_resnet_s", block="nope")
    with pytest.raises(ValueError, match="only built for basic blocks"):
        create_model("freqnet_resnet_tiny", wavelet=False)


def test_default_variant_surface() -> None:
    model = create_model("freqnet_vgg").eval()
    names = dict(model.named_modules())
    for key in ("hfri", "stem", "freq.0", "freq_proj.0", "stages.0", "stages.2", "head"):
        assert key in names
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 256, 8, 8)  # an 8x8 grid for GradCAM
    wav = create_model("freqnet_vgg", wavelet=True)
    assert any(type(m).__name__ == "WaveletAttention" for m in wav.modules())
    assert not any(type(m).__name__ == "WaveletAttention" for m in model.modules())


@pytest.mark.parametrize("variant", ["freqnet_vgg", "vgg3_anchor", "vgg3_wide", "freqnet_resnet_tiny"])
def test_timm_surface_feature_info_matches_the_stages(variant: str) -> None:
    import torch

    from fakescope.models import create_model

    model = create_model(variant).eval()
    maps: list[torch.Tensor] = []
    hooks = [
        model.get_submodule(f["module"]).register_forward_hook(lambda _m, _i, o: maps.append(o))
        for f in model.feature_info
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    for info, fmap in zip(model.feature_info, maps, strict=True):
        assert fmap.shape[1] == info["num_chs"] and fmap.shape[-1] == 32 // info["reduction"], (variant, info)
    assert model.cam_target is model.get_submodule(model.feature_info[-1]["module"])
    assert model.num_classes == 2 and model.get_classifier() is model.head
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def _returns_cam_target_output(model: DetectorNet) -> bool:
    seen: list[torch.Tensor] = []
    hook = model.cam_target.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            feats = model.forward_features(torch.zeros(1, 3, 32, 32))
    finally:
        hook.remove()
    return len(seen) == 1 and feats is seen[0]


def _valid_merges() -> list[tuple[str, int]]:
    """Every variant with every frequency-merge count its config accepts (0 to one per stage)."""
    out = []
    for name in list_models():
        for merges in range(5):
            try:
                create_model(name, freq_merges=merges)
            except ValueError:
                continue
            out.append((name, merges))
    return out


@pytest.mark.parametrize(("name", "merges"), _valid_merges())
def test_features_are_cam_target_matches_a_forward_pass(name: str, merges: int) -> None:
    # The detector reads this property instead of running a dummy forward pass at every load.
    model = create_model(name, freq_merges=merges).eval()
    assert model.features_are_cam_target == _returns_cam_target_output(model), (name, merges)


def test_act_and_norm_layers_are_injected() -> None:
    model = create_model("freqnet_vgg", act_layer=torch.nn.GELU, norm_layer=lambda c: torch.nn.GroupNorm(1, c))
    kinds = {type(m) for m in model.modules()}
    assert torch.nn.GELU in kinds and torch.nn.GroupNorm in kinds
    assert torch.nn.ReLU not in kinds and torch.nn.BatchNorm2d not in kinds
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)


def test_one_class_builds_every_variant_and_keeps_its_old_name() -> None:
    from fakescope.models import (
        DetectorNet,
        DetectorNetConfig,
        FreqNetResNet,
        FreqNetResNetConfig,
        create_model,
        list_models,
    )

    assert FreqNetResNet is DetectorNet and FreqNetResNetConfig is DetectorNetConfig
    for name in list_models():
        assert create_model(name).__class__ is DetectorNet, name


def test_npr_residual_keeps_only_what_differs_within_each_2x2_cell() -> None:
    from fakescope.models.freqnet_resnet import npr_residual

    cells = torch.randn(2, 3, 4, 5)
    blocky = cells.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :7, :9]  # odd sizes too
    assert torch.equal(npr_residual(blocky), torch.zeros_like(blocky))  # nearest upsampling leaves nothing
    x = torch.randn(1, 3, 7, 9)
    r = npr_residual(x)
    assert r.shape == x.shape
    assert torch.equal(r[..., ::2, ::2], torch.zeros_like(r[..., ::2, ::2]))  # each cell's anchor pixel
    assert torch.allclose(r[..., 0, 1], x[..., 0, 1] - x[..., 0, 0])
    assert torch.allclose(r[..., 1, 1], x[..., 1, 1] - x[..., 0, 0])
    assert torch.allclose(npr_residual(x + 5.0), r, atol=1e-5)  # brightness is gone


def test_npr_variant_sees_only_the_residual() -> None:
    net = create_model("vgg3_wide_npr").eval()
    x = torch.randn(2, 3, 32, 32)
    blocky = x[..., ::2, ::2].repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    with torch.no_grad():
        # Every nearest-upsampled image has the same (zero) residual, so the same score.
        assert torch.allclose(net(blocky), net(torch.zeros_like(x)).expand(2, -1), atol=1e-5)
        assert not torch.allclose(net(x), net(blocky), atol=1e-3)
    with pytest.raises(ValueError, match="input_filter"):
        create_model("vgg3_wide_stem", input_filter="sobel")


def _receptive_field(variant: str) -> int:
    """How many input columns change one interior position of the last stage's output."""
    net = create_model(variant).eval()
    x = torch.randn(1, 3, 96, 96, requires_grad=True)
    net.forward_features(x)[0, :, 3, 3].sum().backward()
    assert x.grad is not None
    return int((x.grad.abs().sum(dim=(0, 1, 2)) > 0).sum())


def test_truncated_variant_sees_a_smaller_patch() -> None:
    # vgg2_wide_stem is vgg3_wide_stem cut after its second block: each output position is decided by
    # an 18-pixel patch instead of 38, with a quarter of the parameters; vgg1_wide_stem after its first.
    assert _receptive_field("vgg3_wide_stem") == 38
    assert _receptive_field("vgg2_wide_stem") == 18
    assert _receptive_field("vgg1_wide_stem") == 8
    small, big = create_model("vgg2_wide_stem"), create_model("vgg3_wide_stem")
    assert small.num_features == 128
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters()) / 4
