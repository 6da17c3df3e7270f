"""What a bundle graph may contain, checked when a bundle loads: held to what stp-edge's own exporter writes.

A bundle is code: a graph can loop, allocate, or read files, so what it may hold is defined, not trusted.

`check_graph_content(graph, path, config)` refuses, with one line naming the graph, the node or tensor and the
rule:

1. data outside the file: any tensor anywhere (initializers, sparse initializers, a Constant's value, any
   tensor-valued attribute, inside every subgraph and function) that points at external data. The manifest hashes
   the graph files only, so an external file would be code and weights outside the sha256 set;
2. model-local functions and training graphs (export writes neither);
3. an operator outside `ALLOWED_OPERATORS` (what export writes, `EXPORT_OPERATORS`, plus a few element-wise and
   reducing operators older/newer exporters write, `EXTRA_OPERATORS`), in particular Loop, Scan and If: control flow
   can run without bound, and export writes none; a node in a domain other than the standard ONNX one; a graph
   attribute on any node;
4. more constant data than the config's parameters explain (`constant_budget`): the graph file's size is checked
   before it is read, then the dense size of every constant tensor;
5. a graph input whose fixed dimensions exceed `MAX_STATIC_DIM` / `MAX_INPUT_ELEMENTS`;
6. a constant shape operand (Expand's shape, ConstantOfShape's shape, Tile's repeats, Range's bounds) that asks for
   more than `MAX_SHAPE_ELEMENTS` elements.

What load time cannot see (a shape computed from the inputs at run time) is bounded by the runtime: a per-call
deadline and ONNX Runtime's memory cap (stp_edge.backends).
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

from stp_edge.bundle.errors import GraphMismatchError, UnsafeGraphError
from stp_edge.bundle.graph_walk import GraphWalk, Node, Tensor, walk_onnx
from stp_edge.bundle.wire import Malformed
from stp_edge.config import STPromptConfig, VisionConfig

# Every operator the graphs of `stp-edge export` contain: fp32, fp16 and int8 (Q/DQ; dynamic: DynamicQuantizeLinear
# + MatMulInteger) encoders, tokens and crops
# regions, patch and conv stems, opsets 17-20, simplified or not (tests/test_bundle_graph_checks.py exports them and
# fails when export starts writing one that is not listed here).
EXPORT_OPERATORS = frozenset({
    "Abs", "Add", "Cast", "Clip", "Concat", "Conv", "DequantizeLinear", "Div", "DynamicQuantizeLinear", "Erf",
    "Expand", "Gather", "GatherElements", "Gelu", "Gemm", "Greater", "LayerNormalization", "MatMul",
    "MatMulInteger", "Mul", "Neg", "QuantizeLinear",
    "Range", "ReduceL2", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Shape", "Sigmoid", "Slice", "Softmax",
    "Squeeze", "Sub", "TopK", "Transpose", "Unsqueeze", "Where",
})
# Operators whose output is never larger than their inputs (element-wise, reductions, views) or a constant counted
# in the budget, which other exporter versions write for the same layers (LayerNorm and GELU decomposed, BatchNorm
# unfolded, Constant nodes) and the hand-made test graphs use.
EXTRA_OPERATORS = frozenset({
    "BatchNormalization", "Constant", "Equal", "Exp", "Flatten", "Identity", "Less", "Log", "Max", "Min", "Not",
    "Pow", "Reciprocal", "ReduceMax", "Sqrt", "Tanh",
})
ALLOWED_OPERATORS = EXPORT_OPERATORS | EXTRA_OPERATORS
CONTROL_FLOW = frozenset({"Loop", "Scan", "If"})
STANDARD_DOMAINS = ("", "ai.onnx")

MAX_STATIC_DIM = 1 << 16  # a graph input's fixed dimension (the schema caps image_size at 8192)
MAX_INPUT_ELEMENTS = 1 << 28  # fixed dimensions of one graph input, multiplied
MAX_SHAPE_ELEMENTS = 1 << 26  # a constant shape operand's tensor (ViT-B/16's largest activation per frame: 466k)
# Shape operands read from constants: operator -> input positions that set the output's size.
SHAPE_OPERANDS = {"Expand": (1,), "ConstantOfShape": (0,), "Tile": (1,)}
BUDGET_SLACK = 1 << 20  # bytes every graph may hold beyond twice its parameters (small tables, masks)
FILE_OVERHEAD = 16 << 20  # bytes a graph file may hold beyond its constant budget (nodes, names, shapes)


def check_graph_content(graph: str, path: Path, config: STPromptConfig) -> None:
    """Refuse a graph file that holds what a bundle graph may not (the module docstring lists the rules).

    Args:
        graph: "encoder", "temporal" or "spatial".
        path: The graph's file (already checked to be a regular file inside the bundle).
        config: The bundle's model config, which bounds the graph's constants.

    Raises:
        UnsafeGraphError: One line naming the graph, the node or tensor, and the rule it breaks.
        GraphMismatchError: The file is not a well-formed ONNX model.
    """
    where = f"graph {graph!r} ({path.name})"
    budget = constant_budget(graph, config)
    size = os.stat(path).st_size
    if size > 2 * budget + FILE_OVERHEAD:
        raise UnsafeGraphError(f"{where} is {_mb(size)}; a {graph} graph of this config is at most "
                               f"{_mb(2 * budget + FILE_OVERHEAD)} (twice its constant budget of {_mb(budget)} "
                               f"plus {_mb(FILE_OVERHEAD)} for its nodes); "
                               f"re-export the model with stp-edge export")
    try:
        walk = walk_onnx(path)
    except Malformed as exc:
        raise GraphMismatchError(f"{path.name} is not a valid ONNX model (truncated or corrupted): {exc}") from None
    for rule in (_external_data, _extras, _operators, _constants, _inputs, _shape_operands):
        problem = rule(walk, budget)
        if problem:
            raise UnsafeGraphError(f"{where}: {problem}")


def _external_data(walk: GraphWalk, budget: int) -> str | None:
    for t in walk.tensors:
        if t.external is not None:
            return (f"{t.describe()} keeps its data in the external file {t.external!r}, outside the bundle's "
                    f"sha256 set; bundle graphs hold every tensor inline (re-export the model)")
    return None


def _extras(walk: GraphWalk, budget: int) -> str | None:
    if walk.functions:
        return (f"the model defines functions {walk.functions[:3]}; bundle graphs use only standard operators "
                f"(export writes no functions)")
    if walk.training_graphs:
        return "the model carries training graphs (TrainingInfoProto); bundle graphs are inference graphs only"
    return None


def _operators(walk: GraphWalk, budget: int) -> str | None:
    for node in walk.nodes:
        problem = node_problem(node)
        if problem:
            return problem
    return None


def node_problem(node: Node) -> str | None:
    """Why `node` may not be in a bundle graph, or None."""
    what = node.describe()
    if node.domain not in STANDARD_DOMAINS:
        return (f"{what} is in the custom domain {node.domain!r}; bundle graphs use only the standard ONNX "
                f"domain (custom operators are native code outside the bundle)")
    if node.op_type in CONTROL_FLOW:
        return (f"{what} is control flow, which can run without bound; bundle graphs hold none (export writes "
                f"no {'/'.join(sorted(CONTROL_FLOW))})")
    if node.op_type not in ALLOWED_OPERATORS:
        return (f"{what}: operator {node.op_type!r} is not one stp-edge export writes "
                f"(stp_edge.bundle.graph_rules.ALLOWED_OPERATORS, docs/bundle-format.md)")
    if node.graph_attributes:
        return f"{what} holds subgraphs in attributes {list(node.graph_attributes)}; bundle graphs hold none"
    return None


def _constants(walk: GraphWalk, budget: int) -> str | None:
    total = sum(t.nbytes for t in walk.tensors)
    if total <= budget:
        return None
    biggest = max(walk.tensors, key=lambda t: t.nbytes)
    return (f"holds {_mb(total)} of constants (largest: {biggest.describe()}, {_dims(biggest.dims)}, "
            f"{_mb(biggest.nbytes)}); a graph of this config holds at most {_mb(budget)} (twice its parameters "
            f"in float32, plus {_mb(BUDGET_SLACK)}); re-export the model")


def _inputs(walk: GraphWalk, budget: int) -> str | None:
    for name, dims in walk.inputs.items():
        fixed = [d for d in dims if isinstance(d, int)]
        if any(d > MAX_STATIC_DIM or d < 0 for d in fixed) or math.prod(fixed) > MAX_INPUT_ELEMENTS:
            return (f"input {name!r} has fixed dimensions {_dims(dims)}; at most {MAX_STATIC_DIM} each and "
                    f"{MAX_INPUT_ELEMENTS} elements in all")
    return None


def _shape_operands(walk: GraphWalk, budget: int) -> str | None:
    constants = walk.constants()
    for node in walk.nodes:
        if node.graph:
            continue
        asked = _asked_elements(node, constants)
        if asked is not None and asked < 0:
            return f"{node.describe()} has step 0 or an infinite bound (constant operands): it never ends"
        if asked is not None and asked > MAX_SHAPE_ELEMENTS:
            return (f"{node.describe()} asks for a tensor of {asked} elements from constant shape operands; bundle "
                    f"graphs ask for at most {MAX_SHAPE_ELEMENTS} elements")
    return None


def _asked_elements(node: Node, constants: dict[str, Tensor]) -> int | None:
    """Elements of the tensor constant shape operands ask for: None when computed, -1 for an endless Range."""
    if node.op_type == "Range":
        bounds = [_values(constants, name) for name in node.inputs[:3]]
        if len(bounds) < 3 or any(b is None or len(b) != 1 for b in bounds):
            return None
        (start,), (limit,), (delta,) = bounds  # type: ignore[misc]
        if delta == 0:
            return -1
        if all(isinstance(x, int) for x in (start, limit, delta)):
            return max(-((start - limit) // delta), 0)  # ceil((limit - start) / delta), exactly
        count = (limit - start) / delta
        return max(math.ceil(count), 0) if math.isfinite(count) else -1
    for i in SHAPE_OPERANDS.get(node.op_type, ()):
        values = _values(constants, node.inputs[i]) if i < len(node.inputs) else None
        if values is not None:
            return math.prod(max(v, 1) for v in values)
    return None


def _values(constants: dict[str, Tensor], name: str) -> tuple[int, ...] | None:
    t = constants.get(name)
    return None if t is None else t.values


# --- the budget ------------------------------------------------------------------------------------------------
def constant_budget(graph: str, config: STPromptConfig) -> int:
    """Bytes of constants graph `graph` of a `config` model may hold: twice its parameters in float32, + 1 MiB.

    The parameter counts follow the model (CLIP vision tower, temporal heads, spatial queries); the exporter's
    graphs hold 0.25x (int8) to 1.0x (fp32) of them, so the factor 2 leaves room for exporter changes while a
    graph carrying data its config cannot explain is refused.
    """
    params = {"encoder": _encoder_params, "temporal": _temporal_params, "spatial": _spatial_params}[graph](config)
    return 2 * 4 * params + BUDGET_SLACK


def _encoder_params(c: STPromptConfig) -> int:
    v: VisionConfig = c.vision
    crops = c.num_regions * 2 * v.image_size ** 2 if c.region_mode == "crops" else 0  # crop resize matrices
    return _vision_params(v) + crops


def _vision_params(v: VisionConfig) -> int:
    w, n, p = v.width, v.num_patches, v.patch_size
    if v.stem == "conv":
        chans = [3] + [v.stem_width << i for i in range(max(int(math.log2(p)), 1))]
        stem = sum(9 * a * b + 4 * b for a, b in itertools.pairwise(chans)) + chans[-1] * w + w
    else:
        stem = 3 * p * p * w
    blocks = v.layers * (12 * w * w + 13 * w)  # attention (4 w^2) + MLP (8 w^2) + norms and biases
    return stem + (n + 2) * w + 4 * w + blocks + w * v.embed_dim + (n + 1) ** 2  # + a patch-attention mask


def _temporal_params(c: STPromptConfig) -> int:
    e = c.vision.embed_dim
    return (c.adapter_layers + 1) * (2 * c.ffn_mult * e * e + 8 * e) + (c.num_classes + 1) * e + 64


def _spatial_params(c: STPromptConfig) -> int:
    queries = len(c.normal_queries) + len(c.abnormal_query_texts()) + c.num_classes
    return (queries + 1) * c.vision.embed_dim


def _mb(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n < 1 << 40 else f"{n:.3g} bytes"


def _dims(dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"
