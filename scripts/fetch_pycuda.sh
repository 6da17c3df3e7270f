#!/usr/bin/env bash
# Download what scripts/gpu_check.sh needs to install pycuda on a GPU machine without internet access:
# the pycuda source archive (built there against the machine's CUDA) and wheels of its pure-Python
# dependencies (pytools, platformdirs, mako, typing_extensions, siphash24, MarkupSafe), into
# third_party/pycuda/ (git-ignored). Run it on a machine with internet, from anywhere in the repository:
#
#   scripts/fetch_pycuda.sh                      # CPython 3.10-3.13, x86-64
#   PY_VERSIONS="3.12" ARCH=aarch64 scripts/fetch_pycuda.sh    # e.g. a Jetson
#   WITH_TEST_DEPS=1 scripts/fetch_pycuda.sh     # also pillow, opencv-python-headless, pytest (~60 MB/version)
#
# About 2 MB without the test dependencies. Then copy/carry third_party/ along with the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=third_party/pycuda
PYCUDA_VERSION="${PYCUDA_VERSION:-2026.1}"
PY_VERSIONS="${PY_VERSIONS:-3.10 3.11 3.12 3.13}"
ARCH="${ARCH:-x86_64}"
if [ -x .venv/bin/pip ]; then PIP=(.venv/bin/pip); else PIP=(python3 -m pip); fi
mkdir -p "$DEST"

"${PIP[@]}" download --no-deps --no-binary pycuda "pycuda==${PYCUDA_VERSION}" -d "$DEST"

PLATFORMS=(--platform "manylinux2014_${ARCH}" --platform "manylinux_2_17_${ARCH}" --platform "manylinux_2_28_${ARCH}")
DEPS=(pytools platformdirs mako markupsafe typing_extensions setuptools wheel)
if [ "${WITH_TEST_DEPS:-0}" = 1 ]; then DEPS+=(pillow opencv-python-headless pytest); fi
for v in $PY_VERSIONS; do
    # Binary wheels resolved for that interpreter (siphash24 and MarkupSafe are compiled).
    "${PIP[@]}" download --only-binary=:all: --python-version "$v" --implementation cp "${PLATFORMS[@]}" \
        -d "$DEST" "${DEPS[@]}"
done
ls -la "$DEST"
echo "third_party/pycuda is ready; on the GPU machine run scripts/gpu_check.sh"
