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
"""

from __future__ import annotations

import argparse
import json
from pathlib import PurePath

import numpy as np

from fakescope.data import label_of
from fakescope.metrics import binary_metrics, domain_metrics, roc_auc


def by_generator(files: list[str], labels: list[int], probs: list[float], annotations: str) -> dict[str, object]:
    """Per generator (names normalised: ``big gan`` and ``big_gan`` are one): its fakes' count, mean
    fake probability and ROC-AUC against every real image of the scan."""
    with open(annotations) as f:
        gen_of = {a["file"]: a["generator"].lower().replace("_", " ").replace(".", " ") for a in json.load(f)}
    reals = [p for p, y in zip(probs, labels, strict=True) if y == 0]
    groups: dict[str, list[float]] = {}
    for file, y, p in zip(files, labels, probs, strict=True):
        name = gen_of.get("/".join(PurePath(file).parts[-2:]))  # annotations name files as FAKE/x.jpg
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
    p.add_argument("--by-generator", metavar="ANNOTATIONS", help="annotations.json with each file's generator")
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
        m["by_generator"] = by_generator(files, labels, probs, args.by_generator)
    print(json.dumps(m, indent=2))


if __name__ == "__main__":
    main()
