"""PyTorch graph modules -> checked, simplified ONNX files."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from stp_edge.model.graphs import GraphSpec

DEFAULT_OPSET = 18  # the torch.onnx dynamo exporter's native opset; TensorRT 10.x parses it


def _dynamic_shapes(spec: GraphSpec, inputs: dict[str, torch.Tensor]) -> dict[str, dict[int, object]]:
    dims: dict[str, object] = {}
    out: dict[str, dict[int, object]] = {}
    for name in inputs:
        axes = {}
        for axis, sym in spec.dynamic.get(name, {}).items():
            if sym not in dims:
                # T may be 1 (a one-snippet video); torch.export specialises size-1 dims unless told otherwise.
                dims[sym] = torch.export.Dim.DYNAMIC
            axes[axis] = dims[sym]
        out[name] = axes
    return out


def export_onnx(module: torch.nn.Module, inputs: dict[str, torch.Tensor], spec: GraphSpec, path: Path,
                *, opset: int = DEFAULT_OPSET, simplify: bool = True) -> Path:
    """Export `module` to `path` with the spec's names and dynamic axes, run onnx.checker, then simplify."""
    import onnx

    path = Path(path)
    args = tuple(inputs[n] for n in spec.inputs)
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            module, args, input_names=list(spec.inputs), output_names=list(spec.outputs),
            dynamic_shapes=_dynamic_shapes(spec, inputs), opset_version=opset, dynamo=True,
            optimize=True, verbose=False,
        )
    model = program.model_proto
    model = _rename_dims(model, spec)
    onnx.checker.check_model(model, full_check=True)
    if simplify:
        model = simplify_onnx(model)
        onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _rename_dims(model, spec: GraphSpec):
    """Give dynamic axes the spec's symbolic names (B, T) so tools and engines show readable shapes."""
    for value in [*model.graph.input, *model.graph.output]:
        for axis, sym in spec.dynamic.get(value.name, {}).items():
            dim = value.type.tensor_type.shape.dim[axis]
            dim.ClearField("dim_value")
            dim.dim_param = sym
    return model


def simplify_onnx(model):
    """Constant folding and redundant-node removal with onnxsim (dynamic axes are kept)."""
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified graph against the original")
    return simplified
