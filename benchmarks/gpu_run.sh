#!/bin/sh
# The GPU check on a bare GPU machine: its own python3 (torch, torchvision, h5py, ...), no venv,
# no pip, no network; what else captioner imports comes from gpu-bundle/ (`make gpu-bundle`,
# carried with the repository; GPU_BUNDLE names another folder). Writes $OUT/gpu_check.json
# (./gpu-out/ when OUT is unset) after every section.
#
#   sh benchmarks/gpu_run.sh [ARGS]      # ARGS go to `python3 -m benchmarks.gpu_check`, e.g. --device cpu --tiny
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE="${GPU_BUNDLE:-$REPO/gpu-bundle}"
RESULTS="${OUT:-./gpu-out}"

if [ ! -d "$BUNDLE" ]; then
    echo "gpu_run: no $BUNDLE: run 'make gpu-bundle' first (where the repository's .venv is) and carry gpu-bundle/ with the repository" >&2
    exit 2
fi
mkdir -p "$RESULTS"
PYTHONPATH="$BUNDLE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH
exec python3 -m benchmarks.gpu_check --out "$RESULTS/gpu_check.json" "$@"
