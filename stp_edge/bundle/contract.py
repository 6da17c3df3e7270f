"""The graphs' I/O contract: the names and shapes a config implies, and what an ONNX file really declares.

`expected_io(config, regions)` is the table of docs/architecture.md ("Graphs") for one config. `read_onnx_io(path)`
reads an ONNX file's graph inputs and outputs straight from the protobuf wire format (no `onnx`, no onnxruntime): it
memory-maps the file and skips every node and weight by its length, so it costs microseconds even for a large
encoder. Together they let `Bundle.load` refuse a swapped or edited graph before any runner starts.
"""

from __future__ import annotations

import mmap
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stp_edge.bundle.errors import GraphMismatchError
from stp_edge.bundle.wire import Malformed, fields, string
from stp_edge.config import STPromptConfig
from stp_edge.errors import UsageError

Shape = list  # of int (a fixed size) or str (a symbolic, dynamic axis)
ONNX_FLOAT = 1  # TensorProto.FLOAT: every graph boundary is float32, whatever the precision inside


# Where a bundle's region features are computed (manifest key `region_features`): "encoder" (the encoder graph
# returns region_emb: patch tokens pooled, or crops encoded, inside the graph) or "host" (the encoder returns
# patch_emb and the runtime pools it, or cuts and encodes the crops itself). A manifest without the key means
# "host". The "host" layout is deprecated: read and written by every release before `HOST_REGIONS_REMOVED_IN`,
# see docs/bundle-format.md ("Compatibility").
REGION_FEATURES = ("encoder", "host")
LEGACY_REGION_FEATURES = "host"  # what a manifest without the key means
HOST_REGIONS_REMOVED_IN = "0.3.0"  # the stp-edge release that refuses "host" bundles


def region_features(manifest: Mapping[str, Any]) -> str:
    """"encoder" or "host": the manifest's `region_features`, "host" when the key is absent."""
    return str(manifest.get("region_features", LEGACY_REGION_FEATURES))


def region_layout_problems(cfg: STPromptConfig, regions: str, region_grid: int) -> list[str]:
    """Contradictions between the config's region extent, `region_features` and `preprocess.region_grid`.

    Region extent "frame" (crops tiling the whole frame) is the "host" layout: the preprocessors cut the R*R windows
    as views (manifest `preprocess.region_grid` = R) and the encoder graph encodes each image; "center" has no
    windows (`region_grid` 0).
    """
    want = cfg.region_grid if cfg.region_extent == "frame" else 0
    out = []
    if region_grid != want:
        out.append(f"preprocess.region_grid {region_grid} differs from the config's {want} (region_extent "
                   f"{cfg.region_extent!r}, region_grid {cfg.region_grid})")
    if cfg.region_extent == "frame" and regions != "host":
        out.append(f"config.region_extent 'frame' needs region_features 'host' (the runtime cuts the crops of the "
                   f"whole frame, the encoder graph encodes each image), got {regions!r}")
    return out


def host_regions_deprecated(cfg: STPromptConfig, regions: str | None) -> bool:
    """True for the deprecated "host" layout: regions computed on the host from the centre view.

    The host layout of region extent "frame" (crops of the whole frame, cut by the preprocessors) is not deprecated:
    it is the only layout that can see the whole frame.
    """
    return regions in (None, "host") and cfg.region_extent != "frame"


def warn_host_regions(where: str | Path) -> None:
    """Say (FutureWarning) that the bundle at `where` uses the deprecated "host" region layout, and until when."""
    warnings.warn(f"{where}: this bundle computes region features on the host (region_features \"host\", or no "
                  f"region_features key): this layout is deprecated and stp-edge {HOST_REGIONS_REMOVED_IN} will "
                  f"refuse it; re-export the model (`stp-edge export`) to compute them in the encoder graph",
                  FutureWarning, stacklevel=3)


def expected_io(cfg: STPromptConfig, regions: str = "encoder") -> dict[str, dict[str, dict[str, Shape]]]:
    """graph -> {"inputs": {name: shape}, "outputs": {name: shape}} implied by `cfg` (B, T dynamic).

    Args:
        cfg: The model config.
        regions: `region_features` of the bundle: "encoder" (the encoder outputs region_emb [B,R2,E]) or "host"
            (deprecated: it outputs patch_emb [B,N,E] and the runtime derives the regions).
    """
    if regions not in REGION_FEATURES:
        raise UsageError(f"region_features must be one of {REGION_FEATURES}, got {regions!r}")
    S, N, E = cfg.vision.image_size, cfg.vision.num_patches, cfg.vision.embed_dim
    R2, K = cfg.num_regions, cfg.num_classes
    second = {"region_emb": ["B", R2, E]} if regions == "encoder" else {"patch_emb": ["B", N, E]}
    return {
        "encoder": {"inputs": {"images": ["B", 3, S, S]}, "outputs": {"frame_emb": ["B", E], **second}},
        "temporal": {"inputs": {"frame_emb": ["B", "T", E], "region_emb": ["B", "T", R2, E]},
                     "outputs": {"score": ["B", "T"], "class_probs": ["B", "T", K]}},
        "spatial": {"inputs": {"region_emb": ["B", R2, E]}, "outputs": {"region_scores": ["B", R2]}},
    }


@dataclass(frozen=True)
class OutputRange:
    """What the values of one graph output may be, beyond its shape: always finite, and optionally bounded.

    Attributes:
        low: Smallest value allowed (None: unbounded).
        high: Largest value allowed (None: unbounded).
        sums_to_one: Each vector along the last axis sums to 1 (a probability distribution).
    """

    low: float | None = None
    high: float | None = None
    sums_to_one: bool = False


# One fp16 ulp at 1.0 is 2**-10 (9.8e-4): a sigmoid or softmax computed in fp16 may round up to it, so bounds are
# held with this slack; a broken graph (NaN, logits instead of probabilities, 4.85) is far outside it.
RANGE_TOLERANCE = 1e-3
# How far a probability vector's sum may be from 1: the fp16 parity tolerance of `stp-edge verify`
# (export/verify.py TOLERANCES["fp16"]); fp16 rounding of K probabilities stays well inside it.
PROB_SUM_TOLERANCE = 1e-2
# graph -> output -> the values it may hold (shapes: `expected_io`). Every runner output is checked against this
# table by `stp_edge.pipeline.calls.check_outputs` before any stage uses it.
OUTPUT_RANGES: dict[str, dict[str, OutputRange]] = {
    "encoder": {"frame_emb": OutputRange(), "region_emb": OutputRange(), "patch_emb": OutputRange()},
    "temporal": {"score": OutputRange(0.0, 1.0), "class_probs": OutputRange(0.0, 1.0, sums_to_one=True)},
    "spatial": {"region_scores": OutputRange(0.0, 1.0)},
}


def _fmt(shape: Shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def shape_mismatch(expected: Shape, got: Shape) -> bool:
    """True unless same rank, equal fixed sizes, and a dynamic (symbolic) axis wherever one is expected."""
    if len(expected) != len(got):
        return True
    for e, g in zip(expected, got, strict=True):
        if isinstance(e, int) and e != g:
            return True
        if isinstance(e, str) and not isinstance(g, str):
            return True
    return False


def io_mismatches(graph: str, expected: dict[str, dict[str, Shape]], got: dict[str, dict[str, Shape]],
                  what: str) -> list[str]:
    """One line per difference between two I/O tables of `graph` (`what` names the second, e.g. its file)."""
    out = []
    for kind in ("inputs", "outputs"):
        want, have = expected[kind], got.get(kind, {})
        if list(want) != list(have):
            out.append(f"graph {graph!r} {kind}: expected {list(want)}, {what} has {list(have)}")
            continue
        for name, shape in want.items():
            if shape_mismatch(shape, have[name]):
                out.append(f"graph {graph!r} {kind[:-1]} {name!r}: expected shape {_fmt(shape)}, "
                           f"{what} has {_fmt(have[name])}")
    return out


# --- an ONNX file's I/O, from the protobuf wire format (stp_edge.bundle.wire) -----------------------------------
@dataclass
class _Onnx:
    inputs: dict[str, tuple[int, Shape]]
    outputs: dict[str, tuple[int, Shape]]
    initializers: set[str]


def _value_info(buf, span) -> tuple[str, int, Shape]:
    """ValueInfoProto -> (name, elem_type, shape); elem_type 0 when not a tensor."""
    name, elem, shape = "", 0, []
    for f, w, v in fields(buf, *span):
        if f == 1 and w == 2:
            name = string(buf, v)
        elif f == 2 and w == 2:  # TypeProto
            for tf, tw, tv in fields(buf, *v):
                if tf == 1 and tw == 2:  # TypeProto.Tensor
                    for ef, ew, ev in fields(buf, *tv):
                        if ef == 1 and ew == 0:
                            elem = ev
                        elif ef == 2 and ew == 2:  # TensorShapeProto
                            shape = [_dim(buf, dv) for df, dw, dv in fields(buf, *ev) if df == 1 and dw == 2]
    return name, elem, shape


def _dim(buf, span) -> int | str:
    value: int | str = "?"  # neither a size nor a name: an unknown (dynamic) axis
    for f, w, v in fields(buf, *span):
        if f == 1 and w == 0:
            value = v
        elif f == 2 and w == 2:
            value = string(buf, v) or "?"
    return value


def _tensor_name(buf, span) -> str:
    """A TensorProto's name; its data is skipped by its length."""
    return next((string(buf, v) for f, w, v in fields(buf, *span) if f == 8 and w == 2), "")


def _parse(buf) -> _Onnx:
    graph = None
    for f, w, v in fields(buf, 0, len(buf)):
        if f == 7 and w == 2:
            graph = v
    if graph is None:
        raise Malformed("no graph")
    model = _Onnx({}, {}, set())
    for f, w, v in fields(buf, *graph):
        if w != 2:
            continue
        if f in (11, 12):
            name, elem, shape = _value_info(buf, v)
            (model.inputs if f == 11 else model.outputs)[name] = (elem, shape)
        elif f == 5:
            model.initializers.add(_tensor_name(buf, v))
    return model


def read_onnx_io(path: str | Path) -> dict[str, dict[str, tuple[int, Shape]]]:
    """{"inputs": {name: (elem_type, shape)}, "outputs": {...}} of an ONNX file, without onnx or onnxruntime.

    Inputs that are initializers (old exporters list weights as inputs) are left out.

    Raises:
        GraphMismatchError: The file is empty, truncated or not ONNX. (What the graph holds, external data
            included, is checked by `stp_edge.bundle.graph_rules.check_graph_content`.)
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if not f.seek(0, 2):
                raise GraphMismatchError(f"{path.name} is empty, not an ONNX model")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                model = _parse(buf)
    except Malformed as exc:
        raise GraphMismatchError(f"{path.name} is not a valid ONNX model (truncated or corrupted): {exc}") from None
    except OSError as exc:
        raise GraphMismatchError(f"{path.name} cannot be read: {exc.strerror or exc}") from None
    if not model.outputs:
        raise GraphMismatchError(f"{path.name} is not a valid ONNX model: its graph has no outputs")
    inputs = {k: v for k, v in model.inputs.items() if k not in model.initializers}
    return {"inputs": inputs, "outputs": model.outputs}


def check_onnx_file(graph: str, path: Path, expected: dict[str, dict[str, Shape]]) -> None:
    """Raise GraphMismatchError (one line) unless the ONNX file declares exactly the `expected` float tensors."""
    io = read_onnx_io(path)
    got = {kind: {n: shape for n, (_, shape) in io[kind].items()} for kind in ("inputs", "outputs")}
    problems = io_mismatches(graph, expected, got, path.name)
    for kind in ("inputs", "outputs"):
        problems += [f"graph {graph!r} {kind[:-1]} {n!r}: expected float32, {path.name} has ONNX type {elem}"
                     for n, (elem, _) in io[kind].items() if n in expected[kind] and elem != ONNX_FLOAT]
    if problems:
        raise GraphMismatchError(f"{path.name} does not fit this bundle's config: " + "; ".join(problems))
