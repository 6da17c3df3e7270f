#!/usr/bin/env bash
# Install what scripts/gpu_check.sh needs on a GPU machine without network, without a new venv: the pure-Python
# dependencies from third_party/pycuda with `pip install --target $DEPS`, and the CUDA binding. BINDING=auto (the
# default) uses pycuda or cuda-python where one is installed (the GPU image has cuda-python: nothing to build) and
# builds pycuda only where neither is; BINDING=pycuda builds pycuda when it is missing, compiled in place with
# parallel jobs (setuptools builds ~40 C++ files serially through pip: minutes) and linked into $DEPS;
# BINDING=cuda-python requires cuda.bindings. The caller puts $DEPS on PYTHONPATH and exports
# STP_EDGE_CUDA_BINDING=$BINDING. Environment: PYTHON, DEPS, WHEELS, BINDING, CUDA_ROOT (default: from nvcc).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEPS="${DEPS:?set DEPS}"
WHEELS="${WHEELS:-third_party/pycuda}"
BINDING="${BINDING:-auto}"
export PYTHONPATH="$DEPS${PYTHONPATH:+:$PYTHONPATH}"
build_pycuda=0
case "$BINDING" in
    pycuda) "$PY" -c "import pycuda.driver" 2>/dev/null || build_pycuda=1 ;;
    cuda-python) "$PY" -c "import cuda.bindings.driver" || { echo "BINDING=cuda-python: cuda.bindings is missing"; exit 2; } ;;
    auto) "$PY" -c "import pycuda.driver" 2>/dev/null || "$PY" -c "import cuda.bindings.driver" 2>/dev/null \
              || build_pycuda=1 ;;
    *) echo "BINDING must be auto, pycuda or cuda-python, got $BINDING" >&2; exit 2 ;;
esac
if [ -z "${CUDA_ROOT:-}" ] && [ "$build_pycuda" = 1 ]; then
    # nvcc is often a wrapper script or a symlink; ask it where its toolkit is.
    top=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
    CUDA_ROOT=$(readlink -f "${top:-$(dirname "$(dirname "$(command -v nvcc)")")}")
fi
mkdir -p "$DEPS"
missing=()
pairs=(pytest:pytest PIL:pillow cv2:opencv-python-headless)
[ "$build_pycuda" = 0 ] || pairs+=(pytools:pytools mako:mako platformdirs:platformdirs)
for pair in "${pairs[@]}"; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --target "$DEPS" "${missing[@]}"
fi
if [ "$build_pycuda" = 1 ]; then
    ls "$WHEELS"/pycuda-*.tar.gz >/dev/null 2>&1 || { echo "no pycuda sdist in $WHEELS: run scripts/gpu_check.sh prepare"; exit 2; }
    src="$DEPS/src"
    rm -rf "$src" && mkdir -p "$src"
    tar xzf "$(ls "$WHEELS"/pycuda-*.tar.gz | tail -1)" -C "$src"
    dir=$(ls -d "$src"/pycuda-* | tail -1)
    # pycuda links -lcuda. The driver's libcuda.so.1 may sit on a read-only mount that the ldconfig cache does
    # not list, with no unversioned libcuda.so beside it, and a toolkit may ship no stubs: stp_edge.cuda.driver
    # searches everywhere (stubs last) and makes $src/libcuda/libcuda.so point at what it found.
    # cuRAND is not used by stp-edge and left out.
    drvdir=$(PYTHONPATH="$PWD:$PYTHONPATH" "$PY" -m stp_edge.cuda.driver --allow-stub --link-dir "$src/libcuda")
    libdirs="$drvdir,$CUDA_ROOT/lib64,$CUDA_ROOT/lib"
    (cd "$dir" && "$PY" configure.py --cuda-root="$CUDA_ROOT" --no-cuda-enable-curand --cudadrv-lib-dir="$libdirs" \
        >/dev/null && "$PY" setup.py -q build_ext --inplace -j "$(nproc)")
    ln -sfn "$dir/pycuda" "$DEPS/pycuda"
fi
STP_EDGE_CUDA_BINDING="$BINDING" PYTHONPATH="$PWD:$PYTHONPATH" "$PY" -c "from stp_edge.cuda.binding import \
binding_name, driver; d = driver(); d.init(); print('CUDA binding:', binding_name(), '|', d.Device(0).name())"
