"""One image's result: its fields defined once, here, and derived by every reader.

A classified image's answer travels from the pipeline (:class:`fakescope.pipeline.ImageResult`) to
the job row, the result cache's copy, the API's response, ``results.jsonl`` (written by a scan and by
the client's download through :func:`result_record`) and the report pages. Each of them takes the
fields of :class:`ResultContract` by name instead of listing them: a new field is added here (and to
the table, with its migration), and ``tests/service/test_result_contract.py`` walks every field
through every reader.

Torch-free and database-free: the API, the client and the scan all import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

__all__ = ["RESULT_FIELDS", "OperatingPoint", "ResultContract", "Verdict", "result_record"]


class Verdict(StrEnum):
    REAL = "real"
    FAKE = "fake"
    # Between the caller's two thresholds: the detector leans neither way strongly enough to accuse
    # or to clear; a platform routes these to a person.
    UNCERTAIN = "uncertain"


class OperatingPoint(BaseModel):
    """Where the caller turns a probability into a verdict: fake at ``fake_threshold`` and above, real
    below ``real_threshold`` (by default the same threshold: no band), uncertain in between.

    A file whose own valid manifest says it was generated is fake at any threshold (``decided_by``
    provenance). False accusations of real photos cost platforms the most, and the right threshold
    differs by platform: ``fakescope calibrate --target-fpr`` finds one on a platform's own images.
    """

    fake_threshold: float = Field(0.5, gt=0.0, le=1.0, description="fake at this probability and above")
    real_threshold: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="real below this probability (at most fake_threshold); between the two: uncertain. "
        "Null: the fake threshold (no uncertain band)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.real_threshold is not None and self.real_threshold > self.fake_threshold:
            raise ValueError("real_threshold must not be above fake_threshold")
        return self

    def verdict(self, fake_probability: float, decided_by: str | None = None) -> Verdict:
        if decided_by == "provenance" or fake_probability >= self.fake_threshold:
            return Verdict.FAKE
        real_below = self.fake_threshold if self.real_threshold is None else self.real_threshold
        return Verdict.REAL if fake_probability < real_below else Verdict.UNCERTAIN


class ResultContract(BaseModel):
    """What fakescope answers for one classified image (the explanation stage adds its own fields)."""

    model_config = ConfigDict(from_attributes=True)

    prediction: str | None = Field(
        None, description="real, fake or uncertain: the verdict at the operating point the job (or request) asked for"
    )
    fake_probability: float | None = Field(
        None, description="calibrated probability that the image was generated (the detector's own, always given)"
    )
    domain_score: float | None = Field(
        None, description="distance from the detector's training images over its threshold; above 1: out of domain"
    )
    sha256: str | None = Field(None, description="SHA-256 of the bytes received")
    width: int | None = Field(None, description="pixels, as decoded")
    height: int | None = Field(None, description="pixels, as decoded")
    model_version: str | None = Field(
        None, description="the checkpoint that answered (of a routed detector: the member the image was routed to)"
    )
    decided_by: str | None = Field(
        None,
        description="detector, or provenance: the file's own valid manifest or metadata says it was generated "
        "(the prediction is then fake; fake_probability stays the detector's)",
    )
    provenance: dict[str, Any] | None = Field(
        None, description="what the file declares about its origin (C2PA, IPTC, generator metadata); null: nothing"
    )

    @computed_field(  # type: ignore[prop-decorator]
        description="false: the verdict is for an image unlike any the detector was measured on; unreliable"
    )
    @property
    def in_domain(self) -> bool | None:
        return None if self.domain_score is None else self.domain_score <= 1.0

    def decided(self, point: OperatingPoint) -> Self:
        """This result with its verdict at ``point`` (the probability and the rest unchanged)."""
        if self.fake_probability is None:
            return self
        return self.model_copy(update={"prediction": point.verdict(self.fake_probability, self.decided_by)})

    def stored(self) -> dict[str, Any]:
        """The stored fields (no derived ones), by name: what a row or a cache copy holds."""
        return {name: getattr(self, name) for name in RESULT_FIELDS}


# The stored fields, in order; ``in_domain`` is derived from ``domain_score`` wherever it is shown.
RESULT_FIELDS: tuple[str, ...] = tuple(ResultContract.model_fields)


def result_record(
    file: str,
    *,
    error: str | None = None,
    result: ResultContract | Mapping[str, Any] | None = None,
    overlay: str | None = None,
    thumbnail: str | None = None,
) -> dict[str, Any]:
    """One line of ``results.jsonl`` (and one row of the report), as a scan and a download write it:
    the file, its verdict and probability, its overlay and error, then every other contract field."""
    contract = None
    if result is not None and error is None:
        contract = result if isinstance(result, ResultContract) else ResultContract.model_validate(dict(result))
    rec: dict[str, Any] = {
        "file": file,
        "prediction": contract.prediction if contract else None,
        "fake_probability": contract.fake_probability if contract else None,
        "overlay": overlay,
        "error": error,
    }
    if contract is None:
        return rec
    if thumbnail is not None:
        rec["thumbnail"] = thumbnail
    values = contract.model_dump()
    rec.update({k: v for k, v in values.items() if k not in rec})
    return rec
