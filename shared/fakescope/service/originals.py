"""Reading an item's original back: a whole object (a presigned upload) or its range of a shard."""

from __future__ import annotations

from fakescope.db.models import JobItem
from fakescope.imageio import DEFAULT_MAX_BYTES
from fakescope.storage import ObjectStore, ObjectTooLarge

__all__ = ["read_original"]


def read_original(store: ObjectStore, item: JobItem, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The item's original bytes, never more than ``max_bytes`` of them read.

    Raises:
        ObjectNotFound: the object (or its range) is gone.
        ObjectTooLarge: it is over ``max_bytes``.
        StorageError: the object store cannot be reached.
    """
    if item.object_offset is not None and item.object_length is not None:
        if item.object_length > max_bytes:
            raise ObjectTooLarge(f"{item.object_key} is over the limit of {max_bytes} bytes")
        return store.get_range(item.object_key, item.object_offset, item.object_length)
    return store.get(item.object_key, max_bytes=max_bytes)
