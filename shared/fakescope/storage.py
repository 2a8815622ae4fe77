"""Object storage for originals and overlays: an S3 bucket (MinIO), or a local folder with no server.

Keys are deterministic (:func:`original_key`, :func:`overlay_key`), so a task that runs twice
overwrites the same object instead of leaving a second copy.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import quote, urlencode, urlsplit

from fakescope.settings import Settings

__all__ = [
    "LocalStore",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectTooLarge",
    "S3Store",
    "StorageError",
    "get_store",
    "original_key",
    "overlay_key",
    "verify_local_signature",
]

logger = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """The object store cannot be reached or refused a request."""


class ObjectNotFound(KeyError):
    """No object under that key."""


class ObjectTooLarge(ValueError):
    """The object is larger than the reader allows; nothing past the limit was read."""


def original_key(job_id: uuid.UUID | str, position: int) -> str:
    return f"jobs/{job_id}/originals/{position:07d}"


def shard_key(job_id: uuid.UUID | str, window: int) -> str:
    """One upload window's originals, concatenated (each item's row says where its bytes lie)."""
    return f"jobs/{job_id}/shards/{window:05d}"


def overlay_key(job_id: uuid.UUID | str, position: int) -> str:
    return f"jobs/{job_id}/overlays/{position:07d}.png"


class _PartsReader(io.RawIOBase):
    """A file over a sequence of byte strings, read in order: an object's body from its parts."""

    def __init__(self, parts: Sequence[bytes]) -> None:
        self._parts = [memoryview(p) for p in parts if p]
        self._i = 0
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        out = memoryview(buf).cast("B")
        n = 0
        while n < len(out) and self._i < len(self._parts):
            part = self._parts[self._i]
            take = min(len(out) - n, len(part) - self._pos)
            out[n : n + take] = part[self._pos : self._pos + take]
            n += take
            self._pos += take
            if self._pos == len(part):
                self._i, self._pos = self._i + 1, 0
        return n


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def put_parts(self, key: str, parts: Sequence[bytes]) -> None: ...
    def get(self, key: str, max_bytes: int | None = None) -> bytes: ...
    def get_range(self, key: str, offset: int, length: int) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int | None: ...
    def delete(self, keys: Sequence[str]) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def presign_get(self, key: str, expires_s: int) -> str: ...
    def presign_put(self, key: str, expires_s: int) -> str: ...
    def ping(self) -> None: ...
    def ensure_bucket(self) -> None: ...


class S3Store:
    """A bucket on an S3 server through the ``minio`` client.

    Presigned URLs are signed for ``s3_public_endpoint`` when set: inside compose the API reaches
    MinIO as ``minio:9000`` while clients reach it as ``localhost:9000``, and the host is signed.
    """

    def __init__(self, settings: Settings) -> None:
        import urllib3
        from minio import Minio

        assert settings.s3.endpoint is not None
        self.bucket = settings.s3.bucket
        # minio's own default waits 5 minutes to connect: an endpoint that drops packets would hold a
        # task or an upload that long. Fail fast instead (the callers retry StorageError with backoff);
        # enough pooled connections for the upload and overlay threads.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=settings.s3.connect_timeout_s, read=settings.s3.read_timeout_s),
            maxsize=16,
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )

        def client(endpoint: str) -> Minio:
            u = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
            return Minio(
                u.netloc,
                access_key=settings.s3.access_key,
                secret_key=settings.s3.secret_key,
                secure=u.scheme == "https",
                region=settings.s3.region,
                http_client=http,
            )

        self.client = client(settings.s3.endpoint)
        self.public = client(settings.s3.public_endpoint) if settings.s3.public_endpoint else self.client

    def _errors(self) -> tuple[type[BaseException], ...]:
        from minio.error import MinioException
        from urllib3.exceptions import HTTPError

        return (MinioException, HTTPError, OSError)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        except self._errors() as e:
            raise StorageError(f"cannot store {key}: {e}") from e

    def put_parts(self, key: str, parts: Sequence[bytes]) -> None:
        """Stores the concatenation of ``parts`` as one object without first joining them in memory."""
        try:
            body = cast(BinaryIO, _PartsReader(parts))
            self.client.put_object(self.bucket, key, body, sum(len(p) for p in parts))
        except self._errors() as e:
            raise StorageError(f"cannot store {key}: {e}") from e

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        from minio.error import S3Error

        try:
            resp = self.client.get_object(self.bucket, key)
            try:
                # Never more than the cap in memory: a presigned upload can be any size.
                data = resp.read() if max_bytes is None else resp.read(max_bytes + 1)
                if max_bytes is not None and len(data) > max_bytes:
                    raise ObjectTooLarge(f"{key} is over the limit of {max_bytes} bytes")
                return data
            finally:
                resp.close()
                resp.release_conn()
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFound(key) from e
            raise StorageError(f"cannot read {key}: {e}") from e
        except self._errors() as e:
            raise StorageError(f"cannot read {key}: {e}") from e

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes of the object from ``offset``: one ranged GET.

        Raises:
            ObjectNotFound: no such object, or it is shorter than the range.
        """
        from minio.error import S3Error

        if length <= 0:
            return b""
        try:
            resp = self.client.get_object(self.bucket, key, offset=offset, length=length)
            try:
                data = resp.read(length + 1)
            finally:
                resp.close()
                resp.release_conn()
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject", "InvalidRange"):
                raise ObjectNotFound(key) from e
            raise StorageError(f"cannot read {key}: {e}") from e
        except self._errors() as e:
            raise StorageError(f"cannot read {key}: {e}") from e
        if len(data) != length:
            raise ObjectNotFound(f"{key} has no bytes {offset}-{offset + length - 1}")
        return data

    def delete(self, keys: Sequence[str]) -> None:
        """Deletes ``keys`` (missing ones are no error), up to 1,000 a request."""
        from minio.deleteobjects import DeleteObject

        try:
            errors = list(self.client.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
        except self._errors() as e:
            raise StorageError(f"cannot delete {len(keys)} objects: {e}") from e
        if errors:
            raise StorageError(f"cannot delete {len(errors)} of {len(keys)} objects: {errors[0]}")

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is none (a HEAD request: nothing is read)."""
        from minio.error import S3Error

        try:
            return int(self.client.stat_object(self.bucket, key).size or 0)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"):
                return None
            raise StorageError(f"cannot stat {key}: {e}") from e
        except self._errors() as e:
            raise StorageError(f"cannot stat {key}: {e}") from e

    def list(self, prefix: str) -> list[str]:
        return sorted(o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True))

    def presign_get(self, key: str, expires_s: int) -> str:
        return self.public.presigned_get_object(self.bucket, key, expires=timedelta(seconds=expires_s))

    def presign_put(self, key: str, expires_s: int) -> str:
        return self.public.presigned_put_object(self.bucket, key, expires=timedelta(seconds=expires_s))

    def ping(self) -> None:
        try:
            if not self.client.bucket_exists(self.bucket):
                raise StorageError(f"bucket {self.bucket} does not exist")
        except self._errors() as e:
            raise StorageError(str(e)) from e

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)


def sign_url(secret: str, method: str, key: str, expires: int) -> str:
    """The signature of a URL that lets ``method`` on ``key`` until ``expires`` (Unix time) without a key."""
    return _sign(secret, method, key, expires)


def verify_url(secret: str, method: str, key: str, expires: int, signature: str) -> bool:
    """Whether ``signature`` is :func:`sign_url`'s for these, and ``expires`` is still ahead."""
    if not signature.isascii():
        return False  # compare_digest refuses non-ASCII strings; no signature of ours is one
    return expires >= time.time() and hmac.compare_digest(_sign(secret, method, key, expires), signature)


def _sign(secret: str, method: str, key: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"{method}\n{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def verify_local_signature(settings: Settings, method: str, key: str, expires: int, signature: str) -> bool:
    """Whether a URL made by :meth:`LocalStore.presign_get`/``presign_put`` is genuine and unexpired."""
    return verify_url(settings.secret_key, method, key, expires, signature)


class LocalStore:
    """Objects as files under ``data_dir/objects``; the API serves the presigned URLs (``/objects/...``)."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.objects_dir
        self.settings = settings

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ObjectNotFound(key)
        return path

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a reader never sees half an object

    def put_parts(self, key: str, parts: Sequence[bytes]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        with tmp.open("wb") as f:
            for part in parts:
                f.write(part)
        tmp.replace(path)

    def staging(self, key: str) -> tuple[Path, Path]:
        """``(temporary file, object's file)`` for writing ``key`` piece by piece: write the first,
        then ``replace`` it onto the second (atomic, as ``put``)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(f".{path.name}.{uuid.uuid4().hex}"), path

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        try:
            path = self._path(key)
            if max_bytes is not None and path.stat().st_size > max_bytes:
                raise ObjectTooLarge(f"{key} is over the limit of {max_bytes} bytes")
            return path.read_bytes()
        except FileNotFoundError as e:
            raise ObjectNotFound(key) from e

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            with self._path(key).open("rb") as f:
                f.seek(offset)
                data = f.read(length)
        except FileNotFoundError as e:
            raise ObjectNotFound(key) from e
        if len(data) != length:
            raise ObjectNotFound(f"{key} has no bytes {offset}-{offset + length - 1}")
        return data

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        if not self.root.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not Path(k).name.startswith("."))

    def _presign(self, method: str, key: str, expires_s: int) -> str:
        expires = int(time.time()) + expires_s
        query = urlencode({"expires": expires, "signature": _sign(self.settings.secret_key, method, key, expires)})
        return f"{self.settings.public_url.rstrip('/')}/objects/{quote(key)}?{query}"

    def presign_get(self, key: str, expires_s: int) -> str:
        return self._presign("GET", key, expires_s)

    def presign_put(self, key: str, expires_s: int) -> str:
        return self._presign("PUT", key, expires_s)

    def ping(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def ensure_bucket(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)


def get_store(settings: Settings) -> ObjectStore:
    return S3Store(settings) if settings.s3.endpoint else LocalStore(settings)
