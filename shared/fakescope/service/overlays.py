"""Overlays drawn on demand: the first request for an item's overlay draws it from the original and
the GradCAM grid its worker kept, stores it, and every later one reads it back.

Workers no longer encode a PNG per image nobody may look at, nor put it in the object store; a
platform that reads verdicts only pays for neither. Torch-free: the API runs this.
"""

from __future__ import annotations

import logging
import threading
import uuid

from sqlalchemy import update
from sqlmodel import Session, col, select

from fakescope.db.models import ItemStatus, JobItem
from fakescope.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageError
from fakescope.overlay import render_overlay
from fakescope.service.originals import read_original, same_original
from fakescope.storage import ObjectNotFound, ObjectStore, ObjectTooLarge, overlay_key

__all__ = ["image_resource", "item_overlay", "overlay_resource"]

logger = logging.getLogger(__name__)

# Overlays a process draws at once. A draw decodes the whole original (up to the pixel limit, a few
# hundred MB for the largest), and the signed URLs that ask for them are not rate-limited by key:
# twelve keyless GETs at once once grew the API by 2.7 GB. The rest wait their turn.
DRAW_SLOTS = 2
_drawing = threading.BoundedSemaphore(DRAW_SLOTS)


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
        with _drawing:
            original = read_original(store, item, max_bytes)
            if not same_original(item, original):
                # Replaced after it was classified (a presigned URL outlives the start): its map is of
                # other pixels, and none is drawn on these.
                raise ImageError("the original was replaced after it was classified")
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
