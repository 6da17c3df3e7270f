#!/usr/bin/env bash
# One prepared GPU check of the CUDA path, sized for a short GPU loan (the run phases take <= 5 minutes in all).
#
#   scripts/gpu_check.sh prepare      on the development machine (registry access, nvcc): fetch pycuda's source
#                                     and its pure-Python dependencies into third_party/pycuda, prebuild the
#                                     kernel fatbin into build/kernels; then carry third_party/ and build/kernels
#   scripts/gpu_check.sh run          on the GPU machine (no internet): the phases below, each under its own
#                                     timeout, each writing JSON into $RESULTS
#   scripts/gpu_check.sh --dry-run [prepare|run|all]   print every phase and its exact command, run nothing
#
# Run phases: install (pycuda built in place with parallel jobs + `pip install --target`: the machine's python3
# may itself be a virtual environment, and a venv made from it would not see its torch/cupy), env, kernels (the
# `gpu`-marked tests; a skip counts as a failure), sanitizer (compute-sanitizer memcheck on two kernel cases),
# thread (the preprocessor called from a second thread), encoder (CUDA-preprocessed images fed zero-copy to the
# torch reference ViT-B/16 vs the CPU path), timings (preprocess 1080p->224 batch 1/16; torch fp16 ViT-B/16
# batch 1/16 eager and with CUDA graphs: the bar TensorRT must beat), summary.
# Environment: PYTHON (python3), RESULTS ($OUT or build/gpu-check), DEPS (where pycuda & co. go),
# DEADLINE (seconds for all run phases, 290), CUDA_ROOT (found from nvcc).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
MODE=run
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        prepare|run|all) MODE=$arg ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "usage: $0 [--dry-run] [prepare|run|all]" >&2; exit 2 ;;
    esac
done

PY="${PYTHON:-python3}"
RESULTS="${RESULTS:-${OUT:-build/gpu-check}}"
DEPS="${DEPS:-${TMPDIR:-/tmp}/stp-edge-gpu-deps}"
WHEELS=third_party/pycuda
FATBIN=build/kernels/preprocess.fatbin
DEADLINE="${DEADLINE:-290}"
JOBS="$(nproc 2>/dev/null || echo 4)"
T0=$(date +%s)
FAILED=()

# phase NAME TIMEOUT COMMAND...: print it; unless --dry-run, run it under min(TIMEOUT, time left) and record
# {phase, command, rc, seconds, timeout_s} in $RESULTS/NAME.run.json.
phase() {
    local name=$1 limit=$2
    shift 2
    echo "== phase $name (timeout ${limit}s): $*"
    [ "$DRY" = 1 ] && return 0
    local left=$(( DEADLINE - ($(date +%s) - T0) ))
    [ "$MODE" = prepare ] && left=$limit
    [ "$left" -lt "$limit" ] && limit=$left
    local start rc=0
    start=$(date +%s)
    if [ "$limit" -le 0 ]; then rc=124; else timeout --kill-after=10 "$limit" "$@" || rc=$?; fi
    mkdir -p "$RESULTS"
    printf '{"phase": "%s", "command": "%s", "rc": %d, "seconds": %d, "timeout_s": %d}\n' "$name" \
        "$(printf '%s ' "$@" | sed 's/\\/\\\\/g; s/"/\\"/g')" "$rc" "$(( $(date +%s) - start ))" "$limit" \
        > "$RESULTS/$name.run.json"
    if [ "$rc" != 0 ]; then FAILED+=("$name(rc=$rc)"); echo "-- phase $name FAILED (rc=$rc)"; fi
    return 0
}

prepare() {
    # WITH_TEST_DEPS=1 adds pillow, opencv-python-headless and pytest (~60 MB per Python version: set
    # PY_VERSIONS to the GPU machine's Python only, the carry limit is 64 MiB).
    phase fetch-pycuda 600 env PY_VERSIONS="${PY_VERSIONS:-3.10 3.11 3.12 3.13}" WITH_TEST_DEPS="${WITH_TEST_DEPS:-0}" \
        scripts/fetch_pycuda.sh
    # pytest and its pure-Python dependencies (< 1 MB; python 3.10 resolves tomli and exceptiongroup as well).
    phase fetch-pytest 300 "${VENV_PY:-.venv/bin/python}" -m pip download --quiet --only-binary=:all: \
        --python-version 3.10 -d "$WHEELS" pytest
    phase fatbin 600 "${VENV_PY:-.venv/bin/python}" -m stp_edge.cuda.build --out build/kernels
    echo "carry: third_party build/kernels"
}

run_checks() {
    export PYTHONPATH="$PWD:$DEPS${PYTHONPATH:+:$PYTHONPATH}" STP_EDGE_FATBIN="$PWD/$FATBIN"
    [ "$DRY" = 1 ] || mkdir -p "$RESULTS"
    [ "$DRY" = 1 ] || [ -f "$FATBIN" ] || { echo "no $FATBIN: run '$0 prepare' and carry build/kernels"; exit 2; }
    phase install 150 env PYTHON="$PY" DEPS="$DEPS" WHEELS="$WHEELS" scripts/gpu_install.sh
    phase env 30 "$PY" scripts/gpu_phases.py env --out "$RESULTS/env.json"
    phase kernels 90 "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_cuda_gpu.py tests/test_gpu_path.py \
        --junitxml "$RESULTS/kernels.xml"
    phase kernels-summary 20 "$PY" scripts/gpu_phases.py junit "$RESULTS/kernels.xml" --out "$RESULTS/kernels.json"
    phase sanitizer 60 compute-sanitizer --tool memcheck --error-exitcode 3 --print-limit 20 \
        "$PY" scripts/gpu_phases.py sanitize --out "$RESULTS/sanitizer.json"
    phase thread 30 "$PY" scripts/gpu_phases.py thread --out "$RESULTS/thread.json"
    phase encoder 60 "$PY" scripts/gpu_phases.py encoder --out "$RESULTS/encoder.json"
    phase timings 60 "$PY" scripts/gpu_phases.py timings --repeats 20 --out "$RESULTS/timings.json"
}

case "$MODE" in
    prepare) prepare ;;
    run) run_checks ;;
    all) prepare; run_checks ;;
esac
echo "== phase summary: ${#FAILED[@]} failed${FAILED:+: ${FAILED[*]}} (results in $RESULTS)"
if [ "$DRY" = 0 ]; then
    list=""
    for f in "${FAILED[@]}"; do list="$list${list:+, }\"$f\""; done
    printf '{"failed": [%s], "seconds": %d}\n' "$list" "$(( $(date +%s) - T0 ))" > "$RESULTS/summary.json"
fi
[ "${#FAILED[@]}" = 0 ]
