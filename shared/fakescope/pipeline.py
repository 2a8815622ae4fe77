"""The classification pipeline that ``fakescope scan`` and the classify workers both run.

Inputs are decoded (on a small thread pool ahead of the model, or in line where the model runs on a
single CPU thread), grouped into batches, classified, and GradCAM overlays rendered; results come
back in input order, one per input, each either a verdict or an error.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch

from fakescope.detector import Analysis, Detector, RoutedDetector
from fakescope.imageio import DEFAULT_MAX_PIXELS, ImageError, InputItem, decode_image
from fakescope.overlay import display_image, grid_record, overlay_png
from fakescope.provenance import provenance_summary, read_provenance
from fakescope.result import RESULT_FIELDS, ResultContract
from fakescope.timelimit import TimeLimitExceeded, call_with_time_limit

__all__ = ["IMAGE_TIME_LIMIT_ERROR", "DecodedImage", "ImageResult", "classify_items", "decode_item"]

logger = logging.getLogger(__name__)

# Threads encoding overlay PNGs while the model runs on the next batch.
RENDER_THREADS = 2


@dataclass
class DecodedImage:
    """An input ready for the model, or the reason it is not."""

    name: str
    sha256: str | None = None
    model_input: np.ndarray | None = None
    display: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    provenance: dict[str, Any] | None = None
    # Which of the detector's members answers it (fakescope.detector.RoutedDetector; 0 for a plain one).
    route: int = 0


@dataclass
class ImageResult:
    """One input's answer: ``prediction`` and ``fake_probability``, or ``error``."""

    name: str
    prediction: str | None = None
    fake_probability: float | None = None
    error: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    overlay_png: bytes | None = None
    # The GradCAM grid and the input size its map is drawn at (fakescope.overlay.grid_record): what a
    # result row keeps, so its overlay is drawn only when someone asks for it.
    cam_grid: dict[str, Any] | None = None
    # What the file declares about its origin (fakescope.provenance); ``decided_by`` is "provenance"
    # when that declaration (a valid C2PA manifest, IPTC or generator metadata) says it was generated,
    # which makes the prediction "fake" while ``fake_probability`` stays the detector's own.
    provenance: dict[str, Any] | None = None
    decided_by: str | None = None
    # Distance from the training distribution over the checkpoint's threshold (fakescope.domain):
    # above 1 the image is out of domain. None when the checkpoint has no domain model.
    domain_score: float | None = None
    # The checkpoint that answered: for a routed detector, the member the image was routed to.
    model_version: str | None = None
    cam: np.ndarray | None = None
    model_input: np.ndarray | None = None
    display: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def in_domain(self) -> bool | None:
        return None if self.domain_score is None else self.domain_score <= 1.0

    def contract(self) -> ResultContract:
        """The result as every reader takes it (fakescope.result): provenance summarised, arrays dropped."""
        values = {name: getattr(self, name) for name in RESULT_FIELDS}
        values["provenance"] = provenance_summary(self.provenance)
        return ResultContract(**values)


def decode_item(
    item: InputItem,
    detector: Detector | RoutedDetector,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    trust_anchors_pem: str | None = None,
    display: bool = True,
    time_limit_s: float | None = None,
) -> DecodedImage:
    """Reads and decodes one input; any problem with the input becomes ``error``.

    A failure to *reach* the input (the object store down: ``StorageError``) is not the input's
    fault and propagates, so the task retries it; a failure while *decoding* it never does.
    ``time_limit_s``: the work on its bytes (decoding, preparing, provenance) is stopped past this and
    the input fails alone (None: no limit); reading them is bounded by the store's own timeouts.
    """
    try:
        data = item.read()
    except ImageError as e:
        return DecodedImage(name=item.name, error=str(e))
    except OSError as e:
        # Unreadable file (permissions, vanished): an error for this input, not for the batch.
        return DecodedImage(name=item.name, error=f"cannot read file: {e.strerror or e}")
    try:
        return call_with_time_limit(
            time_limit_s, lambda: _decode_bytes(item.name, data, detector, max_pixels, trust_anchors_pem, display)
        )
    except TimeLimitExceeded:
        # One image's bytes may cost tens of seconds (a parser's worst case): it fails, its chunk goes on.
        return DecodedImage(name=item.name, error=f"{IMAGE_TIME_LIMIT_ERROR} of {time_limit_s:g} s")
    except ImageError as e:
        return DecodedImage(name=item.name, error=str(e))
    except Exception as e:
        # Untrusted bytes: a parser bug fails this image, not its batch or its worker's chunk. Logged
        # here, outside the time limit: logging takes locks the limit's exception must not land inside.
        logger.exception("unexpected error decoding %s", item.name)
        return DecodedImage(name=item.name, error=f"cannot decode image: {type(e).__name__}: {e}")


# What a stopped image's error starts with (fakescope.observability counts it under its own reason).
IMAGE_TIME_LIMIT_ERROR = "decoding the image took longer than the per-image time limit"


def _decode_bytes(
    name: str,
    data: bytes,
    detector: Detector | RoutedDetector,
    max_pixels: int,
    trust_anchors_pem: str | None,
    display: bool,
) -> DecodedImage:
    im = decode_image(data, max_pixels=max_pixels)
    route = detector.route(im.width, im.height)
    return DecodedImage(
        name=name,
        route=route,
        sha256=hashlib.sha256(data).hexdigest(),
        model_input=detector.members[route].prepare(im),
        display=display_image(im) if display else None,
        width=im.width,
        height=im.height,
        # From the bytes, never the pixels: stripping the metadata changes this, not the verdict's score.
        provenance=read_provenance(data, trust_anchors_pem=trust_anchors_pem).to_dict(),
    )


def _batched(it: Iterable[DecodedImage], n: int) -> Iterator[list[DecodedImage]]:
    it = iter(it)
    while chunk := list(islice(it, n)):
        yield chunk


def classify_items(
    detector: Detector | RoutedDetector,
    items: Iterable[InputItem],
    *,
    batch_size: int = 64,
    overlays: bool = True,
    grids: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode_threads: int | None = None,
    keep_arrays: bool = False,
    model_seconds: Callable[[float], None] | None = None,
    trust_anchors_pem: str | None = None,
    image_time_limit_s: float | None = None,
) -> Iterator[ImageResult]:
    """Classifies ``items`` in batches and yields one :class:`ImageResult` per item, in order.

    Args:
        detector: the loaded detector.
        items: inputs, e.g. from :func:`fakescope.imageio.iter_inputs`.
        batch_size: images per forward pass.
        overlays: render the GradCAM overlay PNG of each image.
        grids: keep each image's GradCAM grid (``cam_grid``), from which
            :func:`fakescope.overlay.render_overlay` draws that PNG later, identical
            (for a JPEG at least twice ``OVERLAY_MAX_SIDE`` on both sides, from a reduced decode: the
            same map).
        max_pixels: larger images are refused before they are decoded.
        decode_threads: threads decoding ahead of the model. None: none where the model runs on one
            CPU thread (a classify worker's share of the cores), two elsewhere. A single-thread model
            has nothing to overlap decoding with, and a decoding thread beside it only adds GIL
            hand-offs; in the job service's paired benchmark runs decoding in line was as fast or
            faster, and steadier (ops/bench/README.md, 2026-12-02). On a GPU, or with several model
            threads, the threads overlap work.
        trust_anchors_pem: the C2PA trust list (PEM certificates) a manifest's signer is checked
            against (``provenance.c2pa.trusted``); None: no list, ``trusted`` is None.
        image_time_limit_s: how long one image's decoding, preparing and provenance reading may take
            before that image fails alone with its own error (None: no limit).
        keep_arrays: keep the model input, the display-size image (at most ``OVERLAY_MAX_SIDE`` a
            side) and the GradCAM map on each result, for the explainers.
        model_seconds: called with the seconds of each forward pass (the workers pass their
            Prometheus histogram's ``observe``); None: not measured.
    """
    if decode_threads is None:
        decode_threads = 0 if detector.device.type == "cpu" and torch.get_num_threads() == 1 else 2
    # The display-size copy only where an overlay or an explainer will use it.
    need_display = overlays or keep_arrays
    # A version hashes its checkpoint's metadata: once a call, not once an image.
    versions = detector.model_versions

    def decode(item: InputItem) -> DecodedImage:
        return decode_item(item, detector, max_pixels, trust_anchors_pem, need_display, image_time_limit_s)

    def decoded() -> Iterator[DecodedImage]:
        if not decode_threads:
            yield from map(decode, items)
            return
        # Executor.map submits everything at once; a window of futures keeps the look-ahead to a few
        # batches so a million-image scan does not hold a million images.
        with ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode") as pool:
            window = 4 * batch_size
            pending: deque[Future[DecodedImage]] = deque()
            for item in items:
                pending.append(pool.submit(decode, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    with ThreadPoolExecutor(max_workers=RENDER_THREADS, thread_name_prefix="overlay") as render:
        # Overlays of one batch are encoded on other threads (zlib releases the GIL) while the model
        # runs on the next: results come out one batch behind the model.
        previous: list[tuple[ImageResult, Future[bytes] | None]] = []
        for chunk in _batched(decoded(), batch_size):
            good = [d for d in chunk if d.error is None]
            analyses = _analyze_routes(
                detector,
                good,
                cams=overlays or grids or keep_arrays,
                maps=overlays or keep_arrays,
                model_seconds=model_seconds,
            )
            current: list[tuple[ImageResult, Future[bytes] | None]] = []
            for d in chunk:
                if d.error is not None:
                    current.append((ImageResult(name=d.name, error=d.error), None))
                    continue
                assert d.display is not None or not need_display  # set whenever there is no error and it is needed
                member = detector.members[d.route]
                analysis, k = analyses[id(d)]
                p = float(analysis.probs[k])
                cam = analysis.cams[k] if analysis.cams is not None else None
                domain, cell_grids = analysis.domain, analysis.grids
                declared = bool(d.provenance and d.provenance.get("declares_ai"))
                res = ImageResult(
                    name=d.name,
                    prediction="fake" if p >= 0.5 or declared else "real",
                    fake_probability=p,
                    provenance=d.provenance,
                    decided_by="provenance" if declared else "detector",
                    sha256=d.sha256,
                    width=d.width,
                    height=d.height,
                    domain_score=float(domain[k]) if domain is not None else None,
                    model_version=versions[d.route],
                    cam=cam if keep_arrays else None,
                    model_input=d.model_input if keep_arrays else None,
                    display=d.display if keep_arrays else None,
                    cam_grid=grid_record(cell_grids[k], member.input_size)
                    if grids and cell_grids is not None
                    else None,
                )
                png = (
                    render.submit(overlay_png, d.display, cam)
                    if overlays and cam is not None and d.display is not None
                    else None
                )
                current.append((res, png))
            yield from _with_overlays(previous)
            previous = current
        yield from _with_overlays(previous)


def _analyze_routes(
    detector: Detector | RoutedDetector,
    good: list[DecodedImage],
    *,
    cams: bool,
    maps: bool,
    model_seconds: Callable[[float], None] | None,
) -> dict[int, tuple[Analysis, int]]:
    """Each decoded image's analysis and its row in it: one forward pass per route of the batch."""
    out: dict[int, tuple[Analysis, int]] = {}
    for route, member in enumerate(detector.members):
        group = [d for d in good if d.route == route]
        if not group:
            continue
        batch = np.stack([d.model_input for d in group])  # type: ignore[misc]
        t0 = time.perf_counter()
        sizes = [(d.width or 0, d.height or 0) for d in group]
        analysis = member.analyze(batch, cams=cams, sizes=sizes, maps=maps)
        if model_seconds is not None:
            model_seconds(time.perf_counter() - t0)
        out.update((id(d), (analysis, k)) for k, d in enumerate(group))
    return out


def _with_overlays(results: list[tuple[ImageResult, Future[bytes] | None]]) -> Iterator[ImageResult]:
    for res, png in results:
        if png is not None:
            res.overlay_png = png.result()
        yield res
