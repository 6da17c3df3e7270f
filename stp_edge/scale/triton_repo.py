"""A Triton Inference Server model repository from a bundle (`stp-edge export --triton REPO`).

One Triton model per graph and backend: `encoder`, `temporal`, `spatial` run the bundle's ONNX graphs on
Triton's onnxruntime backend; each TensorRT engine set of the bundle adds `<graph>_<engine set>` models on the
tensorrt backend (`encoder_nvidia-h100-80gb-hbm3-fp16`, ...; a plan runs only on a Triton whose TensorRT
version and GPU match the manifest's engine entry). `config.pbtxt` comes from the manifest: tensor names from
`graphs`, dims from the graph contract (`stp_edge.bundle.contract.expected_io`) with -1 for a dynamic axis,
the leading batch axis B as Triton's `max_batch_size` with dynamic batching (snippets of many cameras share
one run), and instance groups (KIND_CPU or KIND_GPU). The repository is written to a temporary directory and
renamed into place, so a reader never sees half of one.

    REPO/encoder/config.pbtxt        REPO/encoder/1/model.onnx
    REPO/temporal/...                REPO/encoder_<engine set>/1/model.plan
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stp_edge.bundle import GRAPH_NAMES, Bundle, ChecksumError, EngineInfo, sha256_file
from stp_edge.bundle.contract import expected_io
from stp_edge.errors import UsageError
from stp_edge.outputs import replace_dir

BACKEND_NAMES = ("onnxruntime", "tensorrt")
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# Every graph of a bundle takes and returns float32 (the fp16 export casts inside), see docs/architecture.md.
GRAPH_DTYPE = "TYPE_FP32"


@dataclass(frozen=True)
class TritonTensor:
    """One input or output of a Triton model: dims without the batch axis, -1 where dynamic."""

    name: str
    dims: tuple[int, ...]
    data_type: str = GRAPH_DTYPE


@dataclass(frozen=True)
class TritonModel:
    """What one `config.pbtxt` says, plus the graph file it serves."""

    name: str
    backend: str                       # "onnxruntime" or "tensorrt"
    source: Path                       # the bundle's .onnx or .plan
    max_batch_size: int
    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    instance_kind: str                 # KIND_CPU / KIND_GPU
    instances: int
    queue_delay_us: int

    @property
    def platform(self) -> str:
        """Triton's platform string for the backend."""
        return {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[self.backend]

    @property
    def filename(self) -> str:
        """The model file's name inside the version directory."""
        return {"onnxruntime": "model.onnx", "tensorrt": "model.plan"}[self.backend]


def contract_shapes(bundle: Bundle) -> dict[str, dict[str, tuple[int | str, ...]]]:
    """Tensor name -> shape of each graph, "B"/"T" for the dynamic axes.

    Shapes follow from the model config and the bundle's `region_features` (`stp_edge.bundle.contract.expected_io`,
    the table of docs/architecture.md); a manifest that records shapes (name -> dims) overrides them.
    """
    shapes: dict[str, dict[str, tuple[int | str, ...]]] = {
        g: {name: tuple(dims) for kind in ("inputs", "outputs") for name, dims in io[kind].items()}
        for g, io in expected_io(bundle.config, bundle.region_features).items()}
    for g, meta in bundle.manifest["graphs"].items():
        for key in ("inputs", "outputs"):
            if isinstance(meta.get(key), Mapping):
                shapes.setdefault(g, {}).update({name: tuple(d) for name, d in meta[key].items()})
    return shapes


def graph_tensors(bundle: Bundle, graph: str) -> tuple[tuple[TritonTensor, ...], tuple[TritonTensor, ...]]:
    """(inputs, outputs) of `graph` in the manifest's order, batch axis dropped, other dynamic axes -1.

    Raises:
        ValueError: A tensor's first axis is not the batch axis B (Triton batches along it).
    """
    meta = bundle.manifest["graphs"][graph]
    shapes = contract_shapes(bundle)[graph]

    def tensor(name: str) -> TritonTensor:
        if name not in shapes:
            raise UsageError(f"bundle {bundle.path}: graph {graph!r} tensor {name!r} is not in the graph contract")
        shape = shapes[name]
        if not shape or shape[0] != "B":
            raise UsageError(f"bundle {bundle.path}: {graph}.{name} has shape {shape}; its first axis must be "
                             f"the batch axis B")
        return TritonTensor(name, tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape[1:]))

    return tuple(tensor(n) for n in meta["inputs"]), tuple(tensor(n) for n in meta["outputs"])


def engine_max_batch(engine: EngineInfo, graph: str) -> int | None:
    """The largest batch the engine set's optimisation profile allows for `graph` (None if not recorded)."""
    profiles = (engine.build_flags.get("profiles") or {}).get(graph) or {}
    maxima = [int(p[2][0]) for p in profiles.values() if len(p) == 3 and p[2]]
    return min(maxima) if maxima else None


def encoder_images_per_snippet(bundle: Bundle) -> int:
    """Images one snippet sends through the encoder.

    Sampled frames x views (`PreprocessSpec.views`, the region windows of region extent "frame" included) x R2
    crops of each when the bundle cuts crops on the host.
    """
    crops = bundle.config.num_regions if bundle.host_crops else 1
    return bundle.config.frames_per_snippet * bundle.preprocess_spec.views * crops


def triton_models(bundle: Bundle, *, backends: Sequence[str] = ("onnxruntime",), max_batch: int = 16,
                  instances: int = 1, onnx_device: str = "cpu", queue_delay_us: int = 500) -> list[TritonModel]:
    """The Triton models a repository of `bundle` holds (pure: nothing is written).

    Args:
        bundle: The loaded bundle.
        backends: "onnxruntime" and/or "tensorrt" (the latter adds one model per graph and engine set).
        max_batch: Largest batch of snippets Triton forms (a TensorRT model is capped at its profile's maximum).
            The encoder's is max_batch times the images one snippet sends through it
            (`encoder_images_per_snippet`: sampled frames x the frame policy's views, incl. whole-frame region
            windows, x R2 for a bundle that cuts crops on the host).
        instances: Model instances per device.
        onnx_device: "cpu" or "gpu": where the onnxruntime models' instances run (plans always on the GPU).
        queue_delay_us: How long Triton may hold a request to batch it with others.
    """
    unknown = [b for b in backends if b not in BACKEND_NAMES]
    if unknown or not backends:
        raise UsageError(f"backends must be a non-empty subset of {BACKEND_NAMES}, got {list(backends)}")
    if onnx_device not in INSTANCE_KINDS:
        raise UsageError(f"onnx_device must be one of {sorted(INSTANCE_KINDS)}, got {onnx_device!r}")
    if max_batch < 1 or instances < 1 or queue_delay_us < 0:
        raise UsageError(f"need max_batch >= 1, instances >= 1, queue_delay_us >= 0; got {max_batch}, "
                         f"{instances}, {queue_delay_us}")
    if "tensorrt" in backends and not bundle.engines:
        raise UsageError(f"bundle {bundle.path} has no TensorRT engines; build them with `stp-edge build-engines` "
                         f"or leave out the tensorrt backend")
    crops = max_batch * encoder_images_per_snippet(bundle)
    models = []
    for g in GRAPH_NAMES:
        inputs, outputs = graph_tensors(bundle, g)
        batch = crops if g == "encoder" else max_batch
        common = dict(inputs=inputs, outputs=outputs, instances=instances, queue_delay_us=queue_delay_us)
        if "onnxruntime" in backends:
            models.append(TritonModel(g, "onnxruntime", bundle.graph_path(g), batch,
                                      instance_kind=INSTANCE_KINDS[onnx_device], **common))
        if "tensorrt" in backends:
            for engine in bundle.engines:
                cap = engine_max_batch(engine, g)
                models.append(TritonModel(f"{g}_{Path(engine.dir).name}", "tensorrt", bundle.plan_path(engine, g),
                                          min(batch, cap) if cap else batch, instance_kind="KIND_GPU", **common))
    return models


def render_config(model: TritonModel) -> str:
    """The model's `config.pbtxt` (protobuf text format of Triton's ModelConfig)."""

    def tensors(key: str, items: Sequence[TritonTensor]) -> list[str]:
        body = ",\n".join(f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n'
                          f'    dims: [ {", ".join(str(d) for d in t.dims)} ]\n  }}' for t in items)
        return [f"{key} [\n{body}\n]"]

    lines = [f'name: "{model.name}"', f'platform: "{model.platform}"', f'backend: "{model.backend}"',
             f"max_batch_size: {model.max_batch_size}", f'default_model_filename: "{model.filename}"',
             *tensors("input", model.inputs), *tensors("output", model.outputs),
             f"instance_group [\n  {{\n    count: {model.instances}\n    kind: {model.instance_kind}\n  }}\n]"]
    if model.max_batch_size > 0:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {model.queue_delay_us}\n}}")
    return "\n".join(lines) + "\n"


def _place(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (graphs are large and never edited in place), or copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _place_checked(bundle: Bundle, src: Path, dst: Path) -> None:
    """`_place` a graph or plan, then check the placed file has the sha256 `Bundle.load` checked.

    Raises:
        ChecksumError: The bundle's file changed after the bundle was loaded (the repository is not written).
    """
    _place(src, dst)
    rel = src.relative_to(bundle.path).as_posix()
    expected, got = bundle.manifest["files"][rel], sha256_file(dst)
    if got != expected:
        raise ChecksumError(f"bundle {bundle.path}: {rel} changed after the bundle was loaded (expected sha256 "
                            f"{expected}, got {got}); write the repository again")


def write_triton_repository(bundle: str | os.PathLike | Bundle, repo_dir: str | os.PathLike, *,
                            backends: Sequence[str] = ("onnxruntime",), max_batch: int = 16, instances: int = 1,
                            onnx_device: str = "cpu", queue_delay_us: int = 500) -> Path:
    """Write a Triton model repository for `bundle` into `repo_dir`, atomically (temp dir + rename).

    An existing `repo_dir` is replaced as a whole. Arguments after `repo_dir` are those of `triton_models`.
    A path is loaded with `Bundle.load` (every check `stp-edge run` makes, so a bundle `run` refuses is refused
    here with the same error, before anything is written); each placed file is checked against its sha256.

    Returns:
        The repository path.

    Raises:
        BundleError: The bundle is refused, or a file changed after it was loaded.
    """
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    models = triton_models(bundle, backends=backends, max_batch=max_batch, instances=instances,
                           onnx_device=onnx_device, queue_delay_us=queue_delay_us)
    repo = Path(repo_dir).absolute()
    repo.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo.name}.partial-", dir=repo.parent))
    try:
        for m in models:
            version = tmp / m.name / "1"
            version.mkdir(parents=True)
            _place_checked(bundle, m.source, version / m.filename)
            (tmp / m.name / "config.pbtxt").write_text(render_config(m), encoding="utf-8")
        replace_dir(tmp, repo)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return repo


def parse_config(text: str) -> dict[str, Any]:
    """Read back a `config.pbtxt` written by `render_config` (the protobuf text-format subset it uses).

    Messages become dicts, repeated fields lists (a field seen twice, or written `key [ ... ]`), enums strings.
    """
    tokens = _tokens(text)
    value, _ = _message(tokens, 0, end=None)
    return value


def _tokens(text: str) -> list[str]:
    return re.findall(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', text)


def _scalar(tok: str) -> Any:
    if tok.startswith('"'):
        return tok[1:-1]
    try:
        return int(tok)
    except ValueError:
        return tok


def _message(tokens: list[str], pos: int, end: str | None) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while pos < len(tokens) and tokens[pos] != end:
        key = tokens[pos]
        pos += 1
        if tokens[pos] == ":":
            pos += 1
        value, pos = _value(tokens, pos)
        if key in out or isinstance(value, list):
            prev = out.get(key, [])
            out[key] = (prev if isinstance(prev, list) else [prev]) + (value if isinstance(value, list) else [value])
        else:
            out[key] = value
    return out, pos + 1


def _value(tokens: list[str], pos: int) -> tuple[Any, int]:
    tok = tokens[pos]
    if tok == "{":
        return _message(tokens, pos + 1, end="}")
    if tok == "[":
        items, pos = [], pos + 1
        while tokens[pos] != "]":
            item, pos = _value(tokens, pos)
            items.append(item)
            if tokens[pos] == ",":
                pos += 1
        return items, pos + 1
    return _scalar(tok), pos + 1
