#!/usr/bin/env bash
# One prepared GPU check of the CUDA path, sized for a short GPU loan: one full run takes at most 6 minutes
# (DEADLINE=330 s for all run phases, each under its own limit), so a rerun fits a 15-minute budget.
#
#   scripts/gpu_check.sh prepare      on the development machine (registry access, nvcc): fetch pycuda's source
#                                     and its pure-Python dependencies into third_party/pycuda, prebuild the
#                                     kernel fatbin into build/kernels, fetch the PyNvVideoCodec wheel into
#                                     third_party/wheels; then carry third_party and build/kernels
#   scripts/gpu_check.sh run          on the GPU machine (no network): the phases below
#   scripts/gpu_check.sh --dry-run [prepare|run|all]   print each phase, its limit, its command and the
#                                     output files; run nothing, write nothing
#
# Output: exactly two files in $RESULTS: gpu-check.json (every phase's rc, seconds, limit and result, rewritten
# after each phase so a cut-off run keeps what it measured) and gpu-check.log (everything printed). Scratch
# (per-phase JSON, JUnit XML, pycuda's build) goes to $WORK, never to $RESULTS.
# Run phases, most valuable numbers first: env (GPU, driver, libcuda, versions: needs no pycuda), install (the CUDA
# binding: BINDING=auto uses cuda-python where it is installed, as on the GPU image, and builds pycuda against the
# driver found by stp_edge.cuda.driver only where no binding is, or when BINDING=pycuda; `pip install --target`:
# the machine's python3 is a venv), kernels (the `gpu`-marked tests; a skip counts as a failure), timings
# (preprocess 1080p batch 1/16, torch fp16 ViT-B/16 eager and CUDA graphs), encoder (CUDA-preprocessed images into the torch ViT vs the CPU path),
# nvdec (PyNvVideoCodec from the wheel `prepare` carries; NVDEC output vs FFmpeg's, device preprocessing vs the CPU
# path), thread (the preprocessor called from a second thread), sanitizer (compute-sanitizer memcheck on two kernel
# cases). The kernels phase also runs the device feature ring (CuPy memory), CUDA-graph capture (CuPy kernels) and
# the cuda-python binding's GPU tests. No TensorRT is on the GPU image: TrtRunner itself is not exercised.
# Environment: PYTHON (python3), RESULTS ($OUT or build/gpu-check), WORK (scratch), DEADLINE (330), CUDA_ROOT,
# BINDING (auto|pycuda|cuda-python: exported as STP_EDGE_CUDA_BINDING, so every phase runs under that binding).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
MODE=run
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        prepare|run|all) MODE=$arg ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "usage: $0 [--dry-run] [prepare|run|all]" >&2; exit 2 ;;
    esac
done

PY="${PYTHON:-python3}"
RESULTS="${RESULTS:-${OUT:-build/gpu-check}}"
WORK="${WORK:-${TMPDIR:-/tmp}/stp-edge-gpu-check}"
DEPS="${DEPS:-$WORK/deps}"
REPORT="$RESULTS/gpu-check.json"
LOG="$RESULTS/gpu-check.log"
WHEELS=third_party/pycuda
FATBIN=build/kernels/preprocess.fatbin
NVDEC_WHEELS="third_party/wheels/pynvvideocodec-*.whl"
DEADLINE="${DEADLINE:-330}"
BINDING="${BINDING:-auto}"
T0=$(date +%s)
FAILED=()

# phase NAME LIMIT COMMAND...: print it; unless --dry-run, run it under min(LIMIT, time left), record
# {phase, command, rc, seconds, timeout_s} in $WORK/NAME.run.json and fold everything into $REPORT.
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
    if [ "$limit" -le 0 ]; then rc=124; else timeout --kill-after=5 "$limit" "$@" || rc=$?; fi
    printf '{"phase": "%s", "command": "%s", "rc": %d, "seconds": %d, "timeout_s": %d}\n' "$name" \
        "$(printf '%s ' "$@" | sed 's/\\/\\\\/g; s/"/\\"/g')" "$rc" "$(( $(date +%s) - start ))" "$limit" \
        > "$WORK/$name.run.json"
    if [ "$rc" != 0 ]; then FAILED+=("$name(rc=$rc)"); echo "-- phase $name FAILED (rc=$rc)"; fi
    [ "$MODE" = prepare ] || "$PY" scripts/gpu_phases.py merge "$WORK" --out "$REPORT" >/dev/null || true
    return 0
}

prepare() {
    # PY_VERSIONS: the GPU machine's Python (3.12 on this workplace's image); the carry limit is 64 MiB.
    phase fetch-pycuda 600 env PY_VERSIONS="${PY_VERSIONS:-3.12}" WITH_TEST_DEPS="${WITH_TEST_DEPS:-0}" \
        scripts/fetch_pycuda.sh
    phase fatbin 600 "${VENV_PY:-.venv/bin/python}" -m stp_edge.cuda.build --out build/kernels
    phase fetch-nvdec 300 "${VENV_PY:-.venv/bin/python}" -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version "${PY_VERSIONS:-3.12}" -d third_party/wheels "pynvvideocodec==2.2.4"
    echo "carry: third_party build/kernels"
}

run_checks() {
    export PYTHONPATH="$PWD:$DEPS${PYTHONPATH:+:$PYTHONPATH}" STP_EDGE_FATBIN="$PWD/$FATBIN" \
        STP_EDGE_CUDA_BINDING="$BINDING"
    echo "== output: $REPORT"
    echo "== output: $LOG"
    if [ "$DRY" = 0 ]; then
        rm -f "$WORK"/*.run.json "$WORK"/*.json "$WORK"/*.xml 2>/dev/null || true
        [ -f "$FATBIN" ] || echo "warning: no $FATBIN (run '$0 prepare' and carry build/kernels): kernels compile at run time"
        # The driver may sit on a mount the loader does not search: pycuda's extension needs libcuda.so.1.
        drvdir=$("$PY" -m stp_edge.cuda.driver --dir 2>/dev/null || true)
        [ -z "$drvdir" ] || export LD_LIBRARY_PATH="$drvdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    phase env 20 "$PY" scripts/gpu_phases.py env --out "$WORK/env.json"
    # cuda-python is on the GPU image: installing is a check; building pycuda (BINDING=pycuda) takes 1-2 minutes.
    phase install "$([ "$BINDING" = pycuda ] && echo 150 || echo 40)" env PYTHON="$PY" DEPS="$DEPS" WHEELS="$WHEELS" BINDING="$BINDING" scripts/gpu_install.sh
    phase kernels 90 "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_cuda_gpu.py tests/test_gpu_path.py \
        tests/test_cuda_binding.py tests/test_device_ring.py tests/test_cuda_graphs.py --junitxml "$WORK/kernels.xml"
    phase timings 60 "$PY" scripts/gpu_phases.py timings --repeats 20 --out "$WORK/timings.json"
    phase encoder 40 "$PY" scripts/gpu_phases.py encoder --out "$WORK/encoder.json"
    # NVDEC through PyNvVideoCodec: the image lacks it, so `prepare` carries its wheel (a skip counts as a failure).
    phase nvdec 45 bash -c "'$PY' -m pip install --quiet --no-deps --target '$DEPS' $NVDEC_WHEELS 2>&1 | tail -2; \
        '$PY' -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_nvdec.py --junitxml '$WORK/nvdec.xml'"
    phase thread 20 "$PY" scripts/gpu_phases.py thread --out "$WORK/thread.json"
    phase sanitizer 40 compute-sanitizer --tool memcheck --error-exitcode 3 --print-limit 20 \
        "$PY" scripts/gpu_phases.py sanitize --out "$WORK/sanitizer.json"
}

if [ "$DRY" = 0 ]; then
    mkdir -p "$WORK"
    if [ "$MODE" != prepare ]; then mkdir -p "$RESULTS"; exec > >(tee -a "$LOG") 2>&1; TEE_PID=$!; fi
fi
case "$MODE" in
    prepare) prepare ;;
    run) run_checks ;;
    all) prepare; run_checks ;;
esac
if [ "$DRY" = 0 ] && [ "$MODE" != prepare ]; then
    # The report decides: a phase also fails when its result does (e.g. a skipped GPU test).
    mapfile -t FAILED < <("$PY" -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["failed"]))' \
        "$REPORT" 2>/dev/null | sed '/^$/d' || true)
fi
echo "== summary: ${#FAILED[@]} failed${FAILED:+: ${FAILED[*]}} in $(( $(date +%s) - T0 )) s (results: $REPORT)"
status=0
[ "${#FAILED[@]}" = 0 ] || status=1
if [ -n "${TEE_PID:-}" ]; then exec 1>&- 2>&-; wait "$TEE_PID" 2>/dev/null || true; fi  # the log is complete
exit "$status"
