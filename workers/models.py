"""The detector a classify worker answers with: the registry's promoted version, picked up between chunks.

Each chunk asks :func:`live_detector` once, before it starts: at most every ``FAKESCOPE_MODELS_PICKUP_TTL_S``
seconds that costs one indexed query; when the promoted version changed, the new checkpoint is fetched
from the object store (once per machine) and loaded, and the next chunk answers with it. A chunk
already running keeps the detector it started with, so every item is scored by exactly one version,
and each records it (``model_version``); the result cache is keyed on it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kombu.exceptions import OperationalError as BrokerError

from fakescope.service.models import SHIPPED, promoted, shadowing
from fakescope.service.shadow import in_share
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
    # The candidate shadowing live traffic (None: none), looked up with the promoted version.
    shadow: str | None = None


_live = _Live()


def registry_view() -> tuple[str, str | None]:
    """The registry's promoted version (``shipped`` while none is) and its shadowing candidate, if any."""
    with runtime.session() as session:
        row, shadow = promoted(session), shadowing(session)
        return (row.version if row is not None else SHIPPED), (shadow.version if shadow is not None else None)


def live_detector(clock: Callable[[], float] = time.monotonic) -> Detector | RoutedDetector:
    """The promoted version's detector, looked up at most once per pickup TTL."""
    now = clock()
    if _live.detector is not None and now - _live.checked_at < get_settings().models.pickup_ttl_s:
        return _live.detector
    version, _live.shadow = registry_view()
    _live.checked_at = now
    if version != _live.version or _live.detector is None:
        det = detector_of(version)
        logger.info("worker now answers with %s (%s)", version, det.model_version)
        _live.version, _live.detector = version, det
    return _live.detector


@functools.lru_cache(maxsize=2)
def detector_of(version: str) -> Detector | RoutedDetector:
    """A registry version's detector (``shipped``: the worker's own checkpoint), loaded once."""
    if version == SHIPPED:
        return runtime.detector()
    from fakescope.detector import load_detector

    return load_detector(local_checkpoint(runtime.store(), get_settings(), version))


def send_shadow(item_ids: list[str]) -> None:
    """Hands the chunk's share of items to the shadowing candidate (as the last pickup saw it), if any."""
    share = get_settings().models.shadow_share
    if _live.shadow is None or share <= 0:
        return
    picked = [i for i in item_ids if in_share(i, share)]
    if not picked:
        return
    try:
        runtime.enqueuer().shadow(_live.shadow, picked)
    except BrokerError as e:
        # Shadow scores are a sample: the chunk's live answers are committed, and a missed send is no failure.
        logger.warning("shadow %s: %s items not sent: %s", _live.shadow, len(picked), e)
