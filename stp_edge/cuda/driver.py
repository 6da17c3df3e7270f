"""libcuda, the CUDA driver library: found robustly, loaded with ctypes, for the few calls pycuda lacks.

The driver is not part of the toolkit: containers mount it read-only from the host (often at
/usr/local/nvidia/lib64 or under /run/nvidia/driver) where the ldconfig cache may not list it, and a
toolkit's `stubs/libcuda.so` only satisfies the linker: loading a stub fails at the first call. The search
order is: the dynamic loader's own name lookup (ctypes.util.find_library), the ldconfig cache, each
LD_LIBRARY_PATH entry, the distributions' and NVIDIA containers' driver folders, and the toolkit stubs last
(marked `stub=True`, usable for linking only).

    python -m stp_edge.cuda.driver             # print where libcuda is and how it was found
    python -m stp_edge.cuda.driver --link-dir D  # make D/libcuda.so point to the driver (for `-lcuda`)
    python -m stp_edge.cuda.driver --dir         # the driver's folder, for LD_LIBRARY_PATH
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stp_edge.errors import StpEdgeError, UsageError

SONAMES = ("libcuda.so.1", "libcuda.so")
# Driver folders: Debian/Ubuntu multiarch, RHEL, NVIDIA container toolkit mounts, WSL, the GPU operator's
# driver container (/run/nvidia/driver), and the CUDA forward-compatibility package.
DRIVER_DIRS = (
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "usr/lib64",
    "usr/lib",
    "usr/local/nvidia/lib64",
    "usr/local/nvidia/lib",
    "usr/lib/wsl/lib",
    "run/nvidia/driver/usr/lib/x86_64-linux-gnu",
    "run/nvidia/driver/usr/lib64",
    "usr/lib/x86_64-linux-gnu/nvidia/current",
    "usr/lib/aarch64-linux-gnu/tegra",
    "usr/local/cuda/compat",
)
STUB_DIRS = ("lib64/stubs", "targets/x86_64-linux/lib/stubs", "targets/sbsa-linux/lib/stubs", "lib/stubs")


class DriverNotFoundError(StpEdgeError, OSError):
    """No CUDA driver library (libcuda) was found, or only a toolkit stub."""


@dataclass(frozen=True)
class Libcuda:
    """Where libcuda was found: `path` (a file, or a soname the dynamic loader resolves), `how`, `stub`."""

    path: str
    how: str
    stub: bool = False


def is_stub(path: str | Path) -> bool:
    """True for a toolkit's link-time stub (it lives in a `stubs` folder and cannot run anything)."""
    return Path(path).parent.name == "stubs"


def _ldconfig_paths(text: str) -> list[str]:
    """libcuda paths listed by `ldconfig -p` output (`libcuda.so.1 (libc6,x86-64) => /path`)."""
    found = []
    for line in text.splitlines():
        name, _, target = line.strip().partition(" => ")
        if name.split(" ")[0] in SONAMES and target:
            found.append(target.strip())
    return found


def candidates(
    env: Mapping[str, str],
    ldconfig_text: str = "",
    find_library: Callable[[str], str | None] = ctypes.util.find_library,
    root: Path = Path("/"),
    cuda_roots: Sequence[Path] = (),
) -> list[Libcuda]:
    """Every place libcuda may be, in search order (existence is checked by `find_libcuda`).

    Args:
        env: environment (LD_LIBRARY_PATH, CUDA_HOME/CUDA_PATH/CUDA_ROOT for the stubs).
        ldconfig_text: output of `ldconfig -p` ("" when unavailable).
        find_library: ctypes.util.find_library or a stand-in (it returns a soname, not a path).
        root: file-system root the standard folders are looked up under (tests use a temporary one).
        cuda_roots: toolkit roots whose stubs come last (CUDA_HOME & co. are added).
    """
    out: list[Libcuda] = []
    name = find_library("cuda")
    if name:
        out.append(Libcuda(name, "ctypes.util.find_library", is_stub(name)))
    out += [Libcuda(p, "ldconfig -p", is_stub(p)) for p in _ldconfig_paths(ldconfig_text)]
    dirs = [(d, "LD_LIBRARY_PATH") for d in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    dirs += [(str(root / d), "driver folder") for d in DRIVER_DIRS]
    for d, how in dirs:
        out += [Libcuda(str(Path(d) / so), how, is_stub(Path(d) / so)) for so in SONAMES]
    roots = [Path(env[k]) for k in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT") if env.get(k)]
    for r in [*roots, *cuda_roots, root / "usr/local/cuda"]:
        out += [Libcuda(str(r / d / "libcuda.so"), "CUDA toolkit stub", True) for d in STUB_DIRS]
    return out


def find_libcuda(
    env: Mapping[str, str] | None = None,
    ldconfig_text: str | None = None,
    find_library: Callable[[str], str | None] = ctypes.util.find_library,
    root: Path = Path("/"),
    allow_stub: bool = False,
) -> Libcuda:
    """The first existing libcuda in `candidates` order; a stub only when `allow_stub` and no driver exists.

    A soname from find_library counts as found (the dynamic loader resolves it). Raises DriverNotFoundError
    naming what was searched, and saying so when only a stub exists (a stub is not a driver).
    """
    env = os.environ if env is None else env
    text = _ldconfig() if ldconfig_text is None else ldconfig_text
    stubs: list[Libcuda] = []
    for c in candidates(env, text, find_library, root):
        if "/" in c.path and not Path(c.path).is_file():
            continue
        if not c.stub:
            return c
        stubs.append(c)
    if stubs and allow_stub:
        return stubs[0]
    if stubs:
        raise DriverNotFoundError(
            f"only the CUDA toolkit's stub {stubs[0].path} was found: a stub satisfies the linker but is not a "
            "driver; install the NVIDIA driver or add its folder to LD_LIBRARY_PATH"
        )
    raise DriverNotFoundError(
        "no libcuda.so.1 found (searched find_library, ldconfig -p, LD_LIBRARY_PATH, "
        f"{', '.join('/' + d for d in DRIVER_DIRS)}); add the driver's folder to LD_LIBRARY_PATH"
    )


def _ldconfig() -> str:
    for exe in ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"):
        try:
            return subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ""


_LIB: ctypes.CDLL | None = None


def load_libcuda() -> ctypes.CDLL:
    """The driver library, loaded once (DriverNotFoundError when there is none or only a stub)."""
    global _LIB
    if _LIB is None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError:
            lib = ctypes.CDLL(find_libcuda().path)
        _LIB = lib
    return _LIB


def check(status: int, call: str) -> None:
    """Raise RuntimeError naming the driver call and its CUresult when `status` is not CUDA_SUCCESS."""
    if status != 0:
        raise RuntimeError(f"{call} failed with CUresult {status}")


def current_context() -> int:
    """The driver's current context on this thread (cuCtxGetCurrent) as int, 0 when none."""
    ctx = ctypes.c_void_p()
    shared_driver().call("cuCtxGetCurrent", ctypes.byref(ctx))
    return int(ctx.value or 0)


def pop_context() -> int:
    """Pop the driver's current context off this thread's stack (cuCtxPopCurrent); returns it."""
    ctx = ctypes.c_void_p()
    shared_driver().call("cuCtxPopCurrent_v2", ctypes.byref(ctx))
    return int(ctx.value or 0)


def release_primary(device: int) -> None:
    """Drop one retain of `device`'s primary context (cuDevicePrimaryCtxRelease)."""
    shared_driver().call("cuDevicePrimaryCtxRelease_v2", int(device))


# --- driver calls through prototypes of their own (no declarations on the shared library handle) ---------
CU_MEMORYTYPE_HOST, CU_MEMORYTYPE_DEVICE = 1, 2
CU_EVENT_DISABLE_TIMING = 0x2
CU_STREAM_NON_BLOCKING = 0x1


@dataclass(frozen=True)
class Rows:
    """Where a source's rows are: `ptr` (device), `pitch` (bytes from one row to the next; 0: contiguous).

    A frame embedding is one row of E floats; a snippet's region features are R2 rows of E floats, contiguous
    in an encoder's `region_emb` [n, R2, E], or one per view at a pitch of n*E floats in a view-major batch
    whose region windows are views (`Encoder._view_features`).
    """

    ptr: int
    pitch: int = 0


class _Memcpy2D(ctypes.Structure):
    """CUDA_MEMCPY2D (cuda.h), field for field."""

    _fields_ = [
        ("srcXInBytes", ctypes.c_size_t), ("srcY", ctypes.c_size_t), ("srcMemoryType", ctypes.c_int),
        ("srcHost", ctypes.c_void_p), ("srcDevice", ctypes.c_uint64), ("srcArray", ctypes.c_void_p),
        ("srcPitch", ctypes.c_size_t),
        ("dstXInBytes", ctypes.c_size_t), ("dstY", ctypes.c_size_t), ("dstMemoryType", ctypes.c_int),
        ("dstHost", ctypes.c_void_p), ("dstDevice", ctypes.c_uint64), ("dstArray", ctypes.c_void_p),
        ("dstPitch", ctypes.c_size_t),
        ("WidthInBytes", ctypes.c_size_t), ("Height", ctypes.c_size_t),
    ]


_P, _U64, _SZ, _UI, _I = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int
_SIGNATURES: dict[str, tuple[Any, ...]] = {
    "cuInit": (_UI,),
    "cuDeviceGetCount": (ctypes.POINTER(_I),),
    "cuCtxGetCurrent": (ctypes.POINTER(_P),),
    "cuDeviceGet": (ctypes.POINTER(_I), _I),
    "cuDevicePrimaryCtxRetain": (ctypes.POINTER(_P), _I),
    "cuDevicePrimaryCtxRelease_v2": (_I,),
    "cuCtxPushCurrent_v2": (_P,),
    "cuCtxPopCurrent_v2": (ctypes.POINTER(_P),),
    "cuMemAlloc_v2": (ctypes.POINTER(_U64), _SZ),
    "cuMemFree_v2": (_U64,),
    "cuMemAllocHost_v2": (ctypes.POINTER(_P), _SZ),
    "cuMemFreeHost": (_P,),
    "cuMemsetD32Async": (_U64, _UI, _SZ, _P),
    "cuMemcpyDtoDAsync_v2": (_U64, _U64, _SZ, _P),
    "cuMemcpyDtoHAsync_v2": (_P, _U64, _SZ, _P),
    "cuMemcpy2DAsync_v2": (ctypes.POINTER(_Memcpy2D), _P),
    "cuStreamCreate": (ctypes.POINTER(_P), _UI),
    "cuStreamDestroy_v2": (_P,),
    "cuEventCreate": (ctypes.POINTER(_P), _UI),
    "cuEventRecord": (_P, _P),
    "cuEventSynchronize": (_P,),
    "cuStreamWaitEvent": (_P, _P, _UI),
    "cuEventDestroy_v2": (_P,),
    "cuStreamSynchronize": (_P,),
    "cuMemHostGetDevicePointer_v2": (ctypes.POINTER(_U64), _P, _UI),
    # CUDA graphs (stp_edge.cuda.graphs)
    "cuStreamBeginCapture_v2": (_P, _I),
    "cuStreamEndCapture": (_P, ctypes.POINTER(_P)),
    "cuGraphInstantiateWithFlags": (ctypes.POINTER(_P), _P, ctypes.c_ulonglong),
    "cuGraphLaunch": (_P, _P),
    "cuGraphExecDestroy": (_P,),
    "cuGraphDestroy": (_P,),
}


class Driver:
    """The libcuda calls the runtime makes beside its binding, each through its own ctypes prototype.

    The one ctypes path to the driver: nothing is declared on the shared library handle (another library's
    declarations there would change ours), and every prototype in `_SIGNATURES` is checked against cuda.h.
    """

    def __init__(self) -> None:
        self._lib = load_libcuda()

    def __getattr__(self, name: str) -> Any:
        """The prototype of `name`, made on first use (a driver without a symbol fails only where it is called)."""
        if name not in _SIGNATURES:
            raise AttributeError(f"{name} is not a driver call of stp_edge.cuda.driver._SIGNATURES")
        fn = ctypes.CFUNCTYPE(ctypes.c_int, *_SIGNATURES[name])((name, self._lib))
        setattr(self, name, fn)
        return fn

    def call(self, name: str, *args: Any) -> None:
        """Call `name` and raise RuntimeError naming it when the CUresult is not CUDA_SUCCESS."""
        check(getattr(self, name)(*args), name)

    def copy_rows(self, dst: int, src: Rows, width: int, height: int, stream: int, *, to_host: bool = False) -> None:
        """Queue a copy of `height` rows of `width` bytes from `src` to the dense rows at `dst` on `stream`."""
        pitch = src.pitch or width
        if pitch == width and not to_host:
            self.call("cuMemcpyDtoDAsync_v2", dst, src.ptr, width * height, stream)
        elif pitch == width:
            self.call("cuMemcpyDtoHAsync_v2", dst, src.ptr, width * height, stream)
        else:
            if pitch < width:
                raise UsageError(f"a source pitch of {pitch} bytes is below its row of {width} bytes")
            p = _Memcpy2D(srcMemoryType=CU_MEMORYTYPE_DEVICE, srcDevice=src.ptr, srcPitch=pitch,
                          dstMemoryType=CU_MEMORYTYPE_HOST if to_host else CU_MEMORYTYPE_DEVICE,
                          dstPitch=width, WidthInBytes=width, Height=height)
            if to_host:
                p.dstHost = dst
                self.call("cuMemcpy2DAsync_v2", ctypes.byref(p), stream)
                return
            p.dstDevice = dst
            # cuda.h: a device-to-device cuMemcpy2DAsync "may fail for pitches not computed by cuMemAllocPitch"
            # (there is no asynchronous cuMemcpy2DUnaligned): then one contiguous copy per row.
            if self.cuMemcpy2DAsync_v2(ctypes.byref(p), stream) != 0:
                for h in range(height):
                    self.call("cuMemcpyDtoDAsync_v2", dst + h * width, src.ptr + h * pitch, width, stream)

    def new_event(self) -> int:
        ev = _P()
        self.call("cuEventCreate", ctypes.byref(ev), CU_EVENT_DISABLE_TIMING)
        return int(ev.value)

    def wait(self, consumer: int, producer: int, event: int) -> None:
        """Queue on `consumer` a wait for what is queued on `producer` so far (an event, no host sync)."""
        self.call("cuEventRecord", event, producer)
        self.call("cuStreamWaitEvent", consumer, event, 0)


_SHARED: Driver | None = None


def shared_driver() -> Driver:
    """One `Driver` for the module-level calls (made on first use; its prototypes are stateless)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Driver()
    return _SHARED


def link_dir(directory: Path, found: Libcuda) -> Path:
    """Make `directory/libcuda.so` a link to `found` (for `-L directory -lcuda`); returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "libcuda.so"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(found.path)
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print where libcuda is; with --link-dir, make a folder to link pycuda against it."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--link-dir", type=Path, help="make LINK_DIR/libcuda.so point to the driver, print LINK_DIR")
    ap.add_argument("--dir", action="store_true", help="print the driver's folder (for LD_LIBRARY_PATH)")
    ap.add_argument("--allow-stub", action="store_true", help="accept a toolkit stub (linking only)")
    args = ap.parse_args(argv)
    try:
        found = find_libcuda(allow_stub=args.allow_stub)
    except DriverNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if "/" not in found.path and (args.link_dir is not None or args.dir):
        found = Libcuda(_resolved(found.path), found.how, found.stub)
    if args.dir:
        print(Path(found.path).parent)
    elif args.link_dir is not None:
        print(link_dir(args.link_dir, found))
    else:
        print(f"{found.path} ({found.how}{', stub: link only' if found.stub else ''})")
    return 0


def _resolved(soname: str) -> str:
    """The file a soname resolves to in the ldconfig cache (find_library gives names, the linker needs paths)."""
    for p in _ldconfig_paths(_ldconfig()):
        if Path(p).name == soname:
            return p
    return find_libcuda(ldconfig_text=_ldconfig(), find_library=lambda _: None).path


if __name__ == "__main__":
    raise SystemExit(main())
