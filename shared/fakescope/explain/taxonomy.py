"""The task's 70 artifact names, grouped, described for prompts, and gated by object class.

The names are the task's class names, verbatim and in the task's order (``../shared/data/artifacts.txt``;
the test suite checks them against that file). Each carries a group, a short description that the
CLIP prompts and the Idefics2 prompt use, and the object kinds it can apply to: paw and fur
artifacts do not apply to a truck, and wheel geometry does not apply to a frog.

Object classes are the ten CIFAR-10 classes (the detector's world) plus a few that the 256x256
images need (person, other animal, other object, scene); each maps to a set of *kinds*, and an
artifact applies to a class when their kinds intersect, or always when the artifact is
class-agnostic.

The rows are data, ``taxonomy.json`` beside this module; this module loads and checks them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ARTIFACTS",
    "ARTIFACT_NAMES",
    "BY_NAME",
    "GROUPS",
    "OBJECT_CLASSES",
    "Artifact",
    "applicable",
    "artifact",
]

TAXONOMY_FILE = Path(__file__).resolve().parent / "taxonomy.json"


@dataclass(frozen=True)
class Artifact:
    """One artifact class of the task.

    Attributes:
        name: the task's name, verbatim.
        group: one of :data:`GROUPS`.
        description: what the artifact looks like, one clause, used in prompts.
        kinds: object kinds it applies to; empty means any image.
    """

    name: str
    group: str
    description: str
    kinds: frozenset[str] = frozenset()

    @property
    def class_agnostic(self) -> bool:
        return not self.kinds

    def applies_to(self, object_class: str | None) -> bool:
        """Whether the artifact can occur on an image of ``object_class`` (None: unknown class,
        where only class-agnostic artifacts are safe to name)."""
        if not self.kinds:
            return True
        if object_class is None:
            return False
        return bool(self.kinds & OBJECT_CLASSES.get(object_class, frozenset()))


def _load() -> tuple[tuple[str, ...], dict[str, frozenset[str]], tuple[Artifact, ...]]:
    with open(TAXONOMY_FILE, encoding="utf-8") as f:
        data = json.load(f)
    groups = tuple(data["groups"])
    classes = {name: frozenset(kinds) for name, kinds in data["object_classes"].items()}
    known = frozenset().union(*classes.values())
    artifacts = tuple(
        Artifact(a["name"], a["group"], a["description"], frozenset(a["kinds"])) for a in data["artifacts"]
    )
    for a in artifacts:  # a typo in the data would silently gate an artifact off
        if a.group not in groups or not a.kinds <= known:
            raise ValueError(f"{TAXONOMY_FILE}: {a.name!r} has an unknown group or kind")
    return groups, classes, artifacts


# Object class -> kinds. The prompt text is what the zero-shot CLIP gate compares the image with.
# ARTIFACTS are in the task's order (artifacts.txt), which the tests check.
GROUPS, OBJECT_CLASSES, ARTIFACTS = _load()
ARTIFACT_NAMES: tuple[str, ...] = tuple(a.name for a in ARTIFACTS)
BY_NAME: dict[str, Artifact] = {a.name: a for a in ARTIFACTS}


def artifact(name: str) -> Artifact:
    """The artifact called ``name``; raises KeyError for a name outside the taxonomy."""
    return BY_NAME[name]


def applicable(object_class: str | None) -> tuple[Artifact, ...]:
    """The artifacts that can occur on an image of ``object_class`` (None: class-agnostic only)."""
    return tuple(a for a in ARTIFACTS if a.applies_to(object_class))
