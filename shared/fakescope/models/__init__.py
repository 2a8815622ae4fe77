"""Model registry: every detector variant by name, and the ensembles built from them."""

from __future__ import annotations

from typing import Any

from fakescope.models.ensemble import EnsembleConfig, FreqNetEnsemble
from fakescope.models.freqnet_resnet import MODELS, FreqNetResNet, FreqNetResNetConfig

__all__ = [
    "EnsembleConfig",
    "FreqNetEnsemble",
    "FreqNetResNet",
    "FreqNetResNetConfig",
    "Network",
    "build_network",
    "create_model",
    "list_models",
]

# What a checkpoint holds: one network, or an ensemble built as one (the same surface: forward,
# forward_features, forward_head, head, cam_target).
Network = FreqNetResNet | FreqNetEnsemble


def list_models() -> list[str]:
    """Names of the registered variants."""
    return sorted(MODELS)


def create_model(name: str, **overrides: Any) -> FreqNetResNet:
    """Builds variant ``name`` with random weights through its registered builder; ``overrides``
    replace fields of its config."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return MODELS[name](**overrides)


def build_network(arch: FreqNetResNetConfig | EnsembleConfig) -> Network:
    """The network an architecture record describes, with random weights."""
    if isinstance(arch, EnsembleConfig):
        return FreqNetEnsemble(arch)
    return FreqNetResNet(arch)
