"""Model registry: every detector variant by name."""

from __future__ import annotations

from typing import Any

from fakescope.models.freqnet_resnet import VARIANTS, FreqNetResNet, FreqNetResNetConfig

__all__ = ["FreqNetResNet", "FreqNetResNetConfig", "create_model", "list_models"]


def list_models() -> list[str]:
    """Names of the registered variants."""
    return sorted(VARIANTS)


def create_model(name: str, **overrides: Any) -> FreqNetResNet:
    """Builds variant ``name`` with random weights; ``overrides`` replace fields of its config."""
    if name not in VARIANTS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    cfg = VARIANTS[name]
    if overrides:
        cfg = FreqNetResNetConfig.from_dict({**cfg.to_dict(), **overrides})
    return FreqNetResNet(cfg)
