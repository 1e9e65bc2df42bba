#!/usr/bin/env bash
# The GPU check of issue 28 (benchmarks/gpu_check.py says what it measures), in two steps:
#
#   bash benchmarks/gpu_check.sh prepare [--data DIR] [--backbone DIR] [--cpu-model DIR] [--max-side N]
#                                        [--quality Q]
#       here, on the CPU machine, from the repository root: fills the ignored folder .gpu/ with what the GPU
#       machine lacks (wheels of diffusers, albumentations, pycocotools, noise and their missing needs, built for
#       its Python 3.12), a compact copy of magnetic-tile (images at most 256 px a side, JPEG quality 80), the
#       backbone, optionally a CPU-config model, and the commit; checks the size that travels; prints the run call.
#   bash benchmarks/gpu_check.sh [ARGS FOR gpu_check.py]
#       there: installs the wheels the machine lacks into /tmp/site, then runs gpu_check.py on .gpu/ and writes
#       gpu_check_<device>.json, its contact sheet and the log into $OUT (default benchmarks/results).
#   bash benchmarks/gpu_check.sh install
#       only the install and an import check (a quick look at a machine).
set -euo pipefail
cd "$(dirname "$0")/.."

GPU=.gpu
LIMIT_MIB=60  # what travels (the checkout's files and .gpu/) at most; the run tool's limit is 64 MiB
# Always carried (the machine has none of them), then carried in case the machine lacks them or has older ones.
WHEELS="diffusers albumentations albucore pycocotools noise simsimd stringzilla"
SUPPORT="pydantic pydantic_core annotated-types typing-inspection typing_extensions"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64"

# Nothing outside the GPU machine can be reached: no update checks, no hub look-ups (every model is a local folder).
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

say() { echo "gpu_check.sh: $*" >&2; }
die() { say "$*"; exit 1; }

python312() {  # a Python 3.12 to build wheels that have none on the index
    local p
    for p in "${PYTHON312:-}" python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        if [ -n "$p" ] && command -v "$p" >/dev/null 2>&1 &&
            "$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

wheel() {  # wheel NAME: NAME at the version of this checkout's environment, for CPython 3.12 on x86-64 Linux
    local name=$1 version
    version=$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))") ||
        die "$name is not installed in $PY's environment: install the project ('pip install -e .[dev]') first"
    # shellcheck disable=SC2086
    if "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
        -d "$GPU/whl" "$name==$version" 2>/dev/null; then
        return 0
    fi
    # no binary wheel for 3.12 (noise has only a source archive): build one with a Python 3.12 of this machine
    local py312 tmp
    py312=$(python312) || die "$name $version has no wheel for CPython 3.12 and no python3.12 is here to build one
        (set PYTHON312=/path/to/python3.12)"
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "$name==$version" 2>/dev/null ||
        die "$name $version: no source archive either"
    nice -n 19 "$py312" -m pip wheel -q --no-deps -w "$GPU/whl" "$tmp"/* || die "$name $version: the wheel build failed"
    rm -rf "$tmp"
    say "built $(basename "$(ls "$GPU"/whl/"${name}"-*.whl | head -1)") with $py312"
}

travelling_bytes() {  # the checkout's files that travel (tracked, and untracked not ignored) plus .gpu/
    local tree gpu
    tree=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
        awk '{s += $1} END {print s + 0}')
    gpu=$(find "$GPU" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    echo "$tree $gpu"
}

prepare() {
    local data=../shared/datasets/magnetic-tile backbone=../shared/weights/mobilenet_v2_1.0_224 cpu_model=""
    local max_side=256 quality=80
    while [ $# -gt 0 ]; do
        case $1 in
            --data) data=$2; shift 2 ;;
            --backbone) backbone=$2; shift 2 ;;
            --cpu-model) cpu_model=$2; shift 2 ;;
            --max-side) max_side=$2; shift 2 ;;
            --quality) quality=$2; shift 2 ;;
            *) die "prepare: unknown option $1" ;;
        esac
    done
    PY=${PYTHON:-.venv/bin/python}
    [ -x "$PY" ] || PY=python3
    [ -d "$data" ] || die "no dataset at $data"
    [ -f "$backbone/config.json" ] || die "no backbone at $backbone"
    [ -z "$cpu_model" ] || [ -f "$cpu_model/defectgen.json" ] || die "--cpu-model $cpu_model: no defectgen.json"

    mkdir -p .git/info
    grep -qxF "/$GPU/" .git/info/exclude 2>/dev/null || echo "/$GPU/" >> .git/info/exclude
    rm -rf "$GPU"
    mkdir -p "$GPU/whl"

    local name
    for name in $WHEELS $SUPPORT; do
        wheel "$name"
    done
    say "wheels: $(ls "$GPU/whl" | wc -l) files, $(du -sh --apparent-size "$GPU/whl" | cut -f1)"

    nice -n 19 "$PY" benchmarks/gpu_check.py --data "$data" --compact "$GPU/magnetic-tile" --max-side "$max_side" \
        --quality "$quality" >/dev/null
    say "data: $(du -sh --apparent-size "$GPU/magnetic-tile" | cut -f1)" \
        "(from $(du -sh --apparent-size "$data" | cut -f1); $GPU/magnetic-tile.json)"
    cp -r "$backbone" "$GPU/mobilenet_v2_1.0_224"
    chmod -R u+w "$GPU/mobilenet_v2_1.0_224"  # a read-only source stays removable by the next prepare
    if [ -n "$cpu_model" ]; then  # the model without its checkpoints (optimizer state: not needed to sample)
        mkdir -p "$GPU/cpu-cddpm"
        tar -C "$cpu_model" --exclude=./checkpoints -cf - . | tar -C "$GPU/cpu-cddpm" -xf -
        say "cpu model: $(du -sh --apparent-size "$GPU/cpu-cddpm" | cut -f1) from $cpu_model"
    fi
    local head changes=""
    head=$(git rev-parse HEAD)
    [ -z "$(git status --porcelain -- defectgen benchmarks ':!benchmarks/results')" ] || changes="+changes"
    echo "$head$changes" > "$GPU/commit.txt"

    local tree gpu total
    read -r tree gpu < <(travelling_bytes)
    total=$((tree + gpu))
    awk -v t="$tree" -v g="$gpu" -v s="$total" 'BEGIN {printf "travels: checkout %.1f MiB + .gpu %.1f MiB = %.1f MiB\n",
        t / 1048576, g / 1048576, s / 1048576}'
    [ "$total" -le $((LIMIT_MIB * 1048576)) ] ||
        die "over $LIMIT_MIB MiB: use a smaller --max-side or --quality, or no --cpu-model"
    cat <<EOF
Ready. On the GPU machine (about 9 minutes; results come back from \$OUT):
  run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=600)
Then copy gpu_check_<device>.json, _samples.png and .log from the files it returns into benchmarks/results/.
EOF
}

install() {  # the carried wheels the machine lacks (or has older) into /tmp/site; PYTHONPATH set for what follows
    [ -d "$GPU/whl" ] || die "no $GPU/whl: run 'bash benchmarks/gpu_check.sh prepare' on the CPU machine and carry .gpu"
    local wanted
    wanted=$("${PYTHON:-python3}" - "$GPU/whl" "$WHEELS" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

always = {canonicalize_name(n) for n in sys.argv[2].split()}
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, carried = wheel.name.split("-")[:2]
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if canonicalize_name(name) in always or have is None or Version(have) < Version(carried):
        print(wheel)
    else:
        print(f"gpu_check.sh: using the machine's {name} {have} (carried {carried})", file=sys.stderr)
EOF
    )
    # shellcheck disable=SC2086
    [ -z "$wanted" ] || "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site $wanted
    export PYTHONPATH=/tmp/site:$PWD
    "${PYTHON:-python3}" -c 'import albumentations, diffusers, noise, pycocotools.mask, torch
import defectgen.evaluate, defectgen.synth.pipeline
print("gpu_check.sh: imports ok; torch", torch.__version__, "cuda", torch.cuda.is_available(), "diffusers",
      diffusers.__version__)'
}

run_check() {
    export GPU_CHECK_STARTED
    GPU_CHECK_STARTED=$(date +%s.%N)
    local out=${OUT:-benchmarks/results} slug=cpu name
    mkdir -p "$out"
    install
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L || true
        name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) || true
        [ -z "$name" ] || slug=$(echo "$name" | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')
    fi
    local args=(--data "$GPU/magnetic-tile" --backbone "$GPU/mobilenet_v2_1.0_224" --out "$out")
    [ ! -d "$GPU/cpu-cddpm" ] || args+=(--cpu-model "$GPU/cpu-cddpm")
    set +e
    # stopped before the run tool's 600 s, so that the log and the JSON written so far come back whole
    PYTHONUNBUFFERED=1 timeout -k 10 "${GPU_CHECK_LIMIT_S:-585}" "${PYTHON:-python3}" benchmarks/gpu_check.py \
        "${args[@]}" "$@" 2>&1 | tee "$out/gpu_check_$slug.log"
    local status=${PIPESTATUS[0]}
    set -e
    local seconds
    seconds=$(awk -v s="$GPU_CHECK_STARTED" -v e="$(date +%s.%N)" 'BEGIN {printf "%.0f", e - s}')
    say "finished with status $status in $seconds s"
    return "$status"
}

case ${1:-} in
    prepare) shift; prepare "$@" ;;
    install) shift; install ;;
    *) run_check "$@" ;;
esac
