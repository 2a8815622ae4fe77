"""A Python client of the fakescope job service: submit images, wait, fetch what ``fakescope scan`` writes.

Importable without torch (httpx, Pillow and numpy only)::

    from fakescope.client import FakescopeClient

    with FakescopeClient("http://127.0.0.1:8000") as fs:        # key: $FAKESCOPE_API_KEY or the config file
        job = fs.submit(["photos/", "batch.zip"], idempotency_key="batch-2026-11-28")
        job = fs.wait(job["id"])
        fs.download(job["id"], "out/")                          # results.jsonl, task1.json, overlays/, report.html

Uploads take the presigned path: images packed into tar shards of up to 256 images or 64 MiB, one
PUT URL per shard, sent straight to the object store from a few threads, then ``start``. Images are
named exactly as ``fakescope scan`` names them (folders recursively, archive members as
``batch.zip/a.png``), so the files :meth:`download` writes are the ones a local scan of the same
paths writes. With an idempotency key a failed or interrupted submit
is resumed by calling it again: the API returns the same job and its URLs, and uploading again is harmless.

The API key is read from the ``api_key`` argument, ``$FAKESCOPE_API_KEY``, or the ``api_key`` field of
the JSON config file (``$FAKESCOPE_CLIENT_CONFIG``, default ``~/.config/fakescope/client.json``), never
from a command line.
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from fakescope.polling import backoff, poll

__all__ = ["ApiError", "FakescopeClient", "is_url", "load_config"]

DEFAULT_CONFIG = Path("~/.config/fakescope/client.json")
FINISHED = frozenset({"succeeded", "partially_succeeded", "failed", "cancelled"})
Progress = Callable[[int, int], None]


class ApiError(RuntimeError):
    """The API answered with an error status; ``status`` and ``detail`` say which and why."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


def load_config() -> dict[str, str]:
    """The client config file's fields (``api_url``, ``api_key``), or ``{}`` when there is none."""
    path = Path(os.environ.get("FAKESCOPE_CLIENT_CONFIG", DEFAULT_CONFIG)).expanduser()
    try:
        return {k: str(v) for k, v in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        return {}


def is_url(path: str | Path) -> bool:
    """Whether a command-line input names an image by URL rather than a file."""
    return isinstance(path, str) and path.startswith(("https://", "http://"))


def _thresholds(fake: float | None, real: float | None) -> dict[str, float]:
    """The operating point's fields a request sends: only those given (none: the tenant's default)."""
    return {k: v for k, v in (("fake_threshold", fake), ("real_threshold", real)) if v is not None}


# The longest one GET waits in all on 429s and 503s that say when to come back (Retry-After).
RETRY_AFTER_MAX_S = 600.0


def _get(http: httpx.Client, url: str, sleep: Callable[[float], None] = time.sleep, **kwargs: Any) -> httpx.Response:
    """``http.get(url)``, asked again after the Retry-After of a 429 or 503 until it is answered or
    :data:`RETRY_AFTER_MAX_S` were spent waiting; the last answer is returned either way.

    A job's signed overlay and image URLs are limited per job and per API process (a bulk download of a
    large job may meet either), and a key per minute: waiting as told is how a download completes.
    """
    waited = 0.0
    while True:
        r = http.get(url, **kwargs)
        told = r.headers.get("Retry-After", "")
        if r.status_code not in (429, 503) or not told.isdigit() or waited >= RETRY_AFTER_MAX_S:
            return r
        # A little jitter: the threads of one download, told the same second, do not all come back in it.
        wait = min(float(told), RETRY_AFTER_MAX_S - waited) + random.uniform(0, 0.5)
        sleep(wait)
        waited += wait


def _check(r: httpx.Response) -> httpx.Response:
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise ApiError(r.status_code, detail)
    return r


class FakescopeClient:
    """One API endpoint and key; a context manager that closes its connections."""

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        upload_threads: int = 8,
    ) -> None:
        cfg = load_config()
        url = api_url or os.environ.get("FAKESCOPE_API_URL") or cfg.get("api_url")
        key = api_key or os.environ.get("FAKESCOPE_API_KEY") or cfg.get("api_key")
        if not url:
            raise ValueError("no API URL: pass --api / api_url, or set FAKESCOPE_API_URL or api_url in the config file")
        if not key:
            raise ValueError("no API key: set FAKESCOPE_API_KEY, or api_key in the config file")
        self.api_url = url.rstrip("/")
        self.upload_threads = upload_threads
        self._http = httpx.Client(base_url=self.api_url, headers={"X-API-Key": key}, timeout=timeout)
        # Presigned URLs carry their own authority: no API key goes to the object store.
        self._plain = httpx.Client(timeout=timeout)

    def __enter__(self) -> FakescopeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        self._plain.close()

    # -- jobs -------------------------------------------------------------------------------------

    def submit(
        self,
        paths: Sequence[str | Path],
        *,
        explain: bool = False,
        overlays: bool = True,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        progress: Progress | None = None,
        shards: bool = True,
        fake_threshold: float | None = None,
        real_threshold: float | None = None,
    ) -> dict[str, Any]:
        """Uploads every image under ``paths`` into one job and starts it; returns the job.

        ``overlays=False`` asks for verdicts only, without GradCAM overlay PNGs. ``fake_threshold``
        and ``real_threshold``: the job's operating point (None for both: the tenant's default; see
        :meth:`set_operating_point`); between them a verdict is ``uncertain``. ``progress(done,
        total)`` is called as images finish uploading. ``shards`` (default): images are packed into
        uncompressed tar shards of up to 256 images or 64 MiB (in a temporary folder) and each shard
        is one PUT, instead of one PUT per image (``shards=False``).
        """
        from fakescope.imageio import iter_inputs

        items = list(iter_inputs(list(paths)))
        if not items:
            raise ValueError(f"no images under {', '.join(map(str, paths))}")
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        options = {
            "explain": explain,
            "overlays": overlays,
            "callback_url": callback_url,
            **_thresholds(fake_threshold, real_threshold),
        }
        if shards:
            return self._submit_shards(items, options, headers, progress)
        body = {"names": [it.name for it in items], **options}
        created = _check(self._http.post("/v1/jobs/uploads", json=body, headers=headers)).json()
        job = created["job"]
        if job["state"] != "awaiting_upload":
            return job  # an earlier call with this key got further: nothing left to upload
        by_position = {u["position"]: u["upload_url"] for u in created["uploads"]}

        def put(position: int) -> None:
            data = _read_or_none(items[position])
            if data is None:
                return  # unreadable here (too big, vanished): the job reports it as not uploaded
            self._put(by_position[position], data, len(data))

        done = 0
        with ThreadPoolExecutor(self.upload_threads, thread_name_prefix="upload") as pool:
            for f in [pool.submit(put, p) for p in range(len(items))]:
                f.result()
                done += 1
                if progress:
                    progress(done, len(items))
        return _check(self._http.post(created["start_url"])).json()

    def submit_urls(
        self,
        urls: Sequence[str],
        *,
        explain: bool = False,
        overlays: bool = True,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        fake_threshold: float | None = None,
        real_threshold: float | None = None,
    ) -> dict[str, Any]:
        """A job of images that already live somewhere (``POST /v1/jobs/urls``); returns the job,
        already queued. The service's workers fetch each URL; one that is refused or fails is a failed
        item with its reason (:meth:`failures`)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {
            "urls": list(urls),
            "explain": explain,
            "overlays": overlays,
            "callback_url": callback_url,
            **_thresholds(fake_threshold, real_threshold),
        }
        return _check(self._http.post("/v1/jobs/urls", json=body, headers=headers)).json()

    def _submit_shards(
        self, items: list[Any], options: dict[str, Any], headers: dict[str, str], progress: Progress | None
    ) -> dict[str, Any]:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="fakescope-shards-") as tmp:
            files, specs = _pack_shards(items, Path(tmp))
            body = {"shards": [{"members": members} for members in specs], **options}
            created = _check(self._http.post("/v1/jobs/uploads", json=body, headers=headers)).json()
            job = created["job"]
            if job["state"] != "awaiting_upload":
                return job  # an earlier call with this key got further: nothing left to upload
            urls = [u["upload_url"] for u in sorted(created["shard_uploads"], key=lambda u: u["index"])]

            def put(i: int) -> None:
                size = files[i].stat().st_size
                with files[i].open("rb") as f:
                    self._put(urls[i], iter(lambda: f.read(1024 * 1024), b""), size)

            done = 0
            # Fewer threads than for single images: each holds a shard's connection for longer.
            with ThreadPoolExecutor(min(self.upload_threads, 4), thread_name_prefix="upload") as pool:
                for i, f in enumerate([pool.submit(put, i) for i in range(len(files))]):
                    f.result()
                    done += len(specs[i])
                    if progress:
                        progress(done, len(items))
        return _check(self._http.post(created["start_url"])).json()

    def _put(self, url: str, content: bytes | Iterator[bytes], size: int) -> None:
        for attempt in range(4):
            try:
                _check(self._plain.put(url, content=content, headers={"Content-Length": str(size)}))
                return
            except (httpx.TransportError, ApiError) as e:
                if attempt == 3 or (isinstance(e, ApiError) and e.status < 500) or not isinstance(content, bytes):
                    raise
                time.sleep(0.5 * 2**attempt)

    def detect(
        self,
        path: str | Path,
        *,
        overlays: bool = True,
        fake_threshold: float | None = None,
        real_threshold: float | None = None,
    ) -> dict[str, Any]:
        """One image checked in the request (``POST /v1/detect``): the result object a job item has.
        ``path`` is a file, or an ``https://`` (or ``http://``) URL the service fetches.

        Raises:
            ApiError: 422 for a bad image (or URL), 503 when the service could not answer in time (retry later).
        """
        form = {"overlays": str(overlays).lower(), **_thresholds(fake_threshold, real_threshold)}
        if is_url(path):
            return _check(self._http.post("/v1/detect", data={**form, "url": str(path)})).json()
        p = Path(path)
        with p.open("rb") as f:
            r = self._http.post("/v1/detect", files={"file": (p.name, f)}, data=form)
        return _check(r).json()

    def operating_point(self) -> dict[str, Any]:
        """The tenant's default thresholds (``fake_threshold``, ``real_threshold``)."""
        return _check(_get(self._http, "/v1/operating-point")).json()

    def set_operating_point(self, fake_threshold: float, real_threshold: float | None = None) -> dict[str, Any]:
        """Sets the tenant's default for jobs and checks created from now on (those made earlier keep theirs)."""
        body = {"fake_threshold": fake_threshold, "real_threshold": real_threshold}
        return _check(self._http.put("/v1/operating-point", json=body)).json()

    def status(self, job_id: str) -> dict[str, Any]:
        return _check(_get(self._http, f"/v1/jobs/{job_id}")).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return _check(self._http.delete(f"/v1/jobs/{job_id}")).json()

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
        max_interval: float = 5.0,
    ) -> dict[str, Any]:
        """Polls until the job is finished, backing off from 0.25 s to ``max_interval``; returns it.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        state = ""

        def finished() -> dict[str, Any] | None:
            nonlocal state
            job = self.status(job_id)
            if progress:
                progress(job)
            state = job["state"]
            return job if state in FINISHED else None

        job = poll(finished, waits=backoff(0.25, 1.5, max_interval), timeout_s=timeout)
        if job is None:
            raise TimeoutError(f"job {job_id} still {state} after {timeout} s")
        return job

    def _pages(self, path: str, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = _check(_get(self._http, path, params={"offset": offset, "limit": page_size})).json()
            yield from page["data"]
            offset += len(page["data"])
            if not page["data"] or offset >= page["count"]:
                return

    # -- feedback ---------------------------------------------------------------------------------

    def give_feedback(self, job_id: str, position: int, label: str, note: str | None = None) -> dict[str, Any]:
        """Labels one classified image ``real`` or ``fake``; the same label again changes nothing."""
        body = {"label": label, "note": note}
        return _check(self._http.post(f"/v1/jobs/{job_id}/items/{position}/feedback", json=body)).json()

    def feedback(self) -> Iterator[dict[str, Any]]:
        """This tenant's feedback, oldest first, page by page."""
        return self._pages("/v1/feedback")

    def export_feedback(self, out_dir: str | Path) -> dict[str, int]:
        """Writes every labelled original under ``out_dir/REAL`` and ``out_dir/FAKE`` (the layout
        ``fakescope calibrate`` and ``fakescope train`` read), named ``<job>-<position>-<name>``; an
        item whose original is gone (past retention) is skipped. Returns the count per label."""
        out = Path(out_dir)
        counts = {"real": 0, "fake": 0, "skipped": 0}
        for f in self.feedback():
            folder = out / f["label"].upper()
            folder.mkdir(parents=True, exist_ok=True)
            r = _get(self._plain, f["image_url"]) if f.get("image_url") else None
            if r is None or r.status_code == 404:
                counts["skipped"] += 1
                continue
            name = Path(f["name"]).name or "image"
            (folder / f"{f['job_id'][:8]}-{f['position']}-{name}").write_bytes(_check(r).content)
            counts[f["label"]] += 1
        return counts

    # -- models (the service's admin tenants) ------------------------------------------------------

    def train_model(
        self, source: str, *, base: str | None = None, epochs: int | None = None, command: str | None = None
    ) -> dict[str, Any]:
        """Registers a fine-tune of the promoted version (or ``base``) on a labelled source."""
        body = {"source": source, "base": base, "epochs": epochs, "command": command}
        return _check(self._http.post("/v1/models/train", json=body)).json()

    def models(self) -> Iterator[dict[str, Any]]:
        """Every model version, newest first."""
        return self._pages("/v1/models")

    def model(self, version: str) -> dict[str, Any]:
        return _check(_get(self._http, f"/v1/models/{version}")).json()

    def promote_model(self, version: str) -> dict[str, Any]:
        return _check(self._http.post(f"/v1/models/{version}/promote")).json()

    def rollback_model(self) -> dict[str, Any]:
        return _check(self._http.post("/v1/models/rollback")).json()

    def shadow_model(self, version: str, on: bool = True) -> dict[str, Any]:
        """Starts (or stops) a candidate scoring a share of live traffic beside the promoted version."""
        return _check(self._http.post(f"/v1/models/{version}/shadow", params={"on": str(on).lower()})).json()

    def results(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Classified images in upload order, page by page."""
        return self._pages(f"/v1/jobs/{job_id}/results")

    def failures(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Images that could not be classified, each with its ``error``."""
        return self._pages(f"/v1/jobs/{job_id}/failures")

    def task_files(self, job_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``(task1, task2)`` in the task's format."""
        t1 = _check(_get(self._http, f"/v1/jobs/{job_id}/task1.json")).json()
        t2 = _check(_get(self._http, f"/v1/jobs/{job_id}/task2.json")).json()
        return t1, t2

    def download(self, job_id: str, out_dir: str | Path, *, thumbnails: bool = True) -> Path:
        """Writes what ``fakescope scan`` writes for the job's images into ``out_dir``.

        ``results.jsonl``, ``task1.json``, ``task2.json`` (when the job explained), ``overlays/``,
        ``thumbs/`` (made from the originals, as the scan makes them) and ``report.html``.
        """
        from fakescope.report import record_base, render_report
        from fakescope.result import result_record

        out = Path(out_dir)
        (out / "overlays").mkdir(parents=True, exist_ok=True)
        (out / "thumbs").mkdir(parents=True, exist_ok=True)
        job = self.status(job_id)
        rows = {r["position"]: ("ok", r) for r in self.results(job_id)}
        rows.update({f["position"]: ("error", f) for f in self.failures(job_id)})
        records: list[dict[str, Any]] = []
        fetch: list[tuple[str, Path]] = []
        model_version = ""
        for position in sorted(rows):
            kind, r = rows[position]
            rec = result_record(r["name"], error=r.get("error"))
            if kind == "ok":
                base = record_base(len(records), r["name"])
                overlay = thumbnail = None
                if r.get("overlay_url"):
                    overlay = f"overlays/{base}.png"
                    fetch.append((r["overlay_url"], out / overlay))
                if thumbnails and r.get("image_url"):
                    thumbnail = f"thumbs/{base}.png"
                    fetch.append((r["image_url"], out / thumbnail))
                rec = result_record(r["name"], result=r, overlay=overlay, thumbnail=thumbnail)
                model_version = r["model_version"] or model_version
                if job["explain"]:
                    rec["artifacts"] = r.get("explanation") or {}
                    if r.get("evidence") is not None:
                        rec["evidence"] = r["evidence"]
            records.append(rec)

        def get(url_path: tuple[str, Path]) -> None:
            url, path = url_path
            data = _check(_get(self._plain, url)).content
            if path.parent.name == "thumbs":
                data = _thumbnail(data)
            path.write_bytes(data)

        with ThreadPoolExecutor(self.upload_threads, thread_name_prefix="download") as pool:
            list(pool.map(get, fetch))
        with open(out / "results.jsonl", "w") as f:
            for rec in records:
                f.write(json.dumps({k: v for k, v in rec.items() if k != "thumbnail"}) + "\n")
        t1, t2 = self.task_files(job_id)
        files = ["results.jsonl", "task1.json"]
        (out / "task1.json").write_text(json.dumps(t1, indent=1) + "\n")
        if job["explain"]:
            (out / "task2.json").write_text(json.dumps(t2, indent=1) + "\n")
            files.append("task2.json")
        (out / "report.html").write_text(
            render_report(records, title=f"fakescope job {job_id}", model_version=model_version, files=files)
        )
        return out


# A shard the API accepts (fakescope.db.models.SHARD_MAX_ITEMS / SHARD_MAX_BYTES), less room for the
# tar's closing blocks and record padding.
SHARD_ITEMS = 256
SHARD_BYTES = 64 * 1024**2
_TAR_TAIL = 2 * 512 + 10240


def _read_or_none(item: Any) -> bytes | None:
    from fakescope.imageio import ImageError

    try:
        data: bytes = item.read()
    except (ImageError, OSError):
        return None
    return data


def _pack_shards(items: Sequence[Any], folder: Path) -> tuple[list[Path], list[list[dict[str, Any]]]]:
    """Packs the items into uncompressed tar files under ``folder``; returns the files and, for each,
    its members' names, data offsets and lengths, as ``POST /v1/jobs/uploads`` takes them.

    Members are named by their position (the real names travel in the request), so no name can
    upset a tar reader. An item that cannot be read here is still listed, with a range past the end
    of any shard, so the job reports it as not uploaded, as the one-URL-per-image path does.
    """
    import tarfile

    files: list[Path] = []
    specs: list[list[dict[str, Any]]] = []
    tar: tarfile.TarFile | None = None
    for position, item in enumerate(items):
        data = _read_or_none(item)
        if data is not None and len(data) + 2 * 512 + _TAR_TAIL > SHARD_BYTES:
            data = None  # larger than any shard can hold: the per-image limit refuses it anyway
        full = tar is not None and (
            len(specs[-1]) >= SHARD_ITEMS
            or (data is not None and tar.offset + 512 + len(data) + 512 + _TAR_TAIL > SHARD_BYTES)
        )
        if tar is None or full:
            if tar is not None:
                tar.close()
            files.append(folder / f"shard-{len(files):05d}.tar")
            tar = tarfile.open(files[-1], "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (closed when full, or below)
            specs.append([])
        if data is None:
            specs[-1].append({"name": item.name, "offset": SHARD_BYTES - 1, "length": 1})
            continue
        info = tarfile.TarInfo(f"{position:07d}")
        info.size = len(data)
        # The member's bytes follow its header (one 512-byte block for a short USTAR name).
        offset = tar.offset + len(info.tobuf(tarfile.USTAR_FORMAT, tar.encoding, tar.errors))
        tar.addfile(info, io.BytesIO(data))
        specs[-1].append({"name": item.name, "offset": offset, "length": len(data)})
    if tar is not None:
        tar.close()
    return files, specs


def _thumbnail(data: bytes) -> bytes:
    """The scan's thumbnail of an original: display size (384) first, then 160, as PNG."""
    from PIL import Image

    from fakescope.imageio import OVERLAY_MAX_SIDE, decode_image, to_rgb_array

    im = decode_image(data)
    display = im.copy()
    display.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
    thumb = Image.fromarray(to_rgb_array(display))
    thumb.thumbnail((160, 160))
    buf = io.BytesIO()
    thumb.save(buf, "PNG")
    return buf.getvalue()
