"""Load the preprocessing kernels: a prebuilt fatbin when one matches the sources, else compile.

Order: an explicit `fatbin` path, then $STP_EDGE_FATBIN, then build/kernels/preprocess.fatbin in the
repository. A fatbin is used only when its sidecar digest matches the sources (a stale build is never run)
and the driver can load it for this GPU; otherwise the sources are compiled at run time (needs nvcc on the
machine): with pycuda.compiler.SourceModule under pycuda, with `stp_edge.cuda.build` for this GPU's
architecture under cuda-python. The binding (stp_edge.cuda.binding) is imported inside functions only.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stp_edge._deps import require
from stp_edge.cuda.build import FATBIN, SOURCE, inlined_source, kernels_dir, source_digest

log = logging.getLogger(__name__)

# Kernel name -> `prepare` argument format (P pointer, q int64, i int32, f float32), read by both bindings.
KERNELS = {
    "stp_resize_h_bgr8": "PqqPPiiiiP",
    "stp_resize_h_nv12": "PqqqifffffffPPiiiiP",
    "stp_resize_v_f32": "PiiPPiffffffP",
    "stp_resize_v_f16": "PiiPPiffffffP",
}
BLOCK = (32, 8, 1)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def grid_h(size: int, mid_rows: int, batch: int) -> tuple[int, int, int]:
    """Grid of the horizontal pass: one thread per (crop column, intermediate row, frame)."""
    return (_ceil_div(size, BLOCK[0]), _ceil_div(mid_rows, BLOCK[1]), batch)


def grid_v(size: int, batch: int) -> tuple[int, int, int]:
    """Grid of the vertical pass: one thread per (crop column, crop row, frame)."""
    return (_ceil_div(size, BLOCK[0]), _ceil_div(size, BLOCK[1]), batch)


def require_current_context(cuda: Any) -> Any:
    """The current CUDA context, or a RuntimeError saying how to make one current.

    Nothing here makes a context current implicitly (pycuda's autoprimaryctx would bind device 0 to the
    importing thread): callers push one, e.g. `with PrimaryContext(device).current():`.
    """
    ctx = cuda.Context.get_current()
    if ctx is None:
        raise RuntimeError("no CUDA context is current on this thread: load the kernels inside "
                           "`with stp_edge.cuda.context.PrimaryContext(device).current():` (CudaPreprocessor does)")
    return ctx


@dataclass
class PreprocessKernels:
    """The loaded module and its prepared kernel functions (`funcs[name]`), and where they came from."""

    module: Any
    funcs: dict[str, Any] = field(repr=False)
    origin: str


def _default_fatbin() -> Path | None:
    env = os.environ.get("STP_EDGE_FATBIN")
    if env:
        return Path(env)
    repo_build = Path(__file__).resolve().parents[2] / "build" / "kernels" / FATBIN
    return repo_build if repo_build.is_file() else None


def fatbin_is_current(path: Path) -> bool:
    """True if `path` exists and its sidecar says it was built from the current sources."""
    meta = path.with_name(path.name + ".json")
    if not path.is_file() or not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("source_sha256") == source_digest()
    except (OSError, ValueError):
        return False


def load_kernels(fatbin: str | Path | None = None, compile_fallback: bool = True,
                 binding: str | None = None) -> PreprocessKernels:
    """Load the preprocessing kernels into the current context (a module belongs to the context it loads in).

    Args:
        fatbin: prebuilt fatbin (default: $STP_EDGE_FATBIN or the repo's build/kernels/preprocess.fatbin).
        compile_fallback: compile the sources when no usable fatbin exists.
        binding: "pycuda", "cuda-python" or None ($STP_EDGE_CUDA_BINDING, else auto): stp_edge.cuda.binding.

    Returns:
        The module and its prepared functions.

    Raises:
        MissingDependencyError: no CUDA binding is installed (the message names both extras).
        RuntimeError: no current CUDA context, no usable fatbin and `compile_fallback` is False, or the
            compilation failed.
    """
    from stp_edge.cuda.binding import CudaPythonDriver, driver

    cuda = driver(binding)
    require_current_context(cuda)
    path = Path(fatbin) if fatbin is not None else _default_fatbin()
    module, origin = None, ""
    if path is not None:
        if fatbin_is_current(path):
            try:
                module, origin = cuda.module_from_file(str(path)), f"fatbin {path}"
            except cuda.Error as exc:  # no cubin/PTX this driver can use
                log.warning("cannot load %s on this GPU (%s); compiling the sources instead", path, exc)
        else:
            log.warning("%s is missing or older than the kernel sources; compiling the sources instead", path)
    if module is None:
        if not compile_fallback:
            raise RuntimeError(
                f"no usable preprocessing fatbin ({path}); build one with `python -m stp_edge.cuda.build`"
            )
        if isinstance(cuda, CudaPythonDriver):
            module, origin = _compile_nvcc(cuda), "compiled at run time (nvcc, cuda-python)"
        else:
            module, origin = _compile(), "compiled at run time (pycuda SourceModule)"
    funcs = {}
    for name, fmt in KERNELS.items():
        fn = module.get_function(name)
        fn.prepare(fmt)
        funcs[name] = fn
    return PreprocessKernels(module, funcs, origin)


def _compile() -> Any:
    compiler = require("pycuda.compiler", "compiling the CUDA preprocessing kernels")
    source = inlined_source()  # pycuda caches modules by source text: an edited header must change it
    try:
        return compiler.SourceModule(source, no_extern_c=True, options=["-O3", "-std=c++17"])
    except Exception as exc:  # pycuda raises CompileError (nvcc missing or failing)
        raise RuntimeError(
            f"compiling {kernels_dir() / SOURCE} with pycuda failed: {exc}. "
            "Prebuild the kernels with `python -m stp_edge.cuda.build`"
        ) from exc


def _compile_nvcc(cuda: Any) -> Any:
    """Build a fatbin for the current device's architecture with nvcc (stp_edge.cuda.build) and load it."""
    import tempfile

    from stp_edge.cuda.build import NvccError, build_fatbin

    major, minor = cuda.Context.get_device().compute_capability()
    with tempfile.TemporaryDirectory(prefix="stp-edge-kernels-") as tmp:
        try:
            path = build_fatbin(tmp, archs=[f"{major}{minor}"], ptx=None)
        except NvccError as exc:
            raise RuntimeError(
                f"compiling {kernels_dir() / SOURCE} for sm_{major}{minor} failed: {exc}. Prebuild the kernels "
                "with `python -m stp_edge.cuda.build` (or `make kernels`) and set $STP_EDGE_FATBIN"
            ) from exc
        return cuda.module_from_file(str(path))
