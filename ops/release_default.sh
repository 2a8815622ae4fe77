#!/usr/bin/env bash
# Promotes a finished training run to the shipped default checkpoint and measures everything the
# model card quotes. Usage: bash ops/release_default.sh runs/tiny-v1 [--tta]
# Writes the figures to runs/release/ (gitignored) and copies the weights to
# shared/fakescope/weights/default/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?training run folder}
TTA=${2:---no-tta}
OUT=runs/release
DEST=shared/fakescope/weights/default
mkdir -p "$OUT" "$DEST"
cp "$RUN/model.safetensors" "$RUN/config.json" "$DEST/"
FS=.venv/bin/fakescope
$FS calibrate --checkpoint "$DEST" "$TTA" | tee "$OUT/calibrate.json"
rm -rf "$OUT/val" "$OUT/val-scan"
$FS export-split --split val --out "$OUT/val"
$FS scan "$OUT/val" --out "$OUT/val-scan" --no-overlays -q | tee "$OUT/scan.txt"
.venv/bin/python ops/score_scan.py "$OUT/val-scan/results.jsonl" | tee "$OUT/scan-score.json"
$FS evaluate --split val --robustness --json "$OUT/robustness.json" | tee "$OUT/robustness.txt"
.venv/bin/python ops/bench/bench_model.py --variants freqnet_resnet_tiny --batch-sizes 1 32 256 --threads 1 2 | tee "$OUT/bench_model.txt"
.venv/bin/python ops/bench/bench_model.py --variants freqnet_resnet50 --batch-sizes 1 32 --threads 2 --repeats 2 | tee -a "$OUT/bench_model.txt"
.venv/bin/python ops/bench/bench_scan.py --n 2000 | tee "$OUT/bench_scan.txt"
