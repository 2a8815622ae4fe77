"""Model registry: every detector variant by name, and the ensembles built from them."""

from __future__ import annotations

from typing import Any

from fakescope.models.ensemble import EnsembleConfig, FreqNetEnsemble
from fakescope.models.freqnet_resnet import MODELS, DetectorNet, DetectorNetConfig, FreqNetResNet, FreqNetResNetConfig

__all__ = [
    "DetectorNet",
    "DetectorNetConfig",
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
Network = DetectorNet | FreqNetEnsemble


def list_models() -> list[str]:
    """Names of the registered variants."""
    return sorted(MODELS)


def create_model(name: str, **overrides: Any) -> DetectorNet:
    """Builds variant ``name`` with random weights through its registered builder; ``overrides``
    replace fields of its config."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return MODELS[name](**overrides)


def build_network(arch: DetectorNetConfig | EnsembleConfig) -> Network:
    """The network an architecture record describes, with random weights."""
    if isinstance(arch, EnsembleConfig):
        return FreqNetEnsemble(arch)
    return DetectorNet(arch)
