"""Compile kernels/preprocess.cu with nvcc into one fatbin: cubins for each target GPU plus PTX.

    python -m stp_edge.cuda.build --out build/kernels

Targets (cubins): sm_80 (A100), sm_86 (RTX 30xx, A10/A40), sm_87 (Jetson Orin), sm_89 (L4/L40, RTX 40xx),
sm_90 (H100/H200), sm_110 (Jetson Thor, CUDA 13 numbering); plus compute_90 PTX, which the driver JIT-compiles
on any newer GPU (Blackwell sm_100/sm_120 included). CUDA 13's nvcc starts at sm_75, so Jetson Xavier (sm_72,
JetPack 5) needs a CUDA 11/12 nvcc: run this module there with `--arch 72 --ptx 72`.

Next to the fatbin goes `preprocess.fatbin.json` with the sha256 of the sources; the loader
(stp_edge.cuda.kernels) uses a fatbin only when that digest matches the sources it would compile.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from stp_edge.errors import MissingInputError, StpEdgeError

DEFAULT_ARCHS: tuple[str, ...] = ("80", "86", "87", "89", "90", "110")
DEFAULT_PTX = "90"
SOURCE = "preprocess.cu"
HEADERS = ("preprocess.cuh",)
FATBIN = "preprocess.fatbin"
NVCC_FLAGS = ("-O3", "-std=c++17", "--Werror", "all-warnings")


class NvccError(StpEdgeError, RuntimeError):
    """nvcc is missing or failed; the message carries its output."""


def kernels_dir() -> Path:
    """The directory holding preprocess.cu: the installed `stp_edge.kernels` package or the repo's kernels/."""
    spec = importlib.util.find_spec("stp_edge.kernels")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / SOURCE).is_file():
                return Path(loc)
    repo = Path(__file__).resolve().parents[2] / "kernels"
    if (repo / SOURCE).is_file():
        return repo
    raise MissingInputError(f"cannot find {SOURCE}: neither the stp_edge.kernels package nor {repo} has it")


def source_digest(directory: Path | None = None) -> str:
    """sha256 over the kernel source and its headers (what a fatbin was built from)."""
    d = directory or kernels_dir()
    h = hashlib.sha256()
    for name in (SOURCE, *HEADERS):
        h.update(name.encode())
        h.update((d / name).read_bytes())
    return h.hexdigest()


def inlined_source(directory: Path | None = None) -> str:
    """preprocess.cu with its headers pasted in: one self-contained text for run-time compilation."""
    d = directory or kernels_dir()
    source = (d / SOURCE).read_text(encoding="utf-8")
    for name in HEADERS:
        header = (d / name).read_text(encoding="utf-8").replace("#pragma once", "")
        source = source.replace(f'#include "{name}"', header)
    return source


def find_nvcc() -> str:
    """Path of nvcc ($CUDA_HOME/bin, $CUDA_PATH/bin, PATH); NvccError when there is none."""
    for env in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
        root = os.environ.get(env)
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found is None:
        raise NvccError("nvcc not found: install the CUDA toolkit or set CUDA_HOME")
    return found


def supported_archs(nvcc: str | None = None) -> set[str]:
    """SM versions this nvcc can compile for (`nvcc --list-gpu-arch`), e.g. {"75", "80", ..., "121"}."""
    proc = subprocess.run([nvcc or find_nvcc(), "--list-gpu-arch"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NvccError(f"nvcc --list-gpu-arch failed: {proc.stdout}{proc.stderr}")
    return {line.strip().removeprefix("compute_") for line in proc.stdout.split() if line.startswith("compute_")}


def default_archs(nvcc: str | None = None) -> tuple[str, ...]:
    """DEFAULT_ARCHS that this nvcc supports (CUDA 12 has no sm_110; CUDA 13 has no sm_72)."""
    have = supported_archs(nvcc)
    return tuple(a for a in DEFAULT_ARCHS if a in have)


def gencode_flags(archs: Sequence[str] = DEFAULT_ARCHS, ptx: str | None = DEFAULT_PTX) -> list[str]:
    """`-gencode` flags: one cubin per arch, plus PTX of `ptx` (None: no PTX)."""
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    if ptx:
        flags += ["-gencode", f"arch=compute_{ptx},code=compute_{ptx}"]
    return flags


def nvcc_command(
    out: Path,
    archs: Sequence[str] = DEFAULT_ARCHS,
    ptx: str | None = DEFAULT_PTX,
    nvcc: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The nvcc command line that builds the fatbin `out`."""
    src = kernels_dir()
    return [
        nvcc or find_nvcc(),
        "-fatbin",
        *NVCC_FLAGS,
        f"-I{src}",
        *gencode_flags(archs, ptx),
        *extra,
        str(src / SOURCE),
        "-o",
        str(out),
    ]


def build_fatbin(
    out_dir: str | Path,
    archs: Sequence[str] | None = None,
    ptx: str | None = DEFAULT_PTX,
    nvcc: str | None = None,
    verbose: bool = False,
) -> Path:
    """Compile the preprocessing kernels to `out_dir/preprocess.fatbin` (+ its .json sidecar).

    Args:
        out_dir: output directory (created).
        archs: SM versions to embed cubins for, e.g. ("87",) for an Orin-only build (default: the
            DEFAULT_ARCHS this nvcc supports; the ones it lacks are named on stderr).
        ptx: compute capability of the embedded PTX (None for none).
        nvcc: nvcc to use (default: found via CUDA_HOME or PATH).
        verbose: pass `-Xptxas -v` and print nvcc's output (registers, spills).

    Returns:
        Path of the fatbin.

    Raises:
        NvccError: nvcc is missing or the compilation failed (its output is in the message).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / FATBIN
    nvcc = nvcc or find_nvcc()
    if archs is None:
        archs = default_archs(nvcc)
        missing = [a for a in DEFAULT_ARCHS if a not in archs]
        if missing:
            print(f"warning: this nvcc cannot build sm_{', sm_'.join(missing)}; skipped", file=sys.stderr)
    cmd = nvcc_command(out, archs, ptx, nvcc, ["-Xptxas", "-v"] if verbose else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NvccError(f"nvcc failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    if verbose:
        sys.stdout.write(proc.stdout + proc.stderr)
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    meta = {
        "source_sha256": source_digest(),
        "archs": list(archs),
        "ptx": ptx,
        "nvcc": version.strip().splitlines()[-1] if version.strip() else "unknown",
        "command": cmd,
    }
    (out_dir / (FATBIN + ".json")).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="build/kernels", help="output directory (default: build/kernels)")
    ap.add_argument(
        "--arch",
        nargs="+",
        default=None,
        help=f"SM versions for cubins, e.g. 87 90 (default: all of {', '.join(DEFAULT_ARCHS)} that this nvcc supports)",
    )
    ap.add_argument("--ptx", default=DEFAULT_PTX, help="compute capability of embedded PTX ('none' to skip)")
    ap.add_argument("--nvcc", default=None, help="nvcc to use (default: CUDA_HOME/bin/nvcc or PATH)")
    ap.add_argument("-v", "--verbose", action="store_true", help="show ptxas register/spill report")
    args = ap.parse_args(argv)
    try:
        out = build_fatbin(args.out, args.arch, None if args.ptx == "none" else args.ptx, args.nvcc, args.verbose)
    except NvccError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    archs = json.loads(out.with_name(out.name + ".json").read_text(encoding="utf-8"))["archs"]
    print(f"wrote {out} ({out.stat().st_size} bytes; sm_{', sm_'.join(archs)}; ptx {args.ptx})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
