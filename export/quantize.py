"""INT8 encoder: static post-training quantization to a Q/DQ ONNX graph, calibrated on the user's videos.

One artifact for both runtimes: ONNX Runtime CPU runs the Q/DQ graph directly (its optimiser fuses Q/DQ pairs
into integer kernels, VNNI/AMX on x86), and TensorRT builds it with explicit quantization (the Q/DQ nodes fix
every INT8 scale, no calibration cache). TensorRT accepts only symmetric signed INT8 Q/DQ (zero point 0), so
the default quantizes weights *and* activations to int8 with zero points 0; `activations="uint8"` (asymmetric,
the classic ONNX Runtime x86 choice) is offered for CPU-only bundles and recorded as such.

Quantizer: ONNX Runtime's `quantize_static` (QDQ format, symmetric per-channel weights). NVIDIA ModelOpt's ONNX
PTQ was considered: `nvidia-modelopt[onnx]` 0.47.0 does not change torch, but it pins onnx 1.21 and pulls
onnxruntime-gpu 1.24, which would replace the pinned onnx 1.23.2 and put a second onnxruntime distribution
beside the pinned CPU onnxruntime 1.32 (checked with `pip install --dry-run`), so it is not used.

What is quantized: only the ops in `QUANTIZED_OPS` (the weight matmuls of attention and MLP, and the patch
stem; not the crops-mode resize of the input images, `crop_matmuls`); LayerNorm, Softmax, GELU and the residual
Adds stay float, as does the attention's activation x activation product (q @ k^T, attn @ v) unless
`quantize_attention=True`: those are the ops where INT8 costs accuracy (softmax outputs span many decades; the
residual stream carries outliers) for little speed.

Calibration frames follow the runtime's sampling: each video in the directory is cut into snippets by
`stp_edge.pipeline.snippets.SnippetAssembler` (one frame per snippet by default) and the sampled frames go
through `stp_edge.preprocess.CpuPreprocessor`, so the encoder is calibrated on exactly what it will see.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.config import STPromptConfig
from stp_edge.errors import MissingInputError, UsageError
from stp_edge.media_files import VIDEO_EXTENSIONS, video_files

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
ACTIVATION_TYPES = ("int8", "uint8")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_MAX_FRAMES = 256


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed calibration images [N, 3, S, S] float32 and the fingerprint the manifest records."""

    images: np.ndarray
    fingerprint: dict[str, Any] = field(default_factory=dict)


def calibration_videos(calib_dir: str | os.PathLike) -> list[Path]:
    """The video files of `calib_dir`, as `stp-edge run DIR` picks them (`stp_edge.media_files.video_files`).

    Raises:
        FileNotFoundError: The directory does not exist or holds no video file (subfolders are not searched).
    """
    root = Path(calib_dir)
    if not root.is_dir():
        raise MissingInputError(f"calibration directory {root} does not exist")
    videos = video_files(root)
    if not videos:
        raise MissingInputError(f"calibration directory {root} holds no video file ({', '.join(VIDEO_EXTENSIONS)}; "
                                f"subfolders are not searched)")
    return videos


def model_snippet_len(*, checkpoint: str | os.PathLike | None = None, demo: bool = False,
                      random_config: str | None = None, overrides: dict | None = None) -> int | None:
    """The snippet length of the model an export will build, read without torch (None when it cannot tell)."""
    import json

    from stp_edge.errors import StpEdgeError
    from stp_edge.model.sources import demo_checkpoint_dir

    try:
        if random_config:
            return STPromptConfig.named(random_config, **(overrides or {})).snippet_len
        ckpt = Path(checkpoint) if checkpoint else demo_checkpoint_dir() if demo else None
        if ckpt is None:
            return None
        return STPromptConfig.from_dict(json.loads((ckpt / "config.json").read_text())["config"]).snippet_len
    except (OSError, ValueError, KeyError, TypeError, StpEdgeError):
        return None  # building the model reports what is wrong with it


def check_int8_request(precision: str, calib: str | os.PathLike | None, calib_frames: int | None,
                       snippet_len: int | None = None) -> None:
    """The INT8 options agree and their inputs are usable; torch-free, so the CLI runs it before importing torch.

    Raises:
        UsageError: int8 without `calib`, `calib` or `calib_frames` without int8, or a bad `calib_frames`.
        FileNotFoundError, VideoError: see `check_calibration`.
    """
    if (precision == "int8") != (calib is not None):
        raise UsageError("precision='int8' needs calib= (CLI: --calib DIR), a directory of videos to calibrate "
                         "on, and calib= is only used with precision='int8'")
    if calib_frames is not None and precision != "int8":
        raise UsageError("calib_frames= (CLI: --calib-frames) is only used with precision='int8'")
    if calib is not None:
        check_calibration(calib, calib_frames, snippet_len)


def check_calibration(calib_dir: str | os.PathLike, max_frames: int | None = None,
                      snippet_len: int | None = None) -> list[Path]:
    """Check an INT8 export's calibration inputs before any export work.

    The frame cap is an integer >= 1, every video opens, and (given `snippet_len`) some video holds a full
    snippet, so `calibration_set` can sample at least one frame: cheap (headers, then at most one snippet of
    frames decoded), where finding out after the graphs are exported costs the export.

    Returns:
        The calibration videos (`calibration_videos`).

    Raises:
        UsageError: `max_frames` is not an integer >= 1 (CLI: --calib-frames), or no video holds a full snippet.
        FileNotFoundError: the directory does not exist or holds no video file.
        VideoError: a video cannot be opened (naming it).
    """
    from stp_edge.video import open_source

    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int)
                                   or max_frames < 1):
        raise UsageError(f"calib_frames must be an integer >= 1 (CLI: --calib-frames), got {max_frames!r}")
    root = Path(calib_dir)
    videos = calibration_videos(root)
    full = snippet_len is None
    for path in videos:
        with open_source(path) as src:  # reads the header and the first frame: a broken file fails here, by name
            full = full or sum(1 for _, _ in zip(range(snippet_len), src, strict=False)) == snippet_len
    if not full:
        raise UsageError(f"no full snippet ({snippet_len} frames) in the videos of {root}; calibrate on videos of "
                         f"at least {snippet_len} frames")
    return videos


def calibration_set(calib_dir: str | os.PathLike, config: STPromptConfig, *,
                    max_frames: int = DEFAULT_MAX_FRAMES) -> CalibrationSet:
    """Sample and preprocess calibration frames from every video in `calib_dir`, as the runtime samples them.

    Each video contributes at most ceil(max_frames / videos) frames, taken from evenly strided snippets when
    the container reports its length. The fingerprint is sha256 over each video's relative name and size and
    each sampled frame's raw bytes, in order, plus the frame count: the same directory gives the same
    fingerprint, and any changed video or sampling gives another.
    """
    from stp_edge.pipeline.snippets import SnippetAssembler
    from stp_edge.preprocess import CpuPreprocessor
    from stp_edge.video import open_source

    if max_frames < 1:
        raise UsageError(f"max_frames must be >= 1, got {max_frames}")
    root = Path(calib_dir)
    videos = calibration_videos(root)
    per_video = max(1, math.ceil(max_frames / len(videos)))
    pre = CpuPreprocessor(config.vision.image_size)
    digest = hashlib.sha256()
    images: list[np.ndarray] = []
    for path in videos:
        digest.update(f"{path.relative_to(root).as_posix()}|{path.stat().st_size}|".encode())
    for path in videos:
        with open_source(path) as src:
            n = src.frame_count
            stride = max(1, (n // config.snippet_len) // per_video) if n else 1
            assembler = SnippetAssembler(config.snippet_len, config.frames_per_snippet)
            taken = 0
            for frame in src:
                snippet = assembler.push(frame)
                if snippet is None or snippet.index % stride:
                    continue
                for f in snippet.frames:
                    digest.update(hashlib.sha256(np.ascontiguousarray(f)).digest())
                images.append(pre._from_valid(snippet.frames))  # the source checked its frames already
                taken += 1
                if taken >= per_video or len(images) >= max_frames:
                    break
        if len(images) >= max_frames:
            break
    if not images:
        raise UsageError(f"no full snippet ({config.snippet_len} frames) in the videos of {root}")
    stacked = np.concatenate(images)
    digest.update(f"frames={len(stacked)}".encode())
    fingerprint = {"sha256": digest.hexdigest(), "num_frames": len(stacked), "num_videos": len(videos),
                   "sampling": f"runtime snippets: {config.frames_per_snippet} frame(s) per {config.snippet_len}",
                   "max_frames": int(max_frames)}
    return CalibrationSet(stacked, fingerprint)


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed images, in batches."""

    def __init__(self, images: np.ndarray, batch: int) -> None:
        self.images, self.batch = images, batch
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.images), self.batch):
            yield {"images": np.ascontiguousarray(self.images[i:i + self.batch], dtype=np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def attention_matmuls(model: Any) -> list[str]:
    """Names of MatMul nodes whose inputs are both activations (q @ k^T, attn @ v), not weights."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


def crop_matmuls(model: Any) -> list[str]:
    """Names of MatMul nodes upstream of a Conv: the crops-mode resize (M @ crop @ M.T) of the input images.

    They resample pixels before the patch stem; quantizing them would round the images themselves to 8 bits.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    seen: set[str] = set()
    stack = [i for n in model.graph.node if n.op_type == "Conv" for i in n.input]
    out = []
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "MatMul":
            out.append(node.name)
        stack.extend(node.input)
    return out


def gemm_to_matmul(model: Any) -> int:
    """Rewrite Gemm(A, W, b) with a constant W as MatMul(A, W') + b in place; returns how many were rewritten.

    The exporter writes linear layers as Reshape -> Gemm -> Reshape. Quantized, a Gemm's bias becomes an int32
    DequantizeLinear, which TensorRT rejects, and a float bias stops ONNX Runtime from fusing the Gemm into an
    integer kernel. As DQ -> MatMul both runtimes run one integer GEMM (ONNX Runtime: MatMulIntegerToFloat).
    The bias is added after the Reshape that follows (when one does): ONNX Runtime's MatMulAddFusion would
    otherwise turn MatMul + Add back into a float Gemm before its Q/DQ fusion sees it.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    nodes, rewritten = [], 0
    bias_after: dict[str, Any] = {}  # output of a Reshape -> the bias Add to emit right after it
    for n in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type != "Gemm" or n.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(n)
            if n.output and n.output[0] in bias_after:
                nodes.append(bias_after.pop(n.output[0]))
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        w_name = f"{n.input[1]}__matmul"
        w = w.T if attrs.get("transB", 0) else w
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        out = n.output[0]
        has_bias = len(n.input) > 2 and bool(n.input[2])
        mm_out = f"{out}__matmul" if has_bias else out
        nodes.append(helper.make_node("MatMul", [n.input[0], w_name], [mm_out], name=f"{n.name}_MatMul"))
        rewritten += 1
        if not has_bias:
            continue
        after = consumers.get(out, [])
        if len(after) == 1 and _keeps_last_dim(after[0], out, w.shape[1], inits):
            reshape = after[0]  # comes later in topological order; now reshapes the bias-free product
            final = reshape.output[0]
            reshape.input[0], reshape.output[0] = mm_out, f"{final}__nobias"
            bias_after[reshape.output[0]] = helper.make_node("Add", [reshape.output[0], n.input[2]], [final],
                                                             name=f"{n.name}_Bias")
        else:
            nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [out], name=f"{n.name}_Bias"))
    used = {i for n in nodes for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return rewritten


def _keeps_last_dim(node: Any, tensor: str, n: int, inits: dict[str, Any]) -> bool:
    """True when `node` is a Reshape of `tensor` to a constant shape ending in `n` (a bias [n] commutes with it)."""
    from onnx import numpy_helper

    if node.op_type != "Reshape" or node.input[0] != tensor or node.input[1] not in inits:
        return False
    shape = numpy_helper.to_array(inits[node.input[1]])
    return shape.ndim == 1 and len(shape) > 0 and int(shape[-1]) == n


def quantize_encoder(fp32_path: str | os.PathLike, out_path: str | os.PathLike, images: np.ndarray, *,
                     activations: str = "int8", method: str = "minmax", quantize_attention: bool = False,
                     batch: int = 8) -> dict[str, Any]:
    """Write the Q/DQ INT8 twin of the fp32 encoder graph `fp32_path` to `out_path`, calibrated on `images`.

    Returns:
        The settings the manifest records under `quantization`.
    """
    import onnx

    from stp_edge._deps import require

    require("onnxruntime.quantization", "INT8 quantization (export --precision int8)")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if activations not in ACTIVATION_TYPES:
        raise UsageError(f"activations must be one of {ACTIVATION_TYPES}, got {activations!r}")
    if method not in CALIBRATION_METHODS:
        raise UsageError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if len(images) == 0 or not np.isfinite(images).all():
        raise UsageError("calibration images must be a non-empty, finite array")
    with tempfile.TemporaryDirectory(prefix="stp-quant-") as tmp:
        # Shape inference + the basic fusions ORT's quantizer expects (it finds the weight matmuls by them).
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        model = onnx.load(str(prepared))
        gemm_to_matmul(model)
        onnx.save(model, str(prepared))
        exclude = crop_matmuls(model) + ([] if quantize_attention else attention_matmuls(model))
        symmetric_acts = activations == "int8"
        quantize_static(
            str(prepared), str(out_path), _Reader(images, batch), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=exclude, per_channel=True,
            activation_type=QuantType.QInt8 if symmetric_acts else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                              "entropy": CalibrationMethod.Entropy}[method],
            # Outputs of the quantized ops stay float: their consumers (bias and residual Adds, LayerNorm,
            # GELU) are float anyway, so a Q/DQ pair there would only add rounding and work.
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": symmetric_acts,
                           "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)},
        )
    return {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "weights": "int8 symmetric per-channel", "activations": f"{activations} "
            + ("symmetric per-tensor (TensorRT-compatible)" if symmetric_acts else "asymmetric per-tensor (CPU only)"),
            "calibration_method": method, "op_types": list(QUANTIZED_OPS),
            "attention_matmuls": "int8" if quantize_attention else "float", "excluded_nodes": len(exclude),
            "tensorrt_compatible": symmetric_acts}


def quantized_ops(path: str | os.PathLike) -> dict[str, int]:
    """Count of QuantizeLinear / DequantizeLinear nodes and of float ops left, for reports and tests."""
    import onnx

    counts: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts

