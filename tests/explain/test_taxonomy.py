"""The taxonomy is the task's: every name verbatim, in order, grouped, described and class-gated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fakescope.explain.taxonomy import ARTIFACT_NAMES, ARTIFACTS, GROUPS, OBJECT_CLASSES, applicable, artifact


def test_names_are_the_tasks_verbatim_and_in_order(shared_data: Callable[..., Path]) -> None:
    lines = [line.strip() for line in shared_data("artifacts.txt").read_text().splitlines() if line.strip()]
    assert len(lines) == 70
    assert list(ARTIFACT_NAMES) == lines


def test_every_artifact_has_a_group_a_description_and_known_kinds() -> None:
    known_kinds = set().union(*OBJECT_CLASSES.values())
    assert {a.group for a in ARTIFACTS} == set(GROUPS)
    for a in ARTIFACTS:
        assert a.description and a.description[0].islower() and not a.description.endswith(".")
        assert a.kinds <= known_kinds, a.name


def test_class_gate_keeps_animal_artifacts_off_vehicles_and_vice_versa() -> None:
    truck = {a.name for a in applicable("truck")}
    cat = {a.name for a in applicable("cat")}
    assert "Anatomically incorrect paw structures" not in truck
    assert "Improper fur direction flows" not in truck
    assert "Incorrect wheel geometry" in truck
    assert "Anatomically incorrect paw structures" in cat
    assert "Incorrect wheel geometry" not in cat
    assert "Improper fur direction flows" not in {a.name for a in applicable("frog")}


def test_unknown_class_gets_only_class_agnostic_artifacts() -> None:
    agnostic = applicable(None)
    assert agnostic and all(a.class_agnostic for a in agnostic)
    assert artifact("Frequency domain signatures") in agnostic
    assert artifact("Dental anomalies in mammals") not in agnostic
