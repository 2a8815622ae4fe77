"""Overlays drawn on demand: the first request for an item's overlay draws it from the original and
the GradCAM grid its worker kept, stores it, and every later one reads it back.

Workers no longer encode a PNG per image nobody may look at, nor put it in the object store; a
platform that reads verdicts only pays for neither. Torch-free: the API runs this.

Anyone holding a signed overlay URL may ask for a draw, so draws are bounded per process: at most
``DRAW_SLOTS`` at once (CPU), and together they hold at most ``DRAW_MEMORY_BYTES``, each reserving what
its decode will hold (:func:`fakescope.overlay.draw_cost`, from the size its worker recorded) before
anything is read or decoded. One draw larger than the whole budget runs alone. A draw that cannot start
within ``DRAW_WAIT_S`` raises :class:`OverlayBusy` (the API's 503 with Retry-After).
"""

from __future__ import annotations

import logging
import threading
import uuid
from contextlib import ExitStack

from sqlalchemy import update
from sqlmodel import Session, col, select

from fakescope.db.models import ItemStatus, JobItem
from fakescope.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageError
from fakescope.overlay import draw_cost, render_overlay
from fakescope.service.budget import ByteBudget, UploadBusy
from fakescope.service.originals import read_original, same_original
from fakescope.storage import ObjectNotFound, ObjectStore, ObjectTooLarge, overlay_key

__all__ = ["DRAW_MEMORY_BYTES", "DRAW_SLOTS", "OverlayBusy", "image_resource", "item_overlay", "overlay_resource"]

logger = logging.getLogger(__name__)

# Overlays a process draws at once, and the memory their decodes may hold together. Twelve keyless
# GETs at once once grew the API by 2.7 GB: a PNG, WebP, AVIF or HEIC original is decoded whole (up
# to 40 megapixels at 9-17 bytes a pixel); a JPEG at a reduced DCT scale costs a few MB.
DRAW_SLOTS = 2
DRAW_MEMORY_BYTES = 256 * 1024**2
# How long a draw waits for a slot, then for memory, before the request gets 503 (Retry-After).
DRAW_WAIT_S = 20.0
_drawing = threading.BoundedSemaphore(DRAW_SLOTS)
_draw_memory = ByteBudget(DRAW_MEMORY_BYTES, DRAW_WAIT_S)


class OverlayBusy(RuntimeError):
    """Other draws held every slot, or the draw memory, for longer than ``DRAW_WAIT_S``."""


def image_resource(job_id: uuid.UUID | str, position: int) -> str:
    """What an original's URL's signature covers: one item's original."""
    return f"image/{job_id}/{position}"


def overlay_resource(job_id: uuid.UUID | str, position: int) -> str:
    """What an overlay URL's signature covers: one item's overlay."""
    return f"overlay/{job_id}/{position}"


def item_overlay(
    session: Session,
    store: ObjectStore,
    *,
    job_id: uuid.UUID,
    position: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> bytes | None:
    """The overlay PNG of the job's item at ``position``, drawn and stored if it is the first ask;
    None when the item has none (not classified, failed, or its job asked for no overlays).

    Two first requests at once both draw it: the same bytes under the same key, so either write wins.
    """
    item = session.exec(select(JobItem).where(JobItem.job_id == job_id, JobItem.position == position)).first()
    if item is None or item.status != ItemStatus.DONE:
        return None
    if item.overlay_key:
        try:
            return store.get(item.overlay_key)
        except ObjectNotFound:
            logger.warning("item %s: overlay %s is gone; drawing it again", item.id, item.overlay_key)
    if not item.cam_grid:
        return None
    try:
        with ExitStack() as held:
            if not _drawing.acquire(timeout=DRAW_WAIT_S):
                raise OverlayBusy(f"{DRAW_SLOTS} overlays are being drawn; retry shortly")
            held.callback(_drawing.release)
            original = read_original(store, item, max_bytes)
            if not same_original(item, original):
                # Replaced after it was classified (a presigned URL outlives the start): its map is of
                # other pixels, and none is drawn on these.
                raise ImageError("the original was replaced after it was classified")
            # The size its worker decoded (rows from before sizes were kept: the most it could be).
            width, height = (item.width, item.height) if item.width and item.height else (max_pixels, 1)
            cost = draw_cost(original, width, height)
            try:
                _draw_memory.acquire(cost)
            except UploadBusy:
                raise OverlayBusy(f"overlays being drawn hold {_draw_memory.used} bytes; retry shortly") from None
            held.callback(_draw_memory.release, cost)
            png = render_overlay(original, item.cam_grid, max_pixels=max_pixels)
    except (ObjectNotFound, ObjectTooLarge, ImageError) as e:
        # The original decoded when it was classified: only retention or an operator removes it.
        logger.warning("item %s: cannot draw its overlay: %s", item.id, e)
        return None
    key = overlay_key(job_id, position)
    store.put(key, png, content_type="image/png")
    session.exec(update(JobItem).where(col(JobItem.id) == item.id).values(overlay_key=key))
    session.commit()
    return png
