#!/usr/bin/env bash
# GPU check of the fused CUDA preprocessing (kernels/preprocess.cu) on a machine with an NVIDIA GPU, nvcc,
# numpy and PyTorch/CuPy but no pycuda and no internet (our H100/H200 image):
#   1. installs pycuda from the source archive in third_party/pycuda (built against this machine's CUDA),
#   2. builds the fatbin (python -m stp_edge.cuda.build),
#   3. runs the GPU tests (pytest -m gpu) and the nvcc/CPU preprocessing tests,
#   4. runs the GPU benchmark and prints its table.
#
# third_party/ is git-ignored: populate it first, on a machine with internet, with
#   scripts/fetch_pycuda.sh            (WITH_TEST_DEPS=1 if the GPU image lacks pillow/opencv/pytest)
# and carry it with the tree. Results land in benchmarks/results/ and, if $OUT is set, are copied there.
# Environment: PYTHON (default python3), CUDA_ROOT (default: found from nvcc), VENV (default /tmp/stp-edge-gpu-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
t_start=$(date +%s)
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-${TMPDIR:-/tmp}/stp-edge-gpu-venv}"
WHEELS=third_party/pycuda

if [ -z "${CUDA_ROOT:-}" ]; then
    # nvcc is often a wrapper script or a symlink; ask it where its toolkit is.
    top=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
    CUDA_ROOT=$(readlink -f "${top:-$(dirname "$(dirname "$(command -v nvcc)")")}")
fi
export CUDA_ROOT CUDA_HOME="$CUDA_ROOT" PATH="$CUDA_ROOT/bin:$PATH"
echo "== GPU / toolkit"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || true
nvcc --version | tail -2
echo "CUDA_ROOT=$CUDA_ROOT"

echo "== python env ($VENV, with the system site-packages: numpy, torch, cupy stay visible)"
if [ ! -x "$VENV/bin/python" ]; then "$PYTHON" -m venv --system-site-packages "$VENV"; fi
PY="$(cd "$VENV" && pwd)/bin/python"
pip_offline() { "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" "$@"; }
if ! "$PY" -c "import pycuda" 2>/dev/null; then
    ls "$WHEELS"/pycuda-*.tar.gz >/dev/null 2>&1 || { echo "no pycuda sdist in $WHEELS: run scripts/fetch_pycuda.sh"; exit 2; }
    "$PY" -c "import setuptools, wheel" 2>/dev/null || pip_offline setuptools wheel
    pip_offline pytools platformdirs mako
    t0=$(date +%s)
    # pycuda reads its CUDA location from siteconf.py (configure.py), not from the environment;
    # cuRAND (pycuda.curandom) is not used by stp-edge and left out, so the build needs only libcuda.
    src=$(mktemp -d)
    tar xzf "$(ls "$WHEELS"/pycuda-*.tar.gz | tail -1)" -C "$src"
    # pycuda links -lcuda: the toolkit's stub or the driver's libcuda.so. Containers often mount only
    # libcuda.so.1; then link against it through an unversioned symlink (the real driver library).
    libdirs="$CUDA_ROOT/lib64/stubs,$CUDA_ROOT/targets/$(uname -m)-linux/lib/stubs,$CUDA_ROOT/lib64,$CUDA_ROOT/lib"
    drv=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
    if [ -n "$drv" ]; then mkdir -p "$src/libcuda" && ln -sf "$drv" "$src/libcuda/libcuda.so"; libdirs="$libdirs,$src/libcuda"; fi
    (cd "$src"/pycuda-* && "$PY" configure.py --cuda-root="$CUDA_ROOT" --no-cuda-enable-curand \
        --cudadrv-lib-dir="$libdirs" >/dev/null)
    # ~40 C++ files, compiled serially by setuptools: a few minutes.
    pip_offline --no-build-isolation --no-deps "$src"/pycuda-*
    echo "pycuda built in $(( $(date +%s) - t0 )) s"
fi
for pair in PIL:pillow cv2:opencv-python-headless pytest:pytest; do
    mod=${pair%%:*} pkg=${pair#*:}
    if ! "$PY" -c "import $mod" 2>/dev/null; then
        pip_offline "$pkg" || { echo "$pkg missing and not in $WHEELS: run WITH_TEST_DEPS=1 scripts/fetch_pycuda.sh"; exit 2; }
    fi
done
"$PY" -c "import pycuda.driver as d; d.init(); print('pycuda', __import__('pycuda').VERSION_TEXT, '| devices:', [d.Device(i).name() for i in range(d.Device.count())])"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== fatbin"
"$PY" -m stp_edge.cuda.build --out build/kernels

echo "== tests"
"$PY" -m pytest -q -rs -m gpu tests/test_cuda_gpu.py
"$PY" -m pytest -q -rs tests/test_kernels_nvcc.py tests/test_preprocess.py

echo "== benchmark"
"$PY" benchmarks/bench_preprocess.py --gpu-only --repeats "${REPEATS:-7}"
if [ -n "${OUT:-}" ]; then cp benchmarks/results/preprocess_gpu.* "$OUT"/ 2>/dev/null || true; fi
echo "== gpu_check done in $(( $(date +%s) - t_start )) s"
