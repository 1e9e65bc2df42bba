#!/usr/bin/env bash
# Train both DDPM generators on the bundled toy-tiles data (examples/data/toy-tiles, MVTec layout) and synthesize
# a defect set with each. Outputs go to out/ddpm-example (replaced on every run).
#
# The defaults take about 10-20 minutes on a 2-core CPU and give rough but visible defects. On a GPU, train for
# real:   PRESET=small STEPS=5000 BATCH=32 PRECISION=bf16 examples/train_and_synthesize.sh
set -euo pipefail
cd "$(dirname "$0")/.."
data=examples/data/toy-tiles
out=out/ddpm-example
PRESET=${PRESET:-tiny}
STEPS=${STEPS:-200}
BATCH=${BATCH:-4}
PRECISION=${PRECISION:-no}
N=${N:-16}
common=(--preset "$PRESET" --steps "$STEPS" --batch-size "$BATCH" --mixed-precision "$PRECISION" --warmup 50 \
        --lr 5e-4 --checkpoint-every 100 --seed 0 --overwrite)

# 1. Unconditional DDPM on the normal tiles, then perturb-and-denoise inside Perlin masks.
defectgen train-ddpm --normals "$data/train/good" --out "$out/ddpm" "${common[@]}"
defectgen synthesize --model "$out/ddpm" --normals "$data/train/good" --n "$N" --masks perlin \
    --strength 0.5 --sigma 1.0 --sampler ddim --steps 50 --seed 0 --out "$out/synth-ddpm" --overwrite

# 2. Class- and mask-conditional DDPM on the labeled defects (normals teach the null class), then guided
#    inpainting of each class inside box masks.
defectgen train-ddpm --labeled "$data/labeled" --normals "$data/train/good" --out "$out/cddpm" "${common[@]}"
defectgen synthesize --model "$out/cddpm" --normals "$data/train/good" --n "$N" --masks bbox \
    --guidance 3.0 --sampler dpm --steps 20 --seed 0 --out "$out/synth-cddpm" --overwrite

defectgen inspect "$out/synth-ddpm" --sheet "$out/synth-ddpm.png"
defectgen inspect "$out/synth-cddpm" --sheet "$out/synth-cddpm.png"
echo "done: contact sheets in $out/synth-ddpm/contact_sheet.png and $out/synth-cddpm/contact_sheet.png"
