"""Every node and every tensor of an ONNX file, subgraphs and functions included, read from the wire format.

`walk_onnx(path)` returns a `GraphWalk`: each node (operator, domain, which graph holds it) and each tensor the
file carries anywhere: initializers, sparse initializers (their values and indices), tensor-valued attributes of
any node (a Constant's `value`/`sparse_value`, ConstantOfShape's `value`, TENSOR/TENSORS/SPARSE_TENSOR[S]
attributes), and the same inside every GRAPH/GRAPHS attribute (Loop/Scan bodies, If branches), model-local
functions (their nodes and default attributes) and training graphs, to any depth. Weights are skipped by their
length (no copy); only small numeric tensors (shape operands) are decoded. `stp_edge.bundle.graph_rules` decides
what of this a bundle may hold.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stp_edge.bundle.wire import Malformed, Span, fields, repeated_ints, signed, string, unpack_le

MAX_DEPTH = 16  # subgraphs nested deeper than this are refused as malformed (ONNX's own checker allows 100)
SMALL_VALUES = 64  # numeric tensors of at most this many elements have their values decoded (shape operands)
INT64 = 7
NUMERIC = {1: "f", 6: "i", 7: "q", 11: "d"}  # FLOAT, INT32, INT64, DOUBLE -> struct code of their raw data
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

# Bits per element of each TensorProto.DataType; an unknown type counts as 128 bits (the widest).
ELEMENT_BITS = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 8: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64,
                14: 64, 15: 128, 16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8, 25: 2, 26: 2,
                27: 6, 28: 6}


@dataclass(frozen=True)
class Tensor:
    """One tensor stored in the file.

    Attributes:
        graph: The subgraph that holds it, "" for the main graph ("node 'loop' (Loop) attribute 'body' > ").
        holder: What holds it: "initializer", "sparse initializer (values)", "node 'c' (Constant) attribute
            'value'", ...
        name: Its name (a Constant's output when the tensor itself is unnamed).
        dims: Its shape (for the values of a sparse tensor: the dense shape they stand for).
        data_type: TensorProto.DataType.
        external: The external data file it points at ("" when it is marked external without a location);
            None when its data is inline.
        values: The values of a small numeric (float, double, int32, int64) tensor, else None.
    """

    graph: str
    holder: str
    name: str
    dims: tuple[int, ...]
    data_type: int
    external: str | None = None
    values: tuple[int | float, ...] | None = None

    @property
    def elements(self) -> int:
        """Number of elements of the (dense) tensor."""
        n = 1
        for d in self.dims:
            n *= max(d, 0)
        return n

    @property
    def nbytes(self) -> int:
        """Bytes of the dense tensor in memory."""
        return (self.elements * ELEMENT_BITS.get(self.data_type, 128) + 7) // 8

    def describe(self) -> str:
        """"tensor 'name' (where it is)", for messages."""
        return f"tensor {self.name!r} ({self.graph}{self.holder})"


@dataclass(frozen=True)
class Node:
    """One node: its operator, and the graph that holds it ("" for the main graph)."""

    graph: str
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    graph_attributes: tuple[str, ...] = ()

    def describe(self) -> str:
        """"node 'name' (Op)" or "node 'name' (domain.Op)", prefixed by its subgraph."""
        op = f"{self.domain}.{self.op_type}" if self.domain not in ("", "ai.onnx") else self.op_type
        return f"{self.graph}node {self.name or '(unnamed)'!r} ({op})"


@dataclass
class GraphWalk:
    """What `walk_onnx` found in one file."""

    nodes: list[Node] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    inputs: dict[str, list[int | str]] = field(default_factory=dict)  # the main graph's inputs -> dims
    functions: list[str] = field(default_factory=list)  # model-local functions, "domain.name"
    training_graphs: int = 0

    def constants(self) -> dict[str, Tensor]:
        """Tensor name -> tensor of the main graph's dense initializers and Constant outputs (shape operands)."""
        return {t.name: t for t in self.tensors
                if not t.graph and (t.holder == "initializer" or t.holder.endswith("(Constant) attribute 'value'")
                                    or t.holder.endswith("(Constant) attribute 'value_ints'")
                                    or t.holder.endswith("(Constant) attribute 'value_int'"))}


def walk_onnx(path: str | Path) -> GraphWalk:
    """Walk the ONNX file at `path` (see the module docstring).

    Raises:
        Malformed: The file is not a well-formed ONNX model.
        OSError: It cannot be read.
    """
    with open(path, "rb") as f:
        if not f.seek(0, 2):
            raise Malformed("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _Walker(buf).model()


class _Walker:
    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.out = GraphWalk()

    def model(self) -> GraphWalk:
        buf, graph = self.buf, None
        for f, w, v in fields(buf, 0, len(buf)):
            if w != 2:
                continue
            if f == 7:
                graph = v
            elif f == 25:  # FunctionProto
                self.function(v)
            elif f == 20:  # TrainingInfoProto: initialization (1) and algorithm (2) graphs
                self.out.training_graphs += 1
                for tf, tw, tv in fields(buf, *v):
                    if tf in (1, 2) and tw == 2:
                        self.graph(tv, "training graph > ", 1)
        if graph is None:
            raise Malformed("no graph")
        self.graph(graph, "", 0)
        return self.out

    def function(self, span: Span) -> None:
        name = domain = ""
        nodes, defaults = [], []
        for f, w, v in fields(self.buf, *span):
            if f == 1 and w == 2:
                name = string(self.buf, v)
            elif f == 10 and w == 2:
                domain = string(self.buf, v)
            elif f == 7 and w == 2:
                nodes.append(v)
            elif f == 11 and w == 2:  # attribute_proto: default values of the function's attributes
                defaults.append(v)
        self.out.functions.append(f"{domain}.{name}" if domain else name)
        prefix = f"function {name!r} > "
        for node in nodes:
            self.node(node, prefix, 1)
        for attribute in defaults:
            self.attribute(attribute, Node(prefix, "(defaults)", name, domain, (), ()), 1)

    def graph(self, span: Span, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise Malformed(f"subgraphs nested deeper than {MAX_DEPTH}")
        for f, w, v in fields(self.buf, *span):
            if w != 2:
                continue
            if f == 1:
                self.node(v, prefix, depth)
            elif f == 5:
                self.out.tensors.append(self.tensor(v, prefix, "initializer", None))
            elif f == 15:
                self.sparse(v, prefix, "sparse initializer", None)
            elif f == 11 and depth == 0:
                name, dims = self.value_info(v)
                self.out.inputs[name] = dims

    def node(self, span: Span, prefix: str, depth: int) -> None:
        buf = self.buf
        name = op = domain = ""
        inputs, outputs, attributes = [], [], []
        for f, w, v in fields(buf, *span):
            if w != 2:
                continue
            if f == 1:
                inputs.append(string(buf, v))
            elif f == 2:
                outputs.append(string(buf, v))
            elif f == 3:
                name = string(buf, v)
            elif f == 4:
                op = string(buf, v)
            elif f == 7:
                domain = string(buf, v)
            elif f == 5:
                attributes.append(v)
        node = Node(prefix, name, op, domain, tuple(inputs), tuple(outputs))
        graphs = [a for a in (self.attribute(a, node, depth) for a in attributes) if a]
        self.out.nodes.append(Node(prefix, name, op, domain, tuple(inputs), tuple(outputs), tuple(graphs)))

    def attribute(self, span: Span, node: Node, depth: int) -> str | None:
        """Record the tensors and walk the graphs of one attribute; returns its name if it holds a graph."""
        buf = self.buf
        name, ints = "", []
        tensors, sparse, graphs = [], [], []
        for f, w, v in fields(buf, *span):
            if f == 1 and w == 2:
                name = string(buf, v)
            elif f in (5, 10) and w == 2:
                tensors.append(v)
            elif f in (22, 23) and w == 2:
                sparse.append(v)
            elif f in (6, 11) and w == 2:
                graphs.append(v)
            elif f == 3 and w == 0:
                ints.append(signed(v))
            elif f == 8 and w in (0, 2):
                ints.extend(repeated_ints(buf, w, v))
        holder = f"{node.describe()[len(node.graph):]} attribute {name!r}"
        # A Constant's tensor is named after the node's output (its own name field is usually empty).
        fallback = node.outputs[0] if node.op_type == "Constant" and node.outputs else None
        for t in tensors:
            self.out.tensors.append(self.tensor(t, node.graph, holder, fallback))
        for s in sparse:
            self.sparse(s, node.graph, holder, fallback)
        if node.op_type == "Constant" and name in ("value_int", "value_ints") and fallback:
            dims = (len(ints),) if name == "value_ints" else ()
            self.out.tensors.append(Tensor(node.graph, holder, fallback, dims, INT64, values=tuple(ints)))
        for g in graphs:
            self.graph(g, f"{node.graph}{holder} > ", depth + 1)
        return name if graphs else None

    def tensor(self, span: Span, graph: str, holder: str, fallback: str | None) -> Tensor:
        """A TensorProto: name, dims, type, external location; data skipped unless a small numeric tensor."""
        buf = self.buf
        name, dims, dtype, location, external, raw = "", [], 0, "", False, None
        typed: list[int | float] = []
        for f, w, v in fields(buf, *span):
            if f == 1 and w in (0, 2):
                dims.extend(repeated_ints(buf, w, v))
            elif f == 2 and w == 0:
                dtype = v
            elif f == 8 and w == 2:
                name = string(buf, v)
            elif f == 9 and w == 2:
                raw = v
            elif f in (5, 7) and w in (0, 2):  # int32_data / int64_data
                typed.extend(repeated_ints(buf, w, v))
            elif (f, w) in ((4, 2), (4, 5), (10, 2), (10, 1)):  # float_data / double_data, packed or not
                typed.extend(unpack_le(buf, v, "f" if f == 4 else "d"))
            elif f == 14 and w == 0:
                external = external or v == EXTERNAL
            elif f == 13 and w == 2:  # external_data: key/value entries, "location" names the file
                external = True
                key, value = self.entry(v)
                location = value if key == "location" else location
        t = Tensor(graph, holder, name or fallback or "(unnamed)", tuple(dims), dtype,
                   location if external else None)
        if external or dtype not in NUMERIC or t.elements > SMALL_VALUES:
            return t
        values = typed if raw is None else unpack_le(buf, raw, NUMERIC[dtype])
        return Tensor(graph, holder, t.name, t.dims, dtype, None, tuple(values))

    def sparse(self, span: Span, graph: str, holder: str, fallback: str | None) -> None:
        """A SparseTensorProto: its values (counted as the dense tensor they stand for) and its indices."""
        parts, dims = [], []
        for f, w, v in fields(self.buf, *span):
            if f in (1, 2) and w == 2:
                parts.append((f, v))
            elif f == 3 and w in (0, 2):
                dims.extend(repeated_ints(self.buf, w, v))
        for f, v in parts:
            t = self.tensor(v, graph, f"{holder} ({'values' if f == 1 else 'indices'})", fallback)
            self.out.tensors.append(Tensor(graph, t.holder, t.name, tuple(dims) if f == 1 else t.dims,
                                           t.data_type, t.external))

    def entry(self, span: Span) -> tuple[str, str]:
        key = value = ""
        for f, w, v in fields(self.buf, *span):
            if f == 1 and w == 2:
                key = string(self.buf, v)
            elif f == 2 and w == 2:
                value = string(self.buf, v)
        return key, value

    def value_info(self, span: Span) -> tuple[str, list[int | str]]:
        """A ValueInfoProto's name and tensor dims (a size, or a symbolic name / "?" for a dynamic axis)."""
        buf = self.buf
        name, dims = "", []
        for f, w, v in fields(buf, *span):
            if f == 1 and w == 2:
                name = string(buf, v)
            elif f == 2 and w == 2:
                for tf, tw, tv in fields(buf, *v):
                    if tf == 1 and tw == 2:
                        for ef, ew, ev in fields(buf, *tv):
                            if ef == 2 and ew == 2:
                                dims = [self.dim(dv) for df, dw, dv in fields(buf, *ev) if df == 1 and dw == 2]
        return name, dims

    def dim(self, span: Span) -> int | str:
        value: int | str = "?"
        for f, w, v in fields(self.buf, *span):
            if f == 1 and w == 0:
                value = signed(v)
            elif f == 2 and w == 2:
                value = string(self.buf, v) or "?"
        return value
