"""Stage 2, encode: preprocessing choice, the encoder graph, region features, averaging over sampled frames.

In: completed `Snippet`s (of one or several streams). Out: one `EncodedBatch`, frame_emb [B, E] and
region_emb [B, R2, E] per snippet, which is exactly what the temporal and spatial stages consume.

Region features (docs/architecture.md, "Regions") come out of the encoder graph itself (`region_emb`) in bundles
with manifest `region_features: "encoder"`. For bundles in the deprecated "host" layout, whose encoder returns
`patch_emb`, they are computed here on the host:
- tokens mode: `pool_regions` averages (grid/R)^2 blocks of patch tokens, regions in row-major order;
- crops mode: `make_crops` cuts the R*R windows of `stp_edge.geometry.crop_windows` from each preprocessed
  image and resizes each back to SxS as M @ crop @ M.T (one bilinear matrix per axis); the crops' frame
  embeddings are the region features. The torch twin (`stp_edge/model/regions.py`) computes the same numbers,
  and is what the exported encoder graphs run.
Region extent "frame" (manifest `preprocess.region_grid` R > 0, a "host" bundle): the preprocessor itself cuts the
R*R windows tiling the whole frame (`stp_edge.geometry.frame_windows`), each resized to SxS with the golden
resize, as views after the frame views; the encoder encodes them in the same call, and their frame embeddings are
the region features (no second call, nothing cut from the centre image).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stp_edge.backends.base import Runner, is_device_array
from stp_edge.bundle.contract import expected_io
from stp_edge.bundle.preprocessing import PreprocessSpec, view_roles
from stp_edge.config import STPromptConfig
from stp_edge.errors import UsageError
from stp_edge.frames import DeviceNV12Frame
from stp_edge.geometry import bilinear_matrix, crop_windows
from stp_edge.pipeline.calls import Item, OnError, run_graph
from stp_edge.pipeline.snippets import Snippet

Preprocess = Callable[[Sequence[np.ndarray]], Any]


def pool_regions(patch_emb: np.ndarray, grid: int, R: int) -> np.ndarray:
    """Pool patch tokens [B, N, E] (N = grid*grid, row-major) into [B, R*R, E] region features.

    Raises:
        ValueError: N != grid*grid or R does not divide grid.
    """
    if patch_emb.ndim != 3:
        raise UsageError(f"pool_regions: patch_emb must be [B, N, E], got shape {patch_emb.shape}")
    B, N, E = patch_emb.shape
    if N != grid * grid:
        raise UsageError(f"pool_regions: patch_emb has N={N} tokens, expected grid*grid={grid * grid}")
    if R < 1 or grid % R:
        raise UsageError(f"pool_regions: region grid R={R} must divide the patch grid {grid}")
    k = grid // R
    x = patch_emb.reshape(B, R, k, R, k, E)
    return x.mean(axis=(2, 4)).reshape(B, R * R, E)


def make_crops(images: np.ndarray, R: int) -> np.ndarray:
    """Cut R*R windows from each preprocessed image [B, 3, S, S] and resize each back to SxS.

    Returns:
        [B*R*R, 3, S, S] in the dtype of `images`; crops of image b occupy rows b*R*R ... (b+1)*R*R - 1 in
        row-major window order.
    """
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise UsageError(f"make_crops: images must be [B, C, S, S], got shape {images.shape}")
    B, C, S, _ = images.shape
    windows = crop_windows(S, R)
    side = windows[0][2]
    m = bilinear_matrix(side, S).astype(images.dtype)
    out = np.empty((B, len(windows), C, S, S), dtype=images.dtype)
    for r, (y0, x0, s) in enumerate(windows):
        crop = images[:, :, y0:y0 + s, x0:x0 + s]
        out[:, r] = m @ crop @ m.T
    return out.reshape(B * len(windows), C, S, S)


def make_preprocess(kind: str | Preprocess, image_size: int, *, backend: str, host_crops: bool = False,
                    device: int = 0, max_batch: int = 16, spec: PreprocessSpec | None = None) -> Preprocess:
    """The preprocessing callable: "cpu", "cuda", "auto" (CUDA with TensorRT unless crops are cut on the host).

    `host_crops`: the bundle is in crops mode and its encoder graph does not cut the crops itself (the deprecated
    "host" region layout), so the preprocessed images must be on the host.

    "cuda" runs on CUDA device `device` (the runners' device), from whichever thread calls it, and holds device
    buffers for `max_batch` frames (the encoder's largest batch: `Runner.max_batch()`, 16 when unlimited).

    A callable is returned as is (frames -> [B, 3, S, S], NumPy or a device array the encoder runner accepts).
    `spec`: the bundle's preprocessing (`Bundle.preprocess_spec`, its mean and std; None: CLIP's); a preprocessor
    passed in that declares another `spec` is refused.
    """
    if callable(kind):
        declared = getattr(kind, "spec", None)
        if spec is not None and isinstance(declared, PreprocessSpec) and declared != spec:
            raise UsageError(f"the preprocessor given runs {declared}, the bundle expects {spec}; make it with "
                             f"spec=bundle.preprocess_spec")
        if spec is not None and spec.region_grid and not isinstance(declared, PreprocessSpec):
            raise UsageError(f"this bundle's regions are {spec.region_grid}x{spec.region_grid} crops of the whole "
                             "frame, which its preprocessing cuts as views ([V*B, 3, S, S], `PreprocessSpec.views`); "
                             "the callable given declares no `spec`: use preprocess='cpu' or 'cuda', or a callable "
                             "whose `spec` is bundle.preprocess_spec")
        return kind
    if kind == "auto":
        kind = "cpu"
        # The CUDA kernel feeds TensorRT on the device; host crops need the preprocessed images on the host.
        if backend == "trt" and not host_crops:
            from stp_edge.cuda.binding import available_bindings

            kind = "cuda" if available_bindings() else "cpu"
    if kind == "cpu":
        from stp_edge.preprocess import CpuPreprocessor

        return CpuPreprocessor(image_size, spec=spec)
    if kind == "cuda":
        from stp_edge.cuda import CudaPreprocessor

        # Its output buffer is overwritten by its next call, so `Encoder` runs the encoder on each chunk of at
        # most `max_batch` frames before preprocessing the next.
        return CudaPreprocessor(image_size, max_batch=max_batch, device=device, spec=spec)
    raise UsageError(f"preprocess must be 'auto', 'cpu', 'cuda' or a callable, got {kind!r}")


def preprocess_name(preprocess: Preprocess) -> str:
    """A short name of the preprocessing in use, for reports ("cpu", "cuda" or the callable's type)."""
    kind = type(preprocess).__name__
    return {"CpuPreprocessor": "cpu", "CudaPreprocessor": "cuda"}.get(kind, kind)


def snippet_label(snippet: Snippet) -> str:
    """How messages name a snippet: "stream 0 snippet 12"."""
    return f"stream {snippet.stream} snippet {snippet.index}"


@dataclass(frozen=True)
class EncodedBatch:
    """Features of a batch of snippets, in the order given.

    Attributes:
        snippets: The snippets encoded.
        frame_emb: [B, E] frame embeddings (mean over each snippet's sampled frames).
        region_emb: [B, R2, E] region features (mean over the sampled frames).
        timings: "preprocess" and "encoder" milliseconds of the whole batch.
        invalid: Per snippet, why its features cannot be used (the encoder call failed, or returned values its
            contract forbids), or None; their rows hold no meaningful numbers. Empty: every snippet is fine.
    """

    snippets: tuple[Snippet, ...]
    frame_emb: np.ndarray
    region_emb: np.ndarray
    timings: Mapping[str, float]
    invalid: tuple[str | None, ...] = ()

    def problem(self, i: int) -> str | None:
        """Why snippet i's features cannot be used, or None."""
        return self.invalid[i] if self.invalid else None


Features = tuple[np.ndarray, np.ndarray, list[str | None]]  # frame_emb [n,E], region_emb [n,R2,E], problem per row


class Encoder:
    """Preprocess the sampled frames of snippets, run the encoder graph, average its features per snippet.

    The encoder graph returns `frame_emb` and `region_emb`; a graph that returns `patch_emb` instead (the
    deprecated "host" region layout) gets its regions computed here (`host_regions`).

    All sampled frames of a batch go through the encoder in one call, or in chunks of the smaller of the
    preprocessor's `max_batch` (the CUDA preprocessor overwrites its output buffer on every call) and the
    runner's `max_batch()` (a TensorRT plan's profile); crops mode chunks its R2 crops per image the same way.
    Every call goes through `stp_edge.pipeline.calls.run_graph`: retried once, outputs checked against the
    contract. Without `on_error` a failure raises; with it, the snippets concerned come back marked `invalid`.
    """

    def __init__(self, runner: Runner, preprocess: Preprocess, config: STPromptConfig) -> None:
        self.runner = runner
        self.preprocess = preprocess
        self.config = config
        self._layout: str | None = None  # "encoder" (region_emb out) or "host" (patch_emb out), read once

    def __call__(self, snippets: Sequence[Snippet], *, on_error: OnError | None = None) -> EncodedBatch:
        """Encode `snippets` (at least one).

        Raises:
            BackendCallError, GraphOutputError: Without `on_error`, when the encoder fails or breaks its contract.
        """
        cfg = self.config
        k = cfg.frames_per_snippet
        frames = [f for s in snippets for f in s.frames]
        labels = [snippet_label(s) for s in snippets for _ in s.frames]
        views = self.views
        runner_max = self.runner.max_batch()
        limits = [getattr(self.preprocess, "max_batch", None), runner_max and max(1, runner_max // views)]
        chunk = min([int(n) for n in limits if n] or [len(frames)])
        frame_parts, region_parts, problems = [], [], []
        timings = {"preprocess": 0.0, "encoder": 0.0}
        for i in range(0, len(frames), chunk):
            t0 = time.perf_counter()
            images = self.preprocess_frames(frames[i:i + chunk])
            t1 = time.perf_counter()
            fe, re, bad = self._view_features(images, labels[i:i + chunk], on_error)
            timings["preprocess"] += (t1 - t0) * 1e3
            timings["encoder"] += (time.perf_counter() - t1) * 1e3
            frame_parts.append(fe)
            region_parts.append(re)
            problems += bad
        b = len(snippets)
        frame_emb = np.concatenate(frame_parts).reshape(b, k, -1).mean(axis=1, dtype=np.float32)
        region_emb = np.concatenate(region_parts).reshape(b, k, cfg.num_regions, -1).mean(axis=1, dtype=np.float32)
        invalid = tuple(next((p for p in problems[j * k:(j + 1) * k] if p), None) for j in range(b))
        return EncodedBatch(tuple(snippets), frame_emb, region_emb, timings, invalid if any(invalid) else ())

    @property
    def views(self) -> int:
        """Images the preprocessor makes of each frame (the frame policy's views; 1 for a custom callable)."""
        spec = getattr(self.preprocess, "spec", None)
        return spec.views if isinstance(spec, PreprocessSpec) else 1

    def _view_features(self, images: Any, labels: Sequence[str], on_error: OnError | None) -> Features:
        """Features of n frames from their V*n view-major images (V: the frame policy's views).

        frame_emb: the mean over the policy's frame views (`stp_edge.bundle.preprocessing.view_roles`); region_emb:
        its region view's (the centre crop), or, with region windows (region extent "frame"), the frame embeddings
        of the R*R windows of the whole frame that follow the frame views (window r of frame j: image (V+r)*n + j).
        """
        n, views = len(labels), self.views
        if views == 1:
            return self._features(images, labels, on_error)
        spec = self.preprocess.spec
        windows = spec.region_grid ** 2
        names = [f"{label} view {v}" if v < views - windows else f"{label} region crop {v - views + windows}"
                 for v in range(views) for label in labels]
        fe, re, bad = self._features(images, names, on_error, regions=not windows)
        frame_views, region_view = view_roles(spec)
        fe = np.asarray(fe, np.float32).reshape(views, n, -1)
        problems = [next((bad[v * n + j] for v in range(views) if bad[v * n + j]), None) for j in range(n)]
        if windows:
            region = np.ascontiguousarray(fe[views - windows:].transpose(1, 0, 2))  # [n, R2, E]
            return fe[list(frame_views)].mean(axis=0), region, problems
        re = np.asarray(re, np.float32).reshape(views, n, *np.shape(re)[1:])
        return fe[list(frame_views)].mean(axis=0), re[region_view], problems

    def preprocess_frames(self, frames: Sequence[Any]) -> Any:
        """Preprocess one chunk; a CUDA preprocessor hands over by stream when the runner waits on streams.

        With a runner that honours the `stream` of `__cuda_array_interface__` (TensorRT), the CUDA preprocessor
        returns without a host sync and the runner's stream waits on an event instead; "preprocess" then times
        the enqueue only, the kernels' time lands in "encoder".

        The frames were checked where they entered (`Detector.push`, or the video source `run_video` reads), so
        the CPU and CUDA preprocessors run through their `_from_valid`, which does not check them again; a custom
        callable gets them as they are.
        """
        run = getattr(self.preprocess, "_from_valid", self.preprocess)
        device = [isinstance(f, DeviceNV12Frame) for f in frames]
        if any(device):  # NVDEC's frames, on the GPU: gathered there and preprocessed by the CUDA kernel
            run = getattr(self.preprocess, "from_device_nv12", None)
            if run is None or not all(device):
                raise UsageError(
                    "frames decoded on the GPU (NVDEC, device NV12) reach the encoder, but "
                    + (f"the preprocessing is {preprocess_name(self.preprocess)}: use preprocess='cuda'" if run is None
                       else "in a batch with host frames: decode every source of a detector the same way"))
        if getattr(self.runner, "waits_on_feed_streams", False) and hasattr(self.preprocess, "stream_handle"):
            return run(frames, sync=False)
        return run(frames)

    def encode_images(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Encoder and region features of preprocessed images: frame_emb [n, E], region_emb [n, R2, E].

        Raises:
            BackendCallError, GraphOutputError: The encoder failed or broke its contract.
        """
        fe, re, _ = self._features(images, [f"image {j}" for j in range(len(images))], None)
        return fe, re

    def layout(self) -> str:
        """"encoder" when the graph returns region_emb, "host" (deprecated) when it returns patch_emb."""
        if self._layout is None:
            self._layout = "host" if "patch_emb" in self.runner.output_names() else "encoder"
        return self._layout

    def _call(self, images: Any, labels: Sequence[str], on_error: OnError | None
              ) -> tuple[dict[str, np.ndarray] | None, list[str | None]]:
        """One checked encoder call; one problem per image (None: fine)."""
        expected = expected_io(self.config, self.layout())["encoder"]["outputs"]
        items = [Item(label, (j,)) for j, label in enumerate(labels)]
        return run_graph(self.runner, "encoder", {"images": images}, expected=expected,
                         dims={"B": len(labels)}, items=items, on_error=on_error)

    def _features(self, images: Any, labels: Sequence[str], on_error: OnError | None, regions: bool = True
                  ) -> Features:
        """frame_emb, region_emb and a problem per image; rows of problem images are NaN or meaningless.

        `regions` False: the images' regions are not wanted (they are region windows themselves); region_emb is None.
        """
        enc, problems = self._call(images, labels, on_error)
        if not regions:
            frame = enc["frame_emb"] if enc is not None and not any(problems) else self._usable(enc, len(labels))[0]
            return frame, None, problems
        if enc is not None and self.layout() == "host" and not any(problems):
            region_emb, problems = self.host_regions(images, enc, labels, on_error)
            enc = {"frame_emb": enc["frame_emb"], "region_emb": region_emb}
        if enc is None or any(problems):
            return (*self._usable(enc, len(labels)), problems)
        return enc["frame_emb"], enc["region_emb"], problems

    def _usable(self, enc: Mapping[str, np.ndarray] | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The features of a call with problems, as arrays of the contract's shape (NaN where they do not fit)."""
        v = self.config.vision
        frame = np.full((n, v.embed_dim), np.nan, np.float32)
        region = np.full((n, self.config.num_regions, v.embed_dim), np.nan, np.float32)
        if enc is not None and np.shape(enc.get("frame_emb")) == frame.shape:
            frame = np.asarray(enc["frame_emb"], np.float32)
        if enc is not None and np.shape(enc.get("region_emb")) == region.shape:
            region = np.asarray(enc["region_emb"], np.float32)
        return frame, region

    def host_regions(self, images: Any, enc: Mapping[str, np.ndarray], labels: Sequence[str] | None = None,
                     on_error: OnError | None = None) -> tuple[np.ndarray, list[str | None]]:
        """region_emb [n, R2, E] of an encoder that returns patch_emb (pooled tokens, or crops run through it).

        Returns the regions and a problem per image (the crops' encoder call can fail or break the contract).
        """
        cfg = self.config
        labels = list(labels) if labels is not None else [f"image {j}" for j in range(len(images))]
        if "patch_emb" not in enc:
            raise UsageError(f"the encoder returned {sorted(enc)}: neither region_emb nor patch_emb")
        if cfg.region_mode == "tokens":
            return pool_regions(enc["patch_emb"], cfg.vision.grid, cfg.region_grid), [None] * len(labels)
        if is_device_array(images):
            raise UsageError("this bundle cuts crops on the host (exported before crops moved into the encoder "
                             "graph); use preprocess='cpu', or re-export it with `stp-edge export`")
        crops = make_crops(np.asarray(images), cfg.region_grid)
        r2 = cfg.num_regions
        out, crop_problems = self._call(crops, [f"{label} crop {r}" for label in labels for r in range(r2)],
                                        on_error)
        problems = [next((p for p in crop_problems[j * r2:(j + 1) * r2] if p), None) for j in range(len(labels))]
        if out is None or any(problems):
            return self._usable(None, len(labels))[1], problems
        return out["frame_emb"].reshape(len(images), r2, -1), problems
