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

from stp_edge.bundle.preprocessing import PreprocessSpec
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
                    max_frames: int = DEFAULT_MAX_FRAMES, spec: PreprocessSpec | None = None) -> CalibrationSet:
    """Sample and preprocess calibration frames from every video in `calib_dir`, as the runtime samples them.

    `spec`: the bundle's preprocessing (`export.bundle_export.preprocess_for`); each sampled frame gives every view
    it makes (centre crop, letterbox or tiles, the whole frame's region windows), as the runtime's encoder gets
    them. None: CLIP's centre crop only.

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
    pre = CpuPreprocessor(config.vision.image_size, spec=spec)
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
    views = spec.views if spec is not None else 1
    fingerprint = {"sha256": digest.hexdigest(), "num_frames": len(stacked) // views, "num_videos": len(videos),
                   "sampling": f"runtime snippets: {config.frames_per_snippet} frame(s) per {config.snippet_len}"
                               + (f", {views} views each ({len(stacked)} images)" if views > 1 else ""),
                   "max_frames": int(max_frames)}
    return CalibrationSet(stacked, fingerprint)


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed images, in batches."""

    def __init__(self, images: np.ndarray, batch: int, input_name: str = "images") -> None:
        self.images, self.batch, self.input_name = images, batch, input_name
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.images), self.batch):
            yield {self.input_name: np.ascontiguousarray(self.images[i:i + self.batch], dtype=np.float32)}

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
    _set_nodes(model, nodes)
    return rewritten


def _set_nodes(model: Any, nodes: list[Any]) -> None:
    """Replace the graph's nodes by `nodes` (in order) and drop the initializers no node reads any more."""
    used = {i for n in nodes for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _keeps_last_dim(node: Any, tensor: str, n: int, inits: dict[str, Any]) -> bool:
    """True when `node` is a Reshape of `tensor` to a constant shape ending in `n` (a bias [n] commutes with it)."""
    from onnx import numpy_helper

    if node.op_type != "Reshape" or node.input[0] != tensor or node.input[1] not in inits:
        return False
    shape = numpy_helper.to_array(inits[node.input[1]])
    return shape.ndim == 1 and len(shape) > 0 and int(shape[-1]) == n


class Int8FidelityWarning(UserWarning):
    """An INT8 graph's outputs drift from its fp32 twin below the `int8` tolerance (export/verify.py)."""


@dataclass(frozen=True)
class Int8Recipe:
    """How a float graph becomes a Q/DQ INT8 graph; `describe()` is what the manifest records.

    Measured on real weights (benchmarks/bench_int8_real.py: a pretrained ViT-S/14 and MobileNetV2 on real
    frames) rather than on random weights, whose activations have none of a trained ViT's outlier channels:
    - `method`: the activation ranges' calibration ("minmax", "percentile" or "entropy", ONNX Runtime's
      CalibrationMethod); the default is the one that kept the real ViT-S closest to fp32;
    - `smooth_alpha`: SmoothQuant-style scale migration (Xiao et al. 2023) before each weight MatMul: the input's
      per-channel absolute maxima a_k (measured on the calibration images) and the weight rows' maxima w_k give
      s_k = a_k^alpha / w_k^(1-alpha); the activation is divided by s (one float Mul) and the weight rows are
      multiplied by s, so the product is unchanged in exact arithmetic while the outlier channels of a trained
      ViT no longer set the scale of every other channel. None: off;
    - `float_mlp_out`: the MLP's second linear layer (a weight MatMul fed by GELU/QuickGELU: `mlp_out_matmuls`)
      stays float: its input is the one whose long tail neither per-tensor scale nor smoothing tames (on the
      real ViT-S it alone moved the worst token cosine from 0.95 to 0.99);
    - `keep_float`: names of further quantizable nodes kept float (e.g. the ones `sensitivity_scan` ranks worst);
    - weights are always symmetric per-channel int8; attention products stay float unless `quantize_attention`.
    """

    activations: str = "int8"
    method: str = "minmax"
    quantize_attention: bool = False
    smooth_alpha: float | None = 0.5
    float_mlp_out: bool = True
    keep_float: tuple[str, ...] = ()

    def check(self) -> None:
        """Raise UsageError naming the field that is out of range."""
        if self.activations not in ACTIVATION_TYPES:
            raise UsageError(f"activations must be one of {ACTIVATION_TYPES}, got {self.activations!r}")
        if self.method not in CALIBRATION_METHODS:
            raise UsageError(f"method must be one of {CALIBRATION_METHODS}, got {self.method!r}")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise UsageError(f"smooth_alpha must be in [0, 1] or None, got {self.smooth_alpha!r}")

    def describe(self) -> dict[str, Any]:
        """The recipe as the manifest's exporter.quantization records it."""
        symmetric = self.activations == "int8"
        return {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                "weights": "int8 symmetric per-channel",
                "activations": f"{self.activations} " + ("symmetric per-tensor (TensorRT-compatible)" if symmetric
                                                         else "asymmetric per-tensor (CPU only)"),
                "calibration_method": self.method, "op_types": list(QUANTIZED_OPS),
                "attention_matmuls": "int8" if self.quantize_attention else "float",
                "smoothing": ({"kind": "smoothquant", "alpha": self.smooth_alpha} if self.smooth_alpha is not None
                              else None),
                "mlp_out_matmuls": "float" if self.float_mlp_out else "int8",
                "kept_float": list(self.keep_float), "tensorrt_compatible": symmetric}


FAST_RECIPE = Int8Recipe(smooth_alpha=None, float_mlp_out=False)
"""Every weight MatMul int8, no smoothing: the fastest form (and the recipe before issue 27)."""
FAITHFUL_RECIPE = Int8Recipe()
"""SmoothQuant and the MLP-out MatMuls kept float: what keeps a real ViT within tolerance, at a speed cost."""
RECIPES = {"fast": FAST_RECIPE, "faithful": FAITHFUL_RECIPE}


def quantize_encoder(fp32_path: str | os.PathLike, out_path: str | os.PathLike, images: np.ndarray, *,
                     recipe: str | Int8Recipe = "auto", tolerance: float | None = None,
                     batch: int = 8) -> dict[str, Any]:
    """Write the Q/DQ INT8 twin of the fp32 encoder graph `fp32_path` to `out_path`, calibrated on `images`.

    `recipe` "auto" (the default) quantizes with `FAST_RECIPE` and keeps it where its worst embedding cosine to
    fp32 on held-out calibration frames (every 4th image, not used to calibrate) is at least `tolerance` (the
    `int8` tolerance, 0.99); else it quantizes again with `FAITHFUL_RECIPE`. Random weights pass the fast recipe;
    a real ViT's outlier channels may not (benchmarks/results/int8_real.md: the real ViT-S fell to 0.989 fast,
    0.999 faithful; the faithful recipe is slower: fp32 252 ms, fast 196 ms, faithful 235 ms there).
    "fast", "faithful" or an `Int8Recipe` quantize with that recipe alone. Warns (`Int8FidelityWarning`) when
    the final graph is below tolerance.

    Returns:
        The settings the manifest records under `quantization`: the recipe, its `fidelity`, and with "auto"
        `recipe_choice` (what was tried and why the kept one was kept).
    """
    from stp_edge.export.verify import TOLERANCES

    tolerance = TOLERANCES["int8"] if tolerance is None else tolerance
    if isinstance(recipe, str) and recipe not in ("auto", *RECIPES):
        raise UsageError(f"int8 recipe must be one of {['auto', *RECIPES]} or an Int8Recipe, got {recipe!r}")
    images = np.asarray(images)
    held = np.arange(len(images)) % 4 == 3 if len(images) >= 8 else np.ones(len(images), bool)
    calib, check = (images[~held], images[held]) if len(images) >= 8 else (images, images)

    def attempt(chosen: Int8Recipe, name: str, warn: bool) -> dict[str, Any]:
        settings = quantize_graph(fp32_path, out_path, calib, chosen, batch=batch, check_fidelity=False)
        settings["recipe"] = name
        settings["fidelity"] = check_int8_fidelity(fp32_path, out_path, check[:32], label="encoder", warn=warn,
                                                   threshold=tolerance,
                                                   on="held-out calibration frames" if len(images) >= 8
                                                   else "calibration frames")
        return settings

    if not isinstance(recipe, str):
        return attempt(recipe, "custom", warn=True)
    if recipe != "auto":
        return attempt(RECIPES[recipe], recipe, warn=True)
    fast = attempt(FAST_RECIPE, "fast", warn=False)
    worst = min(fast["fidelity"]["min_cosine"].values())
    if fast["fidelity"]["ok"]:
        return {**fast, "recipe_choice": f"auto: fast kept (worst cosine {worst:.4f} >= {tolerance})"}
    faithful = attempt(FAITHFUL_RECIPE, "faithful", warn=True)
    return {**faithful, "recipe_choice": f"auto: fast fell to worst cosine {worst:.4f} < {tolerance}; faithful "
                                         "(SmoothQuant, MLP-out matmuls float)"}


def quantize_graph(fp32_path: str | os.PathLike, out_path: str | os.PathLike, images: np.ndarray,
                   recipe: Int8Recipe = Int8Recipe(), *, batch: int = 8, nodes_to_quantize: list[str] | None = None,
                   check_fidelity: bool = True, label: str | None = None) -> dict[str, Any]:
    """Q/DQ INT8 of any single-input float ONNX graph (a ViT, a CNN, the encoder), calibrated on `images`.

    `nodes_to_quantize` restricts quantization to those nodes (the sensitivity scan quantizes one at a time).
    With `check_fidelity`, the fp32 and INT8 graphs run on (at most 32 of) the calibration images and the worst
    row cosine of every output is recorded under `fidelity`; below the `int8` tolerance an `Int8FidelityWarning`
    says which output, by how much, and what to do.

    Returns:
        `recipe.describe()` plus `excluded_nodes`, `smoothed_matmuls` and (when checked) `fidelity`.
    """
    import onnx

    from stp_edge._deps import require

    require("onnxruntime.quantization", "INT8 quantization (export --precision int8)")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    recipe.check()
    if len(images) == 0 or not np.isfinite(images).all():
        raise UsageError("calibration images must be a non-empty, finite array")
    with tempfile.TemporaryDirectory(prefix="stp-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        model = prepare_graph(fp32_path, prepared)
        input_name = graph_input_name(model)
        exclude = crop_matmuls(model) + ([] if recipe.quantize_attention else attention_matmuls(model))
        exclude += mlp_out_matmuls(model) if recipe.float_mlp_out else []
        exclude += [n for n in recipe.keep_float if n not in exclude]
        smoothed = 0
        if recipe.smooth_alpha is not None:
            onnx.save(model, str(prepared))
            groups = smoothable_matmuls(model, skip=set(exclude) | set(crop_matmuls(model)))
            absmax = activation_absmax(prepared, list(groups), images, batch=batch)
            smoothed = smooth_matmuls(model, groups, absmax, recipe.smooth_alpha)
        onnx.save(model, str(prepared))
        symmetric_acts = recipe.activations == "int8"
        quantize_static(
            str(prepared), str(out_path), _Reader(images, batch, input_name), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=nodes_to_quantize,
            nodes_to_exclude=exclude, per_channel=True,
            activation_type=QuantType.QInt8 if symmetric_acts else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                              "entropy": CalibrationMethod.Entropy}[recipe.method],
            # Outputs of the quantized ops stay float: their consumers (bias and residual Adds, LayerNorm,
            # GELU) are float anyway, so a Q/DQ pair there would only add rounding and work.
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": symmetric_acts,
                           "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)},
        )
    settings = {**recipe.describe(), "excluded_nodes": len(exclude), "smoothed_matmuls": smoothed}
    if check_fidelity:
        settings["fidelity"] = check_int8_fidelity(fp32_path, out_path, images[:32], label=label)
    return settings


def prepare_graph(fp32_path: str | os.PathLike, prepared: Path) -> Any:
    """The graph as the quantizer sees it, saved to `prepared` and returned.

    Shape inference, ORT's basic fusions (its quantizer finds the weight matmuls by them) and Gemm rewritten
    as MatMul (`gemm_to_matmul`).
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
    model = onnx.load(str(prepared))
    gemm_to_matmul(model)
    onnx.save(model, str(prepared))
    return model


def quantizable_nodes(fp32_path: str | os.PathLike, recipe: Int8Recipe = Int8Recipe()) -> list[str]:
    """Names of the nodes `recipe` quantizes in the graph at `fp32_path`, in graph order (after `prepare_graph`)."""
    with tempfile.TemporaryDirectory(prefix="stp-quant-") as tmp:
        model = prepare_graph(fp32_path, Path(tmp) / "prepared.onnx")
    skip = set(crop_matmuls(model) + ([] if recipe.quantize_attention else attention_matmuls(model))
               + (mlp_out_matmuls(model) if recipe.float_mlp_out else []) + list(recipe.keep_float))
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Conv") and n.name not in skip]


def mlp_out_matmuls(model: Any, hops: int = 4) -> list[str]:
    """Weight MatMuls whose input comes from a GELU within `hops` elementwise nodes: an MLP's second linear.

    GELU appears as one Gelu node, as x * 0.5 * (1 + erf(x / sqrt 2)) (Erf), or as CLIP's QuickGELU
    x * sigmoid(1.702 x) (Sigmoid); walking back through Mul/Add/Div (and the Reshape before an exported Gemm)
    finds all three.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    consts = {i.name for i in model.graph.initializer}

    def from_gelu(tensor: str, depth: int) -> bool:
        node = producer.get(tensor)
        if node is None or depth > hops:
            return False
        if node.op_type in ("Gelu", "Erf", "Sigmoid", "FastGelu", "BiasGelu"):
            return True
        return (node.op_type in ("Mul", "Add", "Div", "Reshape", "Flatten", "Transpose")
                and any(from_gelu(i, depth + 1) for i in node.input))

    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in consts and from_gelu(n.input[0], 0)]


def sensitivity_scan(fp32_path: str | os.PathLike, calib: np.ndarray, images: np.ndarray,
                     groups: dict[str, list[str]], recipe: Int8Recipe = Int8Recipe(), *,
                     batch: int = 8) -> dict[str, dict[str, float]]:
    """Quantize one group of nodes at a time (the rest float) and measure each graph's drift on `images`.

    Returns group -> worst and mean row cosine of the first output to fp32 (rows: the last axis), so the
    groups whose quantization alone hurts most stand out; the recipe's smoothing applies as in a full run.
    """
    import warnings

    from stp_edge.export.verify import embedding_cosine

    ref = next(iter(graph_outputs(fp32_path, images, batch=batch).values()))
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="stp-sens-") as tmp:
        for name, nodes in groups.items():
            path = Path(tmp) / "q.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_graph(fp32_path, path, calib, recipe, batch=batch, nodes_to_quantize=list(nodes),
                               check_fidelity=False)
            got = next(iter(graph_outputs(path, images, batch=batch).values()))
            rows = [embedding_cosine(got[i], ref[i]) for i in range(len(ref))]
            out[name] = {"min_cosine": round(min(rows), 6), "mean_cosine": round(float(np.mean(rows)), 6)}
    return out


def graph_input_name(model: Any) -> str:
    """The one non-constant input of a graph; UsageError when it has several (the quantizer feeds one)."""
    consts = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in consts]
    if len(names) != 1:
        raise UsageError(f"INT8 calibration feeds graphs with one input; this graph has {names}")
    return names[0]


def smoothable_matmuls(model: Any, skip: set[str] = frozenset()) -> dict[str, list[str]]:  # type: ignore[assignment]
    """Activation tensor -> the MatMul nodes that multiply it by a constant 2-D weight [K, N] (q, k, v share one)."""
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[str]] = {}
    for n in model.graph.node:
        w = inits.get(n.input[1]) if n.op_type == "MatMul" else None
        if w is not None and len(w.dims) == 2 and n.input[0] not in inits and n.name not in skip:
            groups.setdefault(n.input[0], []).append(n.name)
    return groups


def activation_absmax(model_path: str | os.PathLike, tensors: list[str], images: np.ndarray, *,
                      batch: int = 8) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of each named intermediate tensor over `images`, by one ORT pass per batch."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = graph_input_name(model)
    out: dict[str, np.ndarray] = {}
    for i in range(0, len(images), batch):
        values = sess.run(tensors, {name: np.ascontiguousarray(images[i:i + batch], dtype=np.float32)})
        for t, v in zip(tensors, values, strict=True):
            m = np.abs(v).reshape(-1, v.shape[-1]).max(0)
            out[t] = np.maximum(out[t], m) if t in out else m
    return out


def smooth_matmuls(model: Any, groups: dict[str, list[str]], absmax: dict[str, np.ndarray], alpha: float) -> int:
    """SmoothQuant scale migration in place (see `Int8Recipe`); returns how many MatMuls were smoothed."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    first: dict[str, Any] = {}  # name of a group's first MatMul -> the Mul to emit before it
    for k, (tensor, names) in enumerate(groups.items()):
        weights = [numpy_helper.to_array(inits[by_name[n].input[1]]) for n in names]
        a = np.maximum(absmax[tensor].astype(np.float64), 1e-5)
        w = np.maximum(np.max([np.abs(x).max(1) for x in weights], axis=0).astype(np.float64), 1e-5)
        s = np.clip(a ** alpha / w ** (1.0 - alpha), 1e-4, 1e4)
        inv, smoothed = f"{tensor}__smooth_inv_{k}", f"{tensor}__smoothed_{k}"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        for n, x in zip(names, weights, strict=True):
            node = by_name[n]
            scaled = f"{node.input[1]}__smoothed_{k}"
            model.graph.initializer.append(numpy_helper.from_array((x * s[:, None]).astype(np.float32), scaled))
            node.input[0], node.input[1] = smoothed, scaled
        first[names[0]] = helper.make_node("Mul", [tensor, inv], [smoothed], name=f"SmoothQuant_{k}")
    nodes = []
    for n in model.graph.node:
        if n.name in first:
            nodes.append(first[n.name])
        nodes.append(n)
    _set_nodes(model, nodes)
    return sum(len(v) for v in groups.values())


def graph_outputs(path: str | os.PathLike, images: np.ndarray, *, batch: int = 8) -> dict[str, np.ndarray]:
    """Every output of a single-input ONNX graph on `images` (ONNX Runtime CPU), concatenated over batches."""
    import onnx
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = graph_input_name(onnx.load(str(path), load_external_data=False))
    outs: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), batch):
        x = np.ascontiguousarray(images[i:i + batch], dtype=np.float32)
        for o, v in zip(sess.get_outputs(), sess.run(None, {name: x}), strict=True):
            outs.setdefault(o.name, []).append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}


def check_int8_fidelity(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, images: np.ndarray, *,
                        label: str | None = None, warn: bool = True, threshold: float | None = None,
                        on: str = "calibration frames") -> dict[str, Any]:
    """Worst row cosine of every output, INT8 vs fp32, on `images`; warns (`Int8FidelityWarning`) below tolerance."""
    import warnings

    from stp_edge.export.verify import TOLERANCES, embedding_cosine

    ref, got = graph_outputs(fp32_path, images), graph_outputs(int8_path, images)
    cosine = {k: round(embedding_cosine(got[k], ref[k]), 6) for k in ref}
    threshold = TOLERANCES["int8"] if threshold is None else threshold
    low = {k: v for k, v in cosine.items() if v < threshold}
    for k, v in (low.items() if warn else ()):
        warnings.warn(Int8FidelityWarning(
            f"INT8 {label or Path(int8_path).name} output {k!r}: worst cosine to fp32 {v:.4f} < {threshold} on "
            f"{len(images)} {on}; this graph loses accuracy in INT8: export fp16/fp32, or "
            f"calibrate on more representative videos"), stacklevel=3)
    return {"min_cosine": cosine, "frames": len(images), "on": on,
            "threshold": threshold, "ok": not low}


def quantized_ops(path: str | os.PathLike) -> dict[str, int]:
    """Count of QuantizeLinear / DequantizeLinear nodes and of float ops left, for reports and tests."""
    import onnx

    counts: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts



# --- dynamic INT8 (integer matmuls, activations quantized per call): the form fast on CPUs without VNNI --------
INT8_FORMS = ("static", "dynamic", "auto")
DYNAMIC_OPS = ("MatMul",)


def resolve_int8_form(precision: str, int8_form: str | None, calib: str | os.PathLike | None) -> str | None:
    """The int8 form an export writes ("static" Q/DQ or "dynamic" MatMulInteger), or None for fp32/fp16.

    "auto" picks the form fast on this machine's CPU (`stp_edge.machine.int8_form_for`: static with VNNI/AMX or
    Arm dotprod, dynamic without), or static when calibration videos were given. None means "static".

    Raises:
        UsageError: An unknown form, a form without precision int8, or calibration given for the dynamic form.
    """
    if int8_form is not None and int8_form not in INT8_FORMS:
        raise UsageError(f"int8_form must be one of {INT8_FORMS}, got {int8_form!r}")
    if precision != "int8":
        if int8_form is not None:
            raise UsageError("int8_form= (CLI: --int8-form) is only used with precision='int8'")
        return None
    if int8_form == "auto":
        from stp_edge.machine import cpu_features, int8_form_for

        int8_form = "static" if calib is not None else int8_form_for(cpu_features())
    form = int8_form or "static"
    if form == "dynamic" and calib is not None:
        raise UsageError("int8_form='dynamic' quantizes activations at run time and needs no calib= (CLI: --calib)")
    return form


def check_int8_form_request(precision: str, int8_form: str | None, calib: str | os.PathLike | None,
                            calib_frames: int | None, snippet_len: int | None = None) -> str | None:
    """`check_int8_request` for the static form, the dynamic form's own checks otherwise; returns the form."""
    form = resolve_int8_form(precision, int8_form, calib)
    if form == "dynamic":
        if calib_frames is not None:
            raise UsageError("calib_frames= (CLI: --calib-frames) is only used with the static int8 form")
        return form
    check_int8_request(precision, calib, calib_frames, snippet_len)
    return form


def quantize_encoder_dynamic(fp32_path: str | os.PathLike, out_path: str | os.PathLike, *,
                             quantize_attention: bool = False) -> dict[str, Any]:
    """Write the dynamic INT8 twin of the fp32 encoder `fp32_path`: int8 weights, uint8 activations per call.

    ONNX Runtime's `quantize_dynamic` (QOperator: DynamicQuantizeLinear + MatMulInteger + the scale Muls, which
    ONNX Runtime's optimiser fuses into one DynamicQuantizeMatMul kernel). No calibration: each call quantizes
    its activations with their own range. On AVX2-only CPUs this runs the ViT-B/16 encoder about 2x faster than
    fp32 (issue 27: 89 vs 186 ms on an AVX2 EPYC), where the Q/DQ form runs at fp32 speed. The same ops stay
    float as in the static form (attention products, crops-mode resize); TensorRT cannot build this form.

    Returns:
        The settings the manifest records under `exporter.quantization`.
    """
    import onnx

    from stp_edge._deps import require

    require("onnxruntime.quantization", "INT8 quantization (export --precision int8)")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="stp-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        model = onnx.load(str(prepared))
        gemm_to_matmul(model)
        onnx.save(model, str(prepared))
        exclude = crop_matmuls(model) + ([] if quantize_attention else attention_matmuls(model))
        quantize_dynamic(str(prepared), str(out_path), op_types_to_quantize=list(DYNAMIC_OPS),
                         nodes_to_exclude=exclude, per_channel=False, weight_type=QuantType.QInt8)
    return {"form": "dynamic", "tool": "onnxruntime.quantization.quantize_dynamic", "format": "QOperator",
            "weights": "int8 symmetric per-tensor", "activations": "uint8 asymmetric per call (no calibration)",
            "op_types": list(DYNAMIC_OPS), "attention_matmuls": "int8" if quantize_attention else "float",
            "excluded_nodes": len(exclude), "tensorrt_compatible": False}
