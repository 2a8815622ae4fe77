"""``fakescope scan``: classify images on this machine, no services needed, and write every output.

Writes into ``out_dir``:
- ``results.jsonl``: one record per input (``file``, ``prediction``, ``fake_probability``, ``overlay``,
  ``error``, plus ``sha256``, ``width``, ``height``, ``model_version``, ``domain_score`` and ``in_domain``
  and, with explanations, ``artifacts``);
- ``task1.json`` (and ``task2.json`` with explanations) in the task's format;
- ``overlays/`` (GradCAM PNGs), ``thumbs/`` and ``report.html``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from fakescope.answers import AnswerEntry, detection_answers, explanation_answers
from fakescope.detector import Detector, RoutedDetector, load_detector
from fakescope.imageio import DEFAULT_MAX_PIXELS, iter_inputs
from fakescope.pipeline import ImageResult, classify_items
from fakescope.report import record_base, render_report
from fakescope.result import OperatingPoint, Verdict, result_record

__all__ = ["ScanSummary", "run_scan"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanSummary:
    out_dir: Path
    total: int
    fake: int
    real: int
    errors: int
    model_version: str
    uncertain: int = 0


def run_scan(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 32,
    overlays: bool = True,
    explain: bool = False,
    explain_backend: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    detector: Detector | RoutedDetector | None = None,
    point: OperatingPoint | None = None,
    image_time_limit_s: float | None = None,
) -> ScanSummary:
    """Scans ``paths`` (files, folders, zip/tar archives) and writes the outputs into ``out_dir``;
    verdicts at ``point`` (default: fake at 0.5, no uncertain band). ``image_time_limit_s``: one
    image's decoding and provenance reading is stopped past this, and that input gets an error while
    the scan goes on (None: no limit; ``fakescope scan`` passes ``FAKESCOPE_IMAGE_TIME_LIMIT_S``)."""
    point = point or OperatingPoint()
    out = Path(out_dir)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    detector = detector or load_detector(checkpoint, device=device)
    explainer = None
    if explain:
        from fakescope.explain import ExplainInput, ExplainInputError, explain_with_evidence, load_explainer

        explainer = load_explainer(explain_backend)

    items = list(iter_inputs(paths))
    records: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], ImageResult]] = []

    def flush() -> None:
        # Explain the fakes of a batch together: every backend is faster on batches. An image the
        # explainer cannot take gets its own explain_error; the others in the batch are explained.
        if explainer is not None and pending:
            ready = []
            for rec, r in pending:
                try:
                    ready.append((rec, ExplainInput.from_result(r)))
                except ExplainInputError as e:
                    rec["explain_error"] = str(e)
            explained = explain_with_evidence(explainer, [inp for _, inp in ready])
            for (rec, _), (artifacts, evidence) in zip(ready, explained, strict=True):
                rec["artifacts"] = artifacts
                if evidence is not None:
                    rec["evidence"] = evidence
        pending.clear()

    results = classify_items(
        detector,
        items,
        batch_size=batch_size,
        overlays=overlays,
        max_pixels=max_pixels,
        keep_arrays=True,
        image_time_limit_s=image_time_limit_s,
    )
    with open(out / "results.jsonl", "w") as jsonl:
        for i, r in enumerate(tqdm(results, total=len(items), desc="scan", unit="img", disable=not progress)):
            rec = result_record(r.name, error=r.error)
            if r.ok:
                base = record_base(i, r.name)
                overlay = thumbnail = None
                if r.overlay_png is not None:
                    overlay = f"overlays/{base}.png"
                    (out / overlay).write_bytes(r.overlay_png)
                if r.display is not None:
                    thumb = Image.fromarray(r.display)
                    thumb.thumbnail((160, 160))
                    thumbnail = f"thumbs/{base}.png"
                    thumb.save(out / thumbnail)
                contract = r.contract().decided(point)
                rec = result_record(r.name, result=contract, overlay=overlay, thumbnail=thumbnail)
                if explainer is not None:
                    rec["artifacts"] = {}
                    if contract.prediction == Verdict.FAKE:
                        pending.append((rec, r))
            records.append(rec)
            if len(pending) >= batch_size:
                flush()
        flush()
        for rec in records:
            jsonl.write(json.dumps({k: v for k, v in rec.items() if k != "thumbnail"}) + "\n")

    files = ["results.jsonl", "task1.json"]
    entries = [AnswerEntry(rec["file"], rec["prediction"], rec.get("artifacts")) for rec in records]
    (out / "task1.json").write_text(json.dumps(detection_answers(entries), indent=1) + "\n")
    if explainer is not None:
        (out / "task2.json").write_text(json.dumps(explanation_answers(entries), indent=1) + "\n")
        files.append("task2.json")
    title = "fakescope scan of " + ", ".join(str(p) for p in paths)[:200]
    (out / "report.html").write_text(
        render_report(records, title=title, model_version=detector.model_version, files=files)
    )
    summary = ScanSummary(
        out_dir=out,
        total=len(records),
        fake=sum(1 for r in records if r["prediction"] == "fake"),
        real=sum(1 for r in records if r["prediction"] == "real"),
        uncertain=sum(1 for r in records if r["prediction"] == "uncertain"),
        errors=sum(1 for r in records if r["error"]),
        model_version=detector.model_version,
    )
    logger.info("scan: %s", summary)
    return summary
