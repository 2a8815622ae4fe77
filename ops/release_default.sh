#!/usr/bin/env bash
# Promotes a finished training run (or an ensemble from fakescope ensemble) to the shipped default and measures everything the
# model card quotes. Usage: bash ops/release_default.sh runs/s-v1
# Writes the figures to runs/release/ (gitignored) and copies the weights to
# shared/fakescope/weights/default/. The checkpoint it replaces is kept in runs/release/previous for
# the before/after rows (genimage_explained, speed).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?training run folder}
OUT=runs/release
DEST=shared/fakescope/weights/default
GENIMAGE=../shared/data/genimage_explained
mkdir -p "$OUT" "$DEST"
if [ ! -d "$OUT/previous" ]; then
  cp -r "$DEST" "$OUT/previous"
fi
cp "$RUN/model.safetensors" "$RUN/config.json" "$DEST/"
FS=.venv/bin/fakescope
# Temperature, TTA (decided on the calibration split) and the domain model (fitted on training
# images, its threshold set on the calibration split); validation is only measured.
$FS calibrate --checkpoint "$DEST" | tee "$OUT/calibrate.json"
rm -rf "$OUT/val" "$OUT/val-scan"
$FS export-split --split val --out "$OUT/val"
$FS scan "$OUT/val" --out "$OUT/val-scan" --no-overlays -q | tee "$OUT/scan.txt"
.venv/bin/python ops/score_scan.py "$OUT/val-scan/results.jsonl" | tee "$OUT/scan-score.json"
$FS evaluate --split val --robustness --json "$OUT/robustness.json" | tee "$OUT/robustness.txt"
for who in previous default; do
  ck=$([ "$who" = previous ] && echo "$OUT/previous" || echo "$DEST")
  rm -rf "$OUT/genimage-$who"
  $FS scan "$GENIMAGE" --checkpoint "$ck" --out "$OUT/genimage-$who" --no-overlays -q
  .venv/bin/python ops/score_scan.py "$OUT/genimage-$who/results.jsonl" | tee "$OUT/genimage-$who.json"
  # The same images through evaluate: resized first, so the domain score is the feature distance alone.
  $FS evaluate --data "$GENIMAGE" --checkpoint "$ck" --json "$OUT/genimage-$who-eval.json" | tee "$OUT/genimage-$who-eval.txt"
done
.venv/bin/python ops/bench/bench_model.py --checkpoints "$OUT/previous" "$DEST" --batch-sizes 32 --threads 2 --repeats 20 \
  | tee "$OUT/bench_detectors.txt"
.venv/bin/python ops/bench/bench_model.py --variants freqnet_resnet_tiny freqnet_vgg vgg3_anchor vgg3_wide --batch-sizes 1 32 256 \
  --threads 1 2 | tee "$OUT/bench_model.txt"
.venv/bin/python ops/bench/bench_scan.py --n 2000 | tee "$OUT/bench_scan.txt"
