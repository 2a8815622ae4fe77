"""The embedded object store: atomic files, keys kept inside its folder, signed expiring URLs."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from fakescope.settings import Settings
from fakescope.storage import LocalStore, ObjectNotFound, ObjectStore, overlay_key, shard_key, verify_local_signature


def test_local_store_round_trip_and_signed_urls(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="s3cret", public_url="http://api.test")
    store = LocalStore(settings)
    key = overlay_key("job", 3)
    store.put(key, b"png")
    assert store.get(key) == b"png"
    assert store.list("jobs/job/") == [key]
    with pytest.raises(ObjectNotFound):
        store.get("jobs/other")
    with pytest.raises(ObjectNotFound):
        store.get("../../etc/passwd")

    url = urlsplit(store.presign_get(key, 60))
    assert url.netloc == "api.test" and url.path == f"/objects/{key}"
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert verify_local_signature(settings, "GET", key, int(q["expires"]), q["signature"])
    assert not verify_local_signature(settings, "PUT", key, int(q["expires"]), q["signature"])
    assert not verify_local_signature(settings, "GET", key + "x", int(q["expires"]), q["signature"])
    assert not verify_local_signature(settings, "GET", key, int(q["expires"]) + 1, q["signature"])
    expired = int(time.time()) - 1
    assert not verify_local_signature(settings, "GET", key, expired, q["signature"])


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_shards_are_written_from_parts_and_read_by_range(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "local":
        store: ObjectStore = LocalStore(Settings(data_dir=tmp_path, secret_key="s3cret"))
    else:
        store = request.getfixturevalue("service_env").store
    key = shard_key(f"job-{kind}-{time.time_ns()}", 0)
    parts = [b"a" * 10, b"", b"bc" * 300_000, b"d"]
    store.put_parts(key, parts)
    whole = b"".join(parts)
    assert store.get(key) == whole and store.size(key) == len(whole)
    assert store.get_range(key, 10, 600_000) == b"bc" * 300_000
    assert store.get_range(key, len(whole) - 1, 1) == b"d"
    with pytest.raises(ObjectNotFound):
        store.get_range(key, len(whole) - 1, 2)  # past the end: the range is not there
    with pytest.raises(ObjectNotFound):
        store.get_range(key + "-gone", 0, 1)


def test_an_embedded_object_put_is_written_as_it_arrives(tmp_path: Path) -> None:
    # The embedded store's PUT route read whole bodies into memory: a 2 GiB shard was 2 GiB of API.
    import tracemalloc

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api.deps import get_object_store
    from api.routes import objects
    from fakescope.settings import get_settings

    settings = Settings(data_dir=tmp_path, secret_key="s3cret", max_upload_bytes=64 * 1024**2)
    store = LocalStore(settings)
    app = FastAPI()
    app.include_router(objects.router)
    app.dependency_overrides[get_object_store] = lambda: store
    app.dependency_overrides[get_settings] = lambda: settings
    chunk = bytes(range(256)) * 4096  # 1 MiB
    url = urlsplit(store.presign_put("jobs/j/shards/0.tar", 60))
    with TestClient(app) as client:
        tracemalloc.start()
        r = client.put(f"{url.path}?{url.query}", content=iter([chunk] * 48))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert r.status_code == 200, r.text
        over = client.put(f"{url.path}?{url.query}", content=iter([chunk] * 65))
        assert over.status_code == 413
    assert store.get("jobs/j/shards/0.tar") == chunk * 48  # the refused one replaced nothing
    # The test client holds the whole body itself before sending it (48 MiB); the route now holds none
    # of it beyond a chunk (before: a second 48 MiB, a peak of 96 MiB).
    assert peak < 56 * 1024**2, peak
