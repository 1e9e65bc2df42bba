#!/usr/bin/env bash
# The main job on the bundled toy-tiles data (examples/data/toy-tiles, 64x64 gray, MVTec layout): stamp masks,
# look at the data. Outputs go to out/quickstart (delete it, or it is replaced on the next run).
set -euo pipefail
cd "$(dirname "$0")/.."
data=examples/data/toy-tiles
out=out/quickstart
mkdir -p "$out"
defectgen inspect "$data" --sheet "$out/dataset.png"
defectgen masks --kind perlin --n 16 --like "$data/train/good" --seed 0 --out "$out/masks" --overwrite
defectgen masks --kind bbox --n 16 --like "$data/train/good" --like-labeled "$data/labeled" --seed 0 \
    --out "$out/boxes" --overwrite
defectgen inspect "$out/masks" --sheet "$out/masks.png"
echo "done: see $out/dataset.png and $out/masks.png"
