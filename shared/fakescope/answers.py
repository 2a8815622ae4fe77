"""The task's answer files, ``task1.json`` and ``task2.json``, shared by ``fakescope scan`` and the job service.

task1 lists one ``{"index": i, "prediction": "real"|"fake"}`` per classified image (the task's binary
format: an ``uncertain`` verdict, between the caller's two thresholds, is written as ``real``: it was
not called fake, and a band exists to keep real images from being accused); task2 lists one
``{"index": i, "explanation": {artifact: reason}}`` per image predicted fake. Both number images with
:func:`answer_index`, so a scan and a job over the same files give the same indices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

__all__ = ["AnswerEntry", "answer_index", "detection_answers", "explanation_answers"]


@dataclass(frozen=True)
class AnswerEntry:
    """One image's outcome as the answer files need it.

    ``prediction`` is None for an image that could not be classified (it keeps its index, so the
    other images' indices do not shift, but it is left out of both files).
    """

    name: str
    prediction: str | None
    explanation: Mapping[str, str] | None = None


def _stem(name: str) -> str:
    # Names may be archive members or relative paths ("batch.zip/7.png"): only the file's own stem counts.
    return PurePosixPath(name.replace("\\", "/")).stem


def _as_int(stem: str) -> int | None:
    s = stem.strip()
    if not s or not (s.isdigit() or (s[0] in "+-" and s[1:].isdigit())):
        return None
    return int(s)


def answer_index(names: Sequence[str]) -> list[int]:
    """The task index of each of ``names``, in the order given.

    The index is the file's numeric stem (``"12.png"`` is 12) when every stem is an integer and no two
    are equal; otherwise it is the 1-based position of the name in the sorted list of names (ties keep
    their input order), so every image gets a distinct index either way.
    """
    stems = [_as_int(_stem(n)) for n in names]
    if stems and all(s is not None for s in stems) and len(set(stems)) == len(stems):
        return [s for s in stems if s is not None]
    order = sorted(range(len(names)), key=lambda i: names[i])
    index = [0] * len(names)
    for pos, i in enumerate(order, start=1):
        index[i] = pos
    return index


def detection_answers(entries: Iterable[AnswerEntry]) -> list[dict[str, Any]]:
    """``[{"index": 1, "prediction": "real"}, ...]`` for every classified image, sorted by index."""
    items = list(entries)
    index = answer_index([e.name for e in items])
    rows = [
        {"index": i, "prediction": "fake" if e.prediction == "fake" else "real"}
        for i, e in zip(index, items, strict=True)
        if e.prediction
    ]
    return sorted(rows, key=lambda r: r["index"])


def explanation_answers(entries: Iterable[AnswerEntry]) -> list[dict[str, Any]]:
    """``[{"index": 2, "explanation": {artifact: reason}}, ...]`` for images predicted fake, sorted by index.

    A fake image without an explanation yet (explanations not asked for, or not done) has ``{}``.
    """
    items = list(entries)
    index = answer_index([e.name for e in items])
    rows = [
        {"index": i, "explanation": dict(e.explanation or {})}
        for i, e in zip(index, items, strict=True)
        if e.prediction == "fake"
    ]
    return sorted(rows, key=lambda r: r["index"])
