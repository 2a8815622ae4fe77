"""Scores a ``fakescope scan`` output against the labels in its file paths (``REAL/`` or ``FAKE/``).

    fakescope export-split --split val --out /tmp/val          # the 10,000 held-out images
    fakescope scan /tmp/val --out /tmp/val-scan --no-overlays
    python ops/score_scan.py /tmp/val-scan/results.jsonl

Prints the metrics of the scan's verdicts and probabilities; an input with an error counts as wrong.
When the scan has domain scores it also prints ``domain``: the share flagged out of domain, the
share of confident (p > 0.9 or p < 0.1) wrong verdicts, and those of them not flagged.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from fakescope.data import label_of
from fakescope.metrics import binary_metrics, domain_metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="results.jsonl of a scan")
    args = p.parse_args()
    labels, probs, in_domain, errors = [], [], [], 0
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
    m = binary_metrics(np.array(labels), np.array(probs))
    m["errors"] = errors
    m["domain"] = domain_metrics(np.array(labels), np.array(probs), np.array(in_domain))
    print(json.dumps(m, indent=2))


if __name__ == "__main__":
    main()
