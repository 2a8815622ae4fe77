"""Scores a ``fakescope scan`` output against the labels in its file paths (``REAL/`` or ``FAKE/``).

    fakescope export-split --split val --out /tmp/val          # the 10,000 held-out images
    fakescope scan /tmp/val --out /tmp/val-scan --no-overlays
    python -m ops.score_scan /tmp/val-scan/results.jsonl

Prints the metrics of the scan's verdicts and probabilities; an input with an error counts as wrong.
When the scan has domain scores it also prints ``domain``: the share flagged out of domain, the
share of confident (p > 0.9 or p < 0.1) wrong verdicts, and those of them not flagged.

``--by-generator annotations.json`` (genimage_explained's: each file's ``generator``) adds the
ROC-AUC of each generator's fakes against all the reals, which shows where a detector transfers:

    fakescope scan ../shared/data/genimage_explained --out /tmp/gen --no-overlays
    python -m ops.score_scan /tmp/gen/results.jsonl --by-generator ../shared/data/genimage_explained/annotations.json

``--by-folder`` does the same for sets in multigen's layout, where a fake's generator is the folder
right under ``FAKE/`` (``ops/split_tiles.py``'s held-out tiles, for instance).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import PurePath

import numpy as np

from fakescope.data import label_of
from fakescope.metrics import binary_metrics, domain_metrics, roc_auc


def generator_from_annotations(annotations: str) -> Callable[[str], str | None]:
    """genimage_explained's annotations, which name files as ``FAKE/x.jpg`` (names normalised:
    ``big gan`` and ``big_gan`` are one)."""
    with open(annotations) as f:
        gen_of = {a["file"]: a["generator"].lower().replace("_", " ").replace(".", " ") for a in json.load(f)}
    return lambda file: gen_of.get("/".join(PurePath(file).parts[-2:]))


def generator_from_folder(file: str) -> str | None:
    """The folder right under ``FAKE/`` (multigen's layout), if there is one."""
    parts = PurePath(file).parts
    folders = [p.lower() for p in parts[:-1]]
    # The nearest REAL/ or FAKE/ above the file, as fakescope.data.label_of reads the label.
    labelled = [i for i, name in enumerate(folders) if name in ("real", "fake")]
    if not labelled or folders[labelled[-1]] != "fake" or labelled[-1] == len(folders) - 1:
        return None
    return parts[labelled[-1] + 1]


def by_generator(
    files: list[str], labels: list[int], probs: list[float], generator_of: Callable[[str], str | None]
) -> dict[str, object]:
    """Per generator: its fakes' count, mean fake probability and ROC-AUC against every real image
    of the scan."""
    reals = [p for p, y in zip(probs, labels, strict=True) if y == 0]
    groups: dict[str, list[float]] = {}
    for file, y, p in zip(files, labels, probs, strict=True):
        name = generator_of(file)
        if y == 1 and name is not None:
            groups.setdefault(name, []).append(p)
    out: dict[str, object] = {}
    for name, ps in sorted(groups.items()):
        scores = np.array(reals + ps)
        truth = np.array([0] * len(reals) + [1] * len(ps))
        out[name] = {"n": len(ps), "mean_p": round(float(np.mean(ps)), 3), "roc_auc": round(roc_auc(truth, scores), 3)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="results.jsonl of a scan")
    by = p.add_mutually_exclusive_group()
    by.add_argument("--by-generator", metavar="ANNOTATIONS", help="annotations.json with each file's generator")
    by.add_argument("--by-folder", action="store_true", help="each fake's generator is its folder under FAKE/")
    args = p.parse_args()
    labels, probs, in_domain, files, errors = [], [], [], [], 0
    with open(args.results) as f:
        for line in f:
            rec = json.loads(line)
            label = label_of(rec["file"])
            if label is None:
                continue
            if rec["error"]:
                errors += 1
                probs.append(1.0 - label)  # an error is scored as the wrong verdict
                in_domain.append(True)
            else:
                probs.append(rec["fake_probability"])
                in_domain.append(rec.get("in_domain") is not False)
            labels.append(label)
            files.append(rec["file"])
    m = binary_metrics(np.array(labels), np.array(probs))
    m["errors"] = errors
    m["domain"] = domain_metrics(np.array(labels), np.array(probs), np.array(in_domain))
    if args.by_generator:
        m["by_generator"] = by_generator(files, labels, probs, generator_from_annotations(args.by_generator))
    elif args.by_folder:
        m["by_generator"] = by_generator(files, labels, probs, generator_from_folder)
    print(json.dumps(m, indent=2))


if __name__ == "__main__":
    main()
