"""Presigned object URLs of the embedded setup (objects in a local folder, no S3 server).

With an S3 endpoint configured, presigned URLs point at the S3 server and this router answers 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status

from api.deps import SettingsDep, StoreDep
from fakescope.storage import LocalStore, ObjectNotFound, verify_local_signature

router = APIRouter(prefix="/objects", tags=["objects"], include_in_schema=False)

OBJECT_NOT_FOUND = "Object not found"
BAD_SIGNATURE = "Invalid or expired signature"


def _signed_local(
    request: Request,
    key: str,
    store: StoreDep,
    settings: SettingsDep,
    expires: Annotated[int, Query()],
    signature: Annotated[str, Query()],
) -> LocalStore:
    """The embedded store, once the URL's signature of the request's method and key checks out."""
    if not isinstance(store, LocalStore):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=OBJECT_NOT_FOUND)
    if not verify_local_signature(settings, request.method, key, expires, signature):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=BAD_SIGNATURE)
    return store


SignedLocal = Annotated[LocalStore, Depends(_signed_local)]


@router.get("/{key:path}")
def get_object(key: str, local: SignedLocal) -> Response:
    try:
        data = local.get(key)
    except ObjectNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=OBJECT_NOT_FOUND) from None
    return Response(data, media_type="image/png" if key.endswith(".png") else "application/octet-stream")


@router.put("/{key:path}", status_code=status.HTTP_200_OK)
async def put_object(key: str, request: Request, local: SignedLocal, settings: SettingsDep) -> Response:
    # Written to disk as it arrives, never held whole: a 2 GiB shard PUT is 2 GiB of file, not of memory.
    tmp, path = local.staging(key)
    size = 0
    try:
        with tmp.open("wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail="Object too large")
                f.write(chunk)
        tmp.replace(path)  # atomic: a reader never sees half an object
    finally:
        tmp.unlink(missing_ok=True)
    return Response(status_code=status.HTTP_200_OK)
