"""The detector a classify worker answers with: the registry's promoted version, picked up between chunks.

Each chunk asks :func:`live_detector` once, before it starts: at most every ``FAKESCOPE_MODELS_PICKUP_TTL_S``
seconds that costs one indexed query; when the promoted version changed, the new checkpoint is fetched
from the object store (once per machine) and loaded, and the next chunk answers with it. A chunk
already running keeps the detector it started with, so every item is scored by exactly one version,
and each records it (``model_version``); the result cache is keyed on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fakescope.service.models import SHIPPED, promoted
from fakescope.service.training import local_checkpoint
from fakescope.settings import get_settings
from workers import runtime

if TYPE_CHECKING:
    from fakescope.detector import Detector, RoutedDetector

logger = logging.getLogger(__name__)


@dataclass
class _Live:
    version: str | None = None
    detector: Detector | RoutedDetector | None = None
    checked_at: float = float("-inf")


_live = _Live()


def promoted_version() -> str:
    """The registry's promoted version (``shipped`` while none is)."""
    with runtime.session() as session:
        row = promoted(session)
        return row.version if row is not None else SHIPPED


def live_detector(clock: Callable[[], float] = time.monotonic) -> Detector | RoutedDetector:
    """The promoted version's detector, looked up at most once per pickup TTL."""
    now = clock()
    if _live.detector is not None and now - _live.checked_at < get_settings().models.pickup_ttl_s:
        return _live.detector
    version = promoted_version()
    _live.checked_at = now
    if version != _live.version or _live.detector is None:
        if version == SHIPPED:
            det = runtime.detector()
        else:
            from fakescope.detector import load_detector

            det = load_detector(local_checkpoint(runtime.store(), get_settings(), version))
        logger.info("classify worker now answers with %s (%s)", version, det.model_version)
        _live.version, _live.detector = version, det
    return _live.detector
