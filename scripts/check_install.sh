#!/usr/bin/env bash
# Clean-install check: build stp-edge's sdist and, from it, the wheel; install the wheel
# non-editable into two fresh venvs outside the checkout and run the CLI from a directory outside it:
#   [ort]         every runtime module imports without torch, `stp-edge --help`, export refused with a
#                 one-line error naming [export], `stp-edge run` on a bundle exported in the other venv;
#                 the imports and the run again on Python 3.10 when an interpreter is found (PYTHON310,
#                 python3.10 or pyenv's), the oldest Python supported
#   [export,ort]  `stp-edge export --random`, `verify`, `run` on a generated clip; `export --demo` when the
#                 demo_model/ distribution exists
# Versions are held to requirements/ci.txt (as pip constraints). Env: BUILD_PYTHON builds (default
# .venv/bin/python, which needs setuptools), PYTHON makes the venvs (default python3), KEEP=1 keeps the
# temporary directory.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_PYTHON=${BUILD_PYTHON:-$REPO/.venv/bin/python}
PYTHON=${PYTHON:-python3}
TORCH=torch==2.13.0  # the CPU build on this machine's disk; a looser spec pulls a multi-GB CUDA build
WORK=$(mktemp -d "${TMPDIR:-/tmp}/stp-edge-install.XXXXXX")
if [[ ${KEEP:-0} == 1 ]]; then echo "keeping $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
PINS=$WORK/constraints.txt  # requirements/ci.txt as pip constraints, which cannot carry extras
sed -E 's/#.*//; s/^([A-Za-z0-9._-]+)\[[^]]*\]/\1/' "$REPO/requirements/ci.txt" >"$PINS"

step() { printf '\n[check-install %3ds] %s\n' "$SECONDS" "$*"; }
fail() { printf 'check-install: FAILED: %s\n' "$*" >&2; exit 1; }
# Run a noisy command (builds, pip) with its output in a log that is shown only when it fails.
quiet() { "$@" >"$WORK/last.log" 2>&1 || { cat "$WORK/last.log" >&2; fail "$*"; }; }
# Import every runtime module (all but model/, export/, demo/) with interpreter $1; torch must stay out.
import_runtime() {
    "$1" -c "import importlib, pkgutil, sys, stp_edge
todo, names = [stp_edge], []
while todo:
    pkg = todo.pop()
    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):
        if m.name.split('.')[1] not in ('model', 'export', 'demo'):
            names.append(m.name)
            mod = importlib.import_module(m.name)
            todo += [mod] if m.ispkg else []
assert stp_edge.__file__.startswith(sys.prefix), stp_edge.__file__
assert 'torch' not in sys.modules
print(f'{len(names)} runtime modules imported from {stp_edge.__path__[0]}')"
}
# Check that two `stp-edge run --jsonl` outputs have the same snippets and scores.
same_scores() {
    "$ORT/python" - "$1" "$2" <<'EOF'
import json
import sys

a, b = ([json.loads(line) for line in open(name)] for name in sys.argv[1:])
assert a and len(a) == len(b), (len(a), len(b))
assert all(abs(x["score"] - y["score"]) < 1e-5 for x, y in zip(a, b)), "the scores differ"
print(f"{len(b)} snippets, the same scores in {sys.argv[1]} and {sys.argv[2]}")
EOF
}
# Make the fresh venv $WORK/$1 with interpreter $2 and pip install the rest of the arguments; log in $WORK/$1.log.
make_venv() {
    local name=$1 python=$2
    shift 2
    { "$python" -m venv "$WORK/$name" && "$WORK/$name/bin/python" -m pip install "$@"; } >"$WORK/$name.log" 2>&1
}
# A Python 3.10 interpreter (the oldest supported: JetPack 6): $PYTHON310, python3.10, or pyenv's.
find_python310() {
    local c
    for c in "${PYTHON310:-}" python3.10 "$(pyenv root 2>/dev/null)"/versions/3.10*/bin/python3.10; do
        if [[ -n $c ]] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

step "copy the working tree (tracked and untracked files, not ignored ones) to $WORK/src"
mkdir "$WORK/src" "$WORK/dist" "$WORK/run"
cd "$REPO"
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do if [[ -f $f ]]; then printf '%s\0' "$f"; fi; done \
    | xargs -0 cp --parents -t "$WORK/src"

step "build the sdist, then the wheel from the sdist (both must carry the package data)"
cd "$WORK/src"
quiet "$BUILD_PYTHON" -c 'import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])' \
    "$WORK/dist"
SDIST=$(ls "$WORK"/dist/stp_edge-*.tar.gz)
quiet "$BUILD_PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$WORK/dist" "$SDIST"
WHEEL=$(ls "$WORK"/dist/stp_edge-*.whl)
"$BUILD_PYTHON" - "$SDIST" "$WHEEL" <<'EOF'
import sys, tarfile, zipfile

sdist = {n.split("/", 1)[1] for n in tarfile.open(sys.argv[1]).getnames() if "/" in n}
wheel = set(zipfile.ZipFile(sys.argv[2]).namelist())
bpe = "stp_edge/model/assets/bpe_simple_vocab_16e6.txt.gz"
need = {"sdist": (sdist, [bpe, "stp_edge/model/assets/LICENSE-CLIP", "export/bundle_export.py",
                          "kernels/preprocess.cu", "setup.py"]),
        "wheel": (wheel, [bpe, "stp_edge/model/assets/LICENSE-CLIP", "stp_edge/export/bundle_export.py",
                          "stp_edge/kernels/preprocess.cu", "stp_edge/kernels/preprocess.cuh", "stp_edge/cli.py"])}
missing = [f"{kind}: {n}" for kind, (have, names) in need.items() for n in names if n not in have]
stray = sorted({n.split("/")[0] for n in wheel if not n.split("/")[0].endswith(".dist-info")} - {"stp_edge"})
if missing or stray:
    sys.exit(f"missing {missing}; top-level entries other than stp_edge in the wheel: {stray}")
print(f"{sys.argv[2].rsplit('/', 1)[1]}: {len(wheel)} files, package data present")
EOF

ORT=$WORK/venv-ort/bin
EXP=$WORK/venv-export/bin
PY310=$(find_python310) || PY310=
W=$(basename "$WHEEL")
step "fresh venvs, installed in parallel: [ort] $W[ort]; [export,ort] $W[export,ort] $TORCH${PY310:+;
    [ort] on Python 3.10 $W[ort]}"
# The Python 3.10 venv resolves without ci.txt: its numpy and onnxruntime pins need Python 3.11.
declare -A JOBS
make_venv venv-ort "$PYTHON" -c "$PINS" "$WHEEL[ort]" & JOBS[venv-ort]=$!
make_venv venv-export "$PYTHON" -c "$PINS" "$WHEEL[export,ort]" "$TORCH" & JOBS[venv-export]=$!
if [[ -n $PY310 ]]; then make_venv venv-310 "$PY310" "$WHEEL[ort]" & JOBS[venv-310]=$!; fi
FAILED=()
for name in "${!JOBS[@]}"; do wait "${JOBS[$name]}" || FAILED+=("$name"); done  # all finish before any report
for name in "${FAILED[@]}"; do cat "$WORK/$name.log" >&2; done
[[ ${#FAILED[@]} == 0 ]] || fail "installing ${FAILED[*]}"

cd "$WORK/run"  # outside the checkout: nothing can be imported from the source tree
step "[ort] import stp_edge and every runtime module from site-packages; torch is not installed"
"$ORT/python" -c "import importlib.util; assert importlib.util.find_spec('torch') is None"
import_runtime "$ORT/python"
step "[ort] the GStreamer element ships inside the package (GST_PLUGIN_PATH=\$(python -m stp_edge.apps.gst))"
"$ORT/python" -c "import sys; from stp_edge.apps.gst import plugin_path
p = plugin_path() / 'python' / 'stpedge.py'
assert p.is_file() and str(p).startswith(sys.prefix), p"
step "[ort] a deployment config without PyYAML: one line naming [apps]"
printf 'bundle: x.stp\ncameras: {}\n' >"$WORK/run/cameras.yaml"
rc=0
"$ORT/stp-edge" run --config "$WORK/run/cameras.yaml" >"$WORK/out.txt" 2>&1 || rc=$?
grep -q "stp-edge\[apps\]" "$WORK/out.txt" || fail "run --config without pyyaml: $(cat "$WORK/out.txt")"
[[ $rc == 2 ]] || fail "run --config without pyyaml exited $rc, not 2"
step "[export,ort] import stp_edge does not import torch though it is installed"
"$EXP/python" -c "import sys, stp_edge; assert 'torch' not in sys.modules and stp_edge.__file__.startswith(sys.prefix)"

step "[ort] stp-edge --help"
"$ORT/stp-edge" --help >/dev/null
step "[ort] stp-edge export is refused: exit code 2, one line naming [export], no traceback"
rc=0
"$ORT/stp-edge" export --random --config tiny -o refused.stp >/dev/null 2>err.txt || rc=$?
cat err.txt
[[ $rc == 2 ]] || fail "exit code $rc, expected 2"
[[ $(wc -l <err.txt) == 1 ]] || fail "expected one line on stderr"
grep -q '\[export\]' err.txt || fail "the error does not name the [export] extra"
[[ ! -e refused.stp ]] || fail "a refused export left refused.stp behind"

step "[export,ort] stp-edge export --random --config tiny -o X.stp"
"$EXP/stp-edge" export --random --config tiny -o X.stp
"$EXP/python" -c "import sys; from stp_edge.model.tokenizer import find_bpe_file
p = find_bpe_file(); assert str(p).startswith(sys.prefix), p; print('vocabulary:', p)"
step "[export,ort] stp-edge verify X.stp"
"$EXP/stp-edge" verify X.stp

step "generate clip.avi: a coloured square moving over a gradient (24 frames, 96x64)"
"$EXP/python" - <<'EOF'
import cv2
import numpy as np

h, w = 64, 96
writer = cv2.VideoWriter("clip.avi", cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (w, h))
assert writer.isOpened()
background = np.broadcast_to(np.linspace(40, 200, w, dtype=np.uint8)[None, :, None], (h, w, 3))
for i in range(24):
    frame = background.copy()
    x, y = 4 + 3 * i, 10 + (i % 8) * 4
    frame[y : y + 16, x : x + 16] = (30, 60 + 8 * i, 230)
    writer.write(frame)
writer.release()
EOF

step "[export,ort] stp-edge run X.stp clip.avi --jsonl out.jsonl"
"$EXP/stp-edge" run X.stp clip.avi --jsonl out.jsonl
[[ -s out.jsonl ]] || fail "out.jsonl is empty"

step "[ort] stp-edge run on a copy of the bundle exported in the [export,ort] venv"
cp -r X.stp copied.stp
"$ORT/stp-edge" run copied.stp clip.avi --jsonl out-ort.jsonl
same_scores out.jsonl out-ort.jsonl

if [[ -n $PY310 ]]; then
    step "[ort, Python 3.10: $PY310] import every runtime module; stp-edge run on the same bundle"
    import_runtime "$WORK/venv-310/bin/python"
    "$WORK/venv-310/bin/stp-edge" run copied.stp clip.avi --jsonl out-310.jsonl
    same_scores out.jsonl out-310.jsonl
else
    step "no Python 3.10 interpreter (set PYTHON310 to one): the Python 3.10 runtime check is skipped"
fi

if [[ -f $REPO/demo_model/setup.py ]]; then
    step "[export,ort] install the stp-edge-demo-model wheel, stp-edge export --demo -o D.stp"
    quiet "$BUILD_PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src/demo_model"
    quiet "$EXP/python" -m pip install --no-deps "$(ls "$WORK"/dist/stp_edge_demo_model-*.whl)"
    "$EXP/stp-edge" export --demo -o D.stp
fi

step "passed"
