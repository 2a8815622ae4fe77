"""Reading items' originals back: a whole object (a presigned upload) or its range of a shard, and a
chunk's originals with one ranged read per shard (what a classify or explain task reads)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

from fakescope.db.models import JobItem
from fakescope.fetch import fetch_image
from fakescope.imageio import DEFAULT_MAX_BYTES, ImageError, InputItem, sniff_media_type
from fakescope.settings import FetchSettings
from fakescope.storage import ObjectNotFound, ObjectStore, ObjectTooLarge

__all__ = ["MAX_SHARD_GAP", "chunk_inputs", "read_original", "same_original", "store_input", "url_input"]


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


def same_original(item: JobItem, data: bytes) -> bool:
    """Whether ``data`` are the bytes the item was classified from (its SHA-256), so a result is never
    shown over other pixels: a presigned upload URL stays valid after the job starts, and what is
    PUT through it later replaces the object, not the verdict. True when the item has no hash yet."""
    return item.sha256 is None or hashlib.sha256(data).hexdigest() == item.sha256


def store_input(store: ObjectStore, item: JobItem, max_bytes: int | None = None) -> InputItem:
    """The item's original, read from the object store when the pipeline asks for it, never more
    than ``max_bytes`` of it (default: the per-image limit; a presigned upload can be any size)."""
    limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes

    def read() -> bytes:
        try:
            return read_original(store, item, limit)
        except ObjectNotFound:
            raise ImageError("original image is missing from object storage") from None
        except ObjectTooLarge:
            raise ImageError(f"file is over the limit of {limit} bytes") from None

    return InputItem(item.name, read)


# Items of one shard closer than this are read with one ranged GET, the gap read and dropped.
MAX_SHARD_GAP = 1024 * 1024


def url_input(store: ObjectStore, item: JobItem, fetch: FetchSettings) -> InputItem:
    """The item's image fetched from its ``source_url`` when the pipeline asks for it, and stored as
    its original (the report's image and the overlay are drawn from it later). A URL that fails
    raises :class:`ImageError` with the reason, which fails this item only."""
    assert item.source_url is not None

    def read() -> bytes:
        data = fetch_image(item.source_url or "", fetch)
        store.put(item.object_key, data, sniff_media_type(data))
        return data

    return InputItem(item.name, read)


def chunk_inputs(
    store: ObjectStore, items: Sequence[JobItem], max_bytes: int | None = None, fetch: FetchSettings | None = None
) -> list[InputItem]:
    """The originals of a chunk's items, with one ranged GET per run of neighbours in a shard (one
    request for a chunk of an upload window, where it was one per image); items stored whole (a
    presigned upload) are read one by one when the pipeline asks for them.

    A missing shard fails its items with the same reason a missing original does; an object store
    that cannot be reached raises (the task retries).
    """
    limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    data: dict[uuid.UUID, bytes | ImageError] = {}
    runs: dict[str, list[JobItem]] = {}
    for it in items:
        if it.source_url is not None or it.object_offset is None or it.object_length is None:
            continue
        if it.object_length > limit:
            data[it.id] = ImageError(f"file is over the limit of {limit} bytes")
            continue
        runs.setdefault(it.object_key, []).append(it)
    for key, members in runs.items():
        members.sort(key=lambda i: i.object_offset or 0)
        run: list[JobItem] = []
        following: list[JobItem | None] = [*members, None]
        for nxt in following:
            if run and (nxt is None or (nxt.object_offset or 0) - _end(run[-1]) > MAX_SHARD_GAP):
                start = run[0].object_offset or 0
                try:
                    body = store.get_range(key, start, max(_end(i) for i in run) - start)
                except ObjectNotFound:
                    for i in run:
                        data[i.id] = ImageError("original image is missing from object storage")
                else:
                    for i in run:
                        off = (i.object_offset or 0) - start
                        data[i.id] = body[off : off + (i.object_length or 0)]
                run = []
            if nxt is not None:
                run.append(nxt)

    def from_chunk(it: JobItem) -> InputItem:
        got = data[it.id]

        def read() -> bytes:
            if isinstance(got, ImageError):
                raise got
            return got

        return InputItem(it.name, read)

    def one(it: JobItem) -> InputItem:
        if it.source_url is not None:
            if fetch is None:
                data[it.id] = ImageError("image URLs are not fetched by this process")
                return from_chunk(it)
            return url_input(store, it, fetch)
        return from_chunk(it) if it.id in data else store_input(store, it, max_bytes)

    return [one(it) for it in items]


def _end(item: JobItem) -> int:
    return (item.object_offset or 0) + (item.object_length or 0)
