#!/usr/bin/env bash
# Promotes a finished training run to one route of the shipped default (a routed folder, see
# routes.json) and measures what the model card quotes for it. Usage:
#   bash ops/release_route.sh full runs/full-patch ../shared/data/multigen/full
# Temperature, TTA (decided on the run's calibration split) and the domain model (fitted on a seeded
# sample of its training images, threshold on the calibration split) are refitted in place; the
# validation split is only measured. Figures go to runs/release-<route>/ (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUTE=${1:?route name (routes.json)}
RUN=${2:?training run folder}
DATA=${3:?the data the run was trained on}
DEST=shared/fakescope/weights/default/$ROUTE
OUT=runs/release-$ROUTE
GENIMAGE=../shared/data/genimage_explained
FS=.venv/bin/fakescope
mkdir -p "$OUT" "$DEST"
cp "$RUN/model.safetensors" "$RUN/config.json" "$DEST/"
$FS calibrate --checkpoint "$DEST" --data "$DATA" --domain-images 1500 --batch-size 32 | tee "$OUT/calibrate.json"
# Never trained on, never used to choose: measured once, through the routed default as served.
rm -rf "$OUT/genimage"
$FS scan "$GENIMAGE" --out "$OUT/genimage" --no-overlays -q | tee "$OUT/genimage.txt"
.venv/bin/python ops/score_scan.py "$OUT/genimage/results.jsonl" \
  --by-generator "$GENIMAGE/annotations.json" | tee "$OUT/genimage-score.json"
