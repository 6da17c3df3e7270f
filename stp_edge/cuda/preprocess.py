"""CudaPreprocessor: CLIP preprocessing of a batch of frames in two kernel launches, output left on the GPU.

Frames go host -> pinned staging buffer -> device (async, on the preprocessor's stream), then the
horizontal pass (decode BGR8/NV12 + PIL antialiased bicubic along x, uint8 intermediate) and the vertical
pass (bicubic along y, /255, mean/std, CHW, float32/float16). The result stays on the device as a
`DeviceArray` (a raw pointer + shape + dtype) that a TensorRT engine binds directly; no host round trip.
`run_device` takes frames that already live on the GPU (e.g. pitched NV12 surfaces of a hardware decoder).

Contexts are explicit: the preprocessor retains the primary context of the device it is given and pushes it
around every call, so it works from any thread and on any device; `close()` frees its memory and releases the
context, leaving the calling thread's context stack as it was.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from stp_edge.cuda.context import PrimaryContext
from stp_edge.cuda.driver import Driver
from stp_edge.cuda.kernels import BLOCK, grid_h, grid_v, load_kernels
from stp_edge.cuda.memory import DeviceArray
from stp_edge.cuda.staging import DeviceStaging, UploadStaging
from stp_edge.cuda.streams import new_stream
from stp_edge.errors import UsageError
from stp_edge.frames import validate_frame
from stp_edge.preprocess import (
    CropResizePlan,
    PreprocessSpec,
    SizeCache,
    normalisation,
    preprocess_spec,
    split_nv12,
    yuv_coefficients,
)

_FORMATS = ("bgr8", "nv12")
_F = TypeVar("_F", bound=Callable[..., Any])


def upload_window(height: int, width: int, spec: PreprocessSpec) -> tuple[int, int, int, int]:
    """Rows [r0, r1) and columns [c0, c1) of a frame that the resize and crop of every view read.

    Antialiased bicubic taps reach only a little past the crop, so a centre crop of a 16:9 frame reads about
    57% of it (1080p -> 224: all 1080 rows, columns 412..1508 of 1920): uploading only this window
    saves that much of the host copy and the PCIe transfer.
    """
    plans = CropResizePlan.views(int(height), int(width), spec)
    return (min(p.rows.first for p in plans), max(p.rows.last for p in plans),
            min(p.cols.first for p in plans), max(p.cols.last for p in plans))


def staging_frames(batch: int, max_batch: int) -> int:
    """Frames the staging buffers of one input size are allocated for: the batch used, rounded up to a power of 2.

    Never `max_batch` up front (16 frames of 1080p would pin 100 MB of host and take 100 MB of device memory
    for a single camera); a batch that grows gets a larger buffer, at most log2(max_batch) sizes in all.
    """
    if not 0 < batch <= max_batch:
        raise UsageError(f"batch must be 1..max_batch={max_batch}, got {batch}")
    return min(max_batch, 1 << (int(batch) - 1).bit_length())


def _in_context(method: _F) -> _F:
    """Run a CudaPreprocessor method with its device's context current (pushed and popped around the call)."""

    @functools.wraps(method)
    def wrapper(self: CudaPreprocessor, *args: Any, **kwargs: Any) -> Any:
        with self.current():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _DevicePlan:
    """A CropResizePlan's taps uploaded to the device (once per input size)."""

    def __init__(self, plan: CropResizePlan, cuda: Any):
        self.plan = plan
        self._keep = []  # device allocations, freed with the plan
        self.col_start = self._upload(cuda, plan.cols.start)
        self.col_coef = self._upload(cuda, plan.cols.coeffs.T)  # k-major for coalesced reads
        self.row_start = self._upload(cuda, plan.rows.start - plan.rows.first)  # rows of the intermediate
        self.row_coef = self._upload(cuda, plan.rows.coeffs)

    def _upload(self, cuda: Any, a: np.ndarray) -> int:
        a = np.ascontiguousarray(a, dtype=np.int32)
        buf = cuda.to_device(a)
        self._keep.append(buf)
        return int(buf)

    def free(self) -> None:
        """Free the taps (with the owning context current)."""
        for buf in self._keep:
            buf.free()
        self._keep.clear()


class CudaPreprocessor:
    """The fused CUDA twin of `stp_edge.preprocess.CpuPreprocessor`; frames of one size per call.

    Example:
        >>> pre = CudaPreprocessor(224, max_batch=16)
        >>> images = pre(frames)                       # DeviceArray [B, 3, 224, 224] float32
        >>> context.set_tensor_address("images", images.ptr)

    Buffers (pinned staging, device input, intermediate, output) are allocated on first use of a size and
    reused; the returned tensor is valid until the next call.
    """

    def __init__(
        self,
        image_size: int = 224,
        dtype: Any = np.float32,
        max_batch: int = 16,
        stream: Any = None,
        fatbin: str | None = None,
        device: int = 0,
        *,
        spec: PreprocessSpec | None = None,
        binding: str | None = None,
    ):
        """Retain the device's primary context, load the kernels and create the stream.

        Args:
            image_size: crop side S.
            dtype: np.float32 or np.float16 output.
            max_batch: most frames per call (sizes the buffers).
            stream: a pycuda Stream to work on, created in `device`'s primary context (default: a new one).
            fatbin: prebuilt kernels (see stp_edge.cuda.kernels.load_kernels).
            device: CUDA device ordinal.
            spec: the bundle's preprocessing (`Bundle.preprocess_spec`: its mean and std, which the kernel takes
                as per-channel scale and bias); None: CLIP's.
            binding: "pycuda", "cuda-python" or None ($STP_EDGE_CUDA_BINDING, else auto; stp_edge.cuda.binding).
        """
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float16):
            raise UsageError(f"dtype must be float32 or float16, got {self.dtype}")
        if image_size <= 0 or max_batch <= 0:
            raise UsageError(f"image_size and max_batch must be positive, got {image_size}, {max_batch}")
        self.image_size = int(image_size)
        self.max_batch = int(max_batch)
        self.spec = preprocess_spec(self.image_size, spec)
        self._context = PrimaryContext(device, binding=binding)
        self.device = self._context.device
        self._cuda = cuda = self._context.driver
        # The 16 input sizes used last keep their filter taps and pinned staging buffers (LRU, as the CPU twin).
        self._plans = SizeCache(16, on_evict=self._free_plan)
        self._staging = SizeCache(16, on_evict=self._free_staging)
        self._mid, self._mid_bytes = None, 0
        scale, bias = normalisation(self.spec)
        self._norm = [np.float32(v) for v in (*scale, *bias)]
        try:
            with self.current():
                self.kernels = load_kernels(fatbin, binding=self._context.binding)
                self.stream = stream if stream is not None else new_stream(cuda)
                self._copy_stream = new_stream(cuda)  # uploads overlap the previous call's kernels
                # Jetson's GPU shares the CPU's memory: staging is mapped pinned memory, read in place.
                self.integrated = bool(cuda.Device(self.device).get_attribute(cuda.device_attribute.INTEGRATED))
                self._drv = Driver()
                self._out = cuda.mem_alloc(self.views * self.max_batch * 3 * self.image_size**2 * self.dtype.itemsize)
        except BaseException:
            self._context.release()
            raise

    @property
    def views(self) -> int:
        """Images per frame (`PreprocessSpec.views`); the output holds them view-major: image v * B + b."""
        return self.spec.views

    def current(self) -> Any:
        """Context manager: this preprocessor's device context, current for the duration.

        For pycuda calls of the caller's own on the preprocessor's buffers: `with pre.current(): ...`.
        """
        return self._context.current()

    def staging_nbytes(self) -> tuple[int, int]:
        """(pinned host bytes, device bytes) held now by the staging of the input sizes in use.

        Each is sized to the batches used, two slots (`stp_edge.cuda.staging.staging_bytes`).
        """
        sizes = [item.nbytes for item in self._staging.values()]
        return sum(h for h, _ in sizes), sum(d for _, d in sizes)

    def close(self) -> None:
        """Free every buffer and release the device's context (idempotent); the preprocessor cannot run after."""
        if getattr(self, "_out", None) is None:
            return
        with self.current():
            self.stream.synchronize()
            for plans in self._plans.values():
                for plan in plans:
                    plan.free()
            self._copy_stream.synchronize()
            for item in self._staging.values():
                item.free()
            for buf in (self._mid, self._out):
                if buf is not None:
                    buf.free()
            self._plans.clear()
            self._staging.clear()
            self._mid, self._out, self.stream, self._copy_stream, self.kernels = None, None, None, None, None
        self._context.release()

    def __enter__(self) -> CudaPreprocessor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def stream_handle(self) -> int:
        """The CUstream as int (TensorRT's `execute_async_v3(stream_handle)`)."""
        return int(self.stream.handle)

    @_in_context
    def synchronize(self) -> None:
        """Wait until all work queued on the stream is done."""
        self.stream.synchronize()

    @_in_context
    def __call__(self, frames: Sequence[np.ndarray] | np.ndarray, sync: bool = True) -> DeviceArray:
        """Preprocess HxWx3 uint8 BGR host frames (all of one size) -> DeviceArray [V*B, 3, S, S] (V = `views`).

        Each frame is checked first (`stp_edge.frames.validate_frame`: gray and BGRA are converted, anything else
        is a `FrameError`).
        """
        frames = self._as_list(frames, 3)
        return self._from_valid([validate_frame(f, i) for i, f in enumerate(frames)], sync=sync)

    @_in_context
    def _from_valid(self, frames: Sequence[np.ndarray], sync: bool = True) -> DeviceArray:
        """`__call__` of frames `validate_frame` returned, not checked again: the entry of the encode stage."""
        h, w = self._common_shape([f.shape for f in frames])[:2]
        r0, r1, c0, c1 = upload_window(h, w, self.spec)
        dev, consumed = self._upload([f[r0:r1, c0:c1] for f in frames])
        pitch = (c1 - c0) * 3
        # The taps address whole-frame rows and columns: hand the kernel the address where the whole frame
        # would start, so row r0, column c0 lands on the window's first byte (only window bytes are read).
        origin = dev - r0 * pitch - c0 * 3
        out = self._run(origin, len(frames), h, w, pitch, (r1 - r0) * pitch, "bgr8", None, "bt601", False, sync)
        consumed.record(self.stream)  # the staging slot is free again once these kernels are done
        return out

    @_in_context
    def from_nv12(
        self,
        frames: Sequence[np.ndarray] | np.ndarray,
        matrix: str = "bt601",
        full_range: bool = False,
        sync: bool = True,
    ) -> DeviceArray:
        """Preprocess NV12 host frames ([h*3/2, w] uint8, all of one size) -> DeviceArray [B, 3, S, S]."""
        frames = self._as_list(frames, 2)
        for i, f in enumerate(frames):
            try:
                split_nv12(f)
            except ValueError as exc:
                raise UsageError(f"frame {i}: {exc}") from None
        rows, w = self._common_shape([f.shape for f in frames])
        h = rows * 2 // 3
        dev, consumed = self._upload(frames)
        out = self.run_device(
            dev, len(frames), h, w, pitch=w, frame_stride=rows * w, fmt="nv12", uv_offset=h * w,
            matrix=matrix, full_range=full_range, sync=sync,
        )  # fmt: skip
        consumed.record(self.stream)
        return out

    @_in_context
    def from_device_nv12(self, frames: Sequence[Any], sync: bool = True) -> DeviceArray:
        """Preprocess NV12 frames already on this device (`DeviceNV12Frame`s, NVDEC's) -> [V*B, 3, S, S].

        The frames (one size, one colour; each in its own allocation, at its own pitch) are gathered into one
        dense staging buffer on the device, two 2-D copies per frame queued on this preprocessor's stream after a
        wait for each producer's stream (`stp_edge.cuda.nv12.gather_nv12`), then go through `run_device(fmt="nv12")`
        with the stream's matrix and range. No host round trip. The staging buffer is sized for the batch used
        (`staging_frames`) and kept with the host frames' staging buffers (freed by `close`).
        """
        from stp_edge.cuda.nv12 import batch_layout, gather_nv12

        frames = list(frames)
        layout = batch_layout(frames)
        if len(frames) > self.max_batch:
            raise UsageError(f"{len(frames)} frames exceed max_batch={self.max_batch}; split the batch")
        if frames[0].device != self.device:
            raise UsageError(f"the frames are on CUDA device {frames[0].device}, this preprocessor runs on device "
                             f"{self.device}: decode on the device that preprocesses")
        for i, f in enumerate(frames):
            f.check(f"device NV12 frame {i}")
        capacity = staging_frames(len(frames), self.max_batch)
        key = (("nv12-device", layout.height, layout.width), capacity)
        size = layout.nbytes(capacity)
        dev = self._staging.get(key, lambda: DeviceStaging(self._cuda.mem_alloc(size), size)).dev
        gather_nv12(self._drv, frames, int(dev), layout, self.stream_handle)
        first = frames[0]
        return self.run_device(int(dev), len(frames), layout.height, layout.width, pitch=layout.pitch,
                               frame_stride=layout.frame_stride, fmt="nv12", uv_offset=layout.uv_offset,
                               matrix=first.matrix, full_range=first.full_range, sync=sync)

    @_in_context
    def run_device(
        self,
        src: Any,
        batch: int,
        height: int,
        width: int,
        pitch: int,
        frame_stride: int,
        fmt: str = "bgr8",
        uv_offset: int | None = None,
        matrix: str = "bt601",
        full_range: bool = False,
        sync: bool = True,
    ) -> DeviceArray:
        """Preprocess `batch` frames already in device memory -> [V*B, 3, S, S], view-major (image v * B + b).

        Each view (`CropResizePlan.views`: the centre crop, a letterbox, the side tiles, and the R*R region crops of
        the whole frame when `spec.region_grid` is R) is the same two launches with that view's taps, writing its own
        slice of the output.

        Args:
            src: device pointer (int or pycuda allocation) of frame 0.
            batch: number of frames, frame b at src + b * frame_stride.
            height: frame height in pixels.
            width: frame width in pixels.
            pitch: bytes between rows (>= 3*width for bgr8, >= width for nv12).
            frame_stride: bytes between frames.
            fmt: "bgr8" or "nv12".
            uv_offset: nv12 only: bytes from a frame's start to its UV plane (default height * pitch).
            matrix: nv12 only: "bt601" or "bt709".
            full_range: nv12 only: full-range YUV.
            sync: wait for the result before returning.
        """
        if fmt not in _FORMATS:
            raise UsageError(f"fmt must be one of {_FORMATS}, got {fmt!r}")
        if not 0 < batch <= self.max_batch:
            raise UsageError(f"batch must be 1..max_batch={self.max_batch}, got {batch}")
        min_pitch = 3 * width if fmt == "bgr8" else width
        if pitch < min_pitch:
            raise UsageError(f"pitch {pitch} is smaller than a {fmt} row of width {width} ({min_pitch} bytes)")
        if fmt == "nv12" and (height % 2 or width % 2):
            raise UsageError(f"NV12 needs even height and width, got {height}x{width}")
        return self._run(src, batch, height, width, pitch, frame_stride, fmt, uv_offset, matrix, full_range, sync)

    def _run(self, src: Any, batch: int, height: int, width: int, pitch: int, frame_stride: int, fmt: str,
             uv_offset: int | None, matrix: str, full_range: bool, sync: bool) -> DeviceArray:
        """`run_device` after its checks; `_from_valid` comes here with an uploaded window (`upload_window`)."""
        plans = self._device_plans(height, width)
        mid = self._mid_buffer(batch * 3 * max(dp.plan.mid_rows for dp in plans) * self.image_size)
        src_ptr = np.uintp(int(src))
        plane = 3 * self.image_size**2 * self.dtype.itemsize
        for v, dp in enumerate(plans):
            out = int(self._out) + v * batch * plane
            self._launch(dp, src_ptr, batch, height, pitch, frame_stride, fmt, uv_offset, matrix, full_range, mid,
                         out)
        if sync:
            self.stream.synchronize()
        size = self.image_size
        return DeviceArray(int(self._out), (len(plans) * batch, 3, size, size), self.dtype,
                           stream=None if sync else self.stream_handle, device=self.device)

    def _launch(self, dp: _DevicePlan, src_ptr: Any, batch: int, height: int, pitch: int, frame_stride: int,
                fmt: str, uv_offset: int | None, matrix: str, full_range: bool, mid: int, out: int) -> None:
        """Queue one view's two launches (horizontal pass into `mid`, vertical pass into `out`)."""
        p = dp.plan
        common = (dp.col_start, dp.col_coef, np.int32(p.cols.ksize), np.int32(p.rows.first),
                  np.int32(p.mid_rows), np.int32(p.size), mid)  # fmt: skip
        gh = grid_h(p.size, p.mid_rows, batch)
        if fmt == "bgr8":
            self.kernels.funcs["stp_resize_h_bgr8"].prepared_async_call(
                gh, BLOCK, self.stream, src_ptr, np.int64(frame_stride), np.int64(pitch), *common
            )
        else:
            c = yuv_coefficients(matrix, full_range)
            yuv = [np.float32(c[k]) for k in ("y_off", "y_scale", "c_scale", "rv", "gu", "gv", "bu")]
            uv = height * pitch if uv_offset is None else uv_offset
            self.kernels.funcs["stp_resize_h_nv12"].prepared_async_call(
                gh, BLOCK, self.stream, src_ptr, np.int64(frame_stride), np.int64(pitch), np.int64(uv),
                np.int32(height), *yuv, *common,
            )  # fmt: skip
        name = "stp_resize_v_f32" if self.dtype == np.float32 else "stp_resize_v_f16"
        self.kernels.funcs[name].prepared_async_call(
            grid_v(p.size, batch), BLOCK, self.stream, mid, np.int32(p.mid_rows), np.int32(p.size),
            dp.row_start, dp.row_coef, np.int32(p.rows.ksize), *self._norm, out,
        )  # fmt: skip

    @_in_context
    def to_host(self, tensor: DeviceArray) -> np.ndarray:
        """Copy a DeviceArray to a new host array (waits for the stream; for checks and debugging)."""
        out = np.empty(tensor.shape, tensor.dtype)
        self.stream.synchronize()
        self._cuda.memcpy_dtoh(out, tensor.ptr)
        return out

    @_in_context
    def plan(self, height: int, width: int) -> CropResizePlan:
        """The resize/crop plan of an input size, its first view (uploading the taps on first use)."""
        return self._device_plans(height, width)[0].plan

    def _device_plans(self, height: int, width: int) -> tuple[_DevicePlan, ...]:
        h, w = int(height), int(width)
        return self._plans.get((h, w), lambda: tuple(_DevicePlan(p, self._cuda)
                                                     for p in CropResizePlan.views(h, w, self.spec)))

    def _free_plan(self, plans: tuple[_DevicePlan, ...]) -> None:
        self.stream.synchronize()  # kernels queued on the stream may still read their taps
        for plan in plans:
            plan.free()

    def _free_staging(self, item: Any) -> None:
        # Kernels queued after the copy read the device staging buffer: wait for both streams, not only the
        # copy's event (cuMemFree's implicit synchronisation is not a documented guarantee to lean on).
        self._copy_stream.synchronize()
        self.stream.synchronize()
        item.free()

    def _mid_buffer(self, nbytes: int) -> int:
        if nbytes > self._mid_bytes:
            self.stream.synchronize()  # kernels queued on the stream may still use the old buffer
            if self._mid is not None:
                self._mid.free()
            self._mid, self._mid_bytes = self._cuda.mem_alloc(nbytes), nbytes
        return int(self._mid)

    def _upload(self, frames: list[np.ndarray]) -> tuple[int, Any]:
        """Stage frames in the next slot of their size (`stp_edge.cuda.staging`): (pointer, `consumed` event).

        The caller records `consumed` on the stream after the kernels that read the pointer.
        """
        shape = frames[0].shape
        capacity = staging_frames(len(frames), self.max_batch)
        staging = self._staging.get((shape, capacity), lambda: UploadStaging(
            self._cuda, self._drv, shape, capacity, mapped=self.integrated))
        return staging.upload(frames, self.stream, self._copy_stream)

    def _as_list(self, frames: Any, ndim: int) -> list[np.ndarray]:
        if isinstance(frames, np.ndarray):
            frames = [frames] if frames.ndim == ndim else list(frames)
        frames = list(frames)
        if not frames:
            raise UsageError("expected at least one frame, got an empty sequence")
        if len(frames) > self.max_batch:
            raise UsageError(f"{len(frames)} frames exceed max_batch={self.max_batch}; split the batch")
        return frames

    @staticmethod
    def _common_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        if any(s != shapes[0] for s in shapes):
            raise UsageError(
                f"CudaPreprocessor batches frames of one size; got shapes {sorted(set(shapes))}. "
                "Call it once per size (or use CpuPreprocessor, which accepts mixed sizes)."
            )
        return shapes[0]
