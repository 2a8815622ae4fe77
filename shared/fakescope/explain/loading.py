"""Where explainer weights come from, on which device, in which precision, with which errors.

One rule for every pretrained model the explainers use: a hub id or a local folder goes to
``from_pretrained``; on a GPU the weights load in fp16 with ``device_map`` placed by accelerate,
on a CPU in fp32 (fp16 matmuls on CPU are slow or unsupported); a path that does not exist, or a
hub id that cannot be resolved offline, becomes an :class:`ExplainerConfigError` naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fakescope.explain import ExplainerConfigError

__all__ = ["check_source", "model_kwargs", "once", "resolving"]

logger = logging.getLogger(__name__)


def model_kwargs(device: str) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for ``device``: fp16 and an accelerate device map on
    CUDA, fp32 and no map on the CPU."""
    import torch

    if device.startswith("cuda"):
        # "auto" lets accelerate spread an 8B model over several GPUs when one is too small; a
        # pinned "cuda:N" keeps a worker on the GPU it was given.
        return {"dtype": torch.float16, "device_map": "auto" if device == "cuda" else {"": device}}
    return {"dtype": torch.float32}


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists() or source.count("/") > 1


def check_source(source: str | None, what: str, env_var: str) -> str:
    """Returns ``source`` when it can be loaded from, else raises with the path or setting to fix.

    Args:
        source: a hub id (``owner/name``) or a local folder.
        what: what it is, for the message ("CLIP model").
        env_var: the environment variable that configures it.
    """
    if not source:
        raise ExplainerConfigError(f"no {what} configured: pass it or set {env_var} to a hub id or a local folder")
    if _looks_local(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise ExplainerConfigError(f"{what} folder not found: {path} (from {env_var} or the caller)")
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ExplainerConfigError(f"{what} folder {path} has no config.json: not a saved model")
    return source


@contextmanager
def resolving(source: str, what: str) -> Iterator[None]:
    """Turns the errors ``from_pretrained`` raises for missing weights into one that names them."""
    try:
        yield
    except (OSError, ValueError) as e:
        # transformers raises OSError for missing files and offline misses; peft raises ValueError
        # for a folder without adapter_config.json.
        raise ExplainerConfigError(f"cannot load {what} from {source!r}: {e}") from e


def once(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Caches a loader per argument tuple: each worker process loads each model once."""
    import functools

    return functools.lru_cache(maxsize=4)(fn)
