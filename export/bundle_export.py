"""PyTorch STPrompt -> bundle directory (manifest.json + encoder/temporal/spatial ONNX), written atomically.

Everything is written into a hidden temporary directory beside the destination and renamed into place at the
end, so an interrupted or failed export leaves nothing half-written.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch

from stp_edge.errors import OutputExistsError, UsageError
from stp_edge.export.onnx_export import DEFAULT_OPSET, export_onnx
from stp_edge.model.graphs import build_graphs, graph_specs, random_inputs, to_precision
from stp_edge.model.sources import ModelSource, build_model, demo_checkpoint_dir, weights_fingerprint
from stp_edge.outputs import replace_dir

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.float32}  # int8: Q/DQ from fp32


def export_bundle(
    out: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    clip_weights: str | os.PathLike | None = None,
    demo: bool = False,
    random_config: str | None = None,
    seed: int = 0,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    config_overrides: dict | None = None,
    calib: str | os.PathLike | None = None,
    calib_frames: int | None = None,
    region_features: str = "encoder",
) -> Path:
    """Export one model to the bundle directory `out` and return its path.

    Exactly one of `checkpoint`, `demo` or `random_config` chooses the model. `precision="int8"` quantizes
    the encoder (heads stay fp32) on frames sampled from the videos in `calib` (at most `calib_frames`,
    default `stp_edge.export.quantize.DEFAULT_MAX_FRAMES`); see `stp_edge.export.quantize`.

    `region_features="encoder"` (default): the encoder graph returns region_emb. "host" writes the deprecated
    layout (encoder returns patch_emb, no `region_features` key in the manifest) that stp-edge 0.3.0 stops
    reading (docs/bundle-format.md, "Compatibility"); until then the runtime runs both.
    """
    source = _source(checkpoint, clip_weights, demo, random_config, seed, config_overrides)
    graph_specs(region_features)  # refuses an unknown layout before any work
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    from stp_edge.export.quantize import check_int8_request, model_snippet_len

    # Fail before minutes of export: the options agree, the frame cap, every video opens, a full snippet to sample.
    check_int8_request(precision, calib, calib_frames, model_snippet_len(
        checkpoint=checkpoint, demo=demo, random_config=random_config, overrides=config_overrides))
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass overwrite=True (CLI: --force) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp creates 0700; the finished bundle should be readable like any directory
    try:
        _write_bundle(tmp, source, precision, opset, simplify, progress, calib, calib_frames, region_features)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _source(checkpoint, clip_weights, demo, random_config, seed, overrides) -> ModelSource:
    chosen = [bool(checkpoint), bool(demo), bool(random_config)]
    if sum(chosen) != 1:
        raise UsageError("choose exactly one model: a checkpoint, the demo model, or a random config")
    if checkpoint:
        return ModelSource("checkpoint", checkpoint=str(Path(checkpoint).resolve()),
                           clip_weights=str(Path(clip_weights).resolve()) if clip_weights else None)
    if demo:
        return ModelSource("demo")
    return ModelSource("random", config=random_config, seed=seed, overrides=dict(overrides or {}),
                       clip_weights=str(Path(clip_weights).resolve()) if clip_weights else None)


def _write_bundle(tmp: Path, source: ModelSource, precision: str, opset: int, simplify: bool, progress: bool,
                  calib=None, calib_frames: int | None = None, regions: str = "encoder"):
    from tqdm.auto import tqdm

    from stp_edge._version import __version__
    from stp_edge.bundle import sha256_file, write_manifest
    from stp_edge.preprocess import PreprocessSpec

    steps = tqdm(total=6 if calib is not None else 5, desc="export", unit="step", disable=not progress)
    steps.set_postfix_str("building model")
    model = build_model(source)
    fingerprint = weights_fingerprint(model)
    steps.update()
    calib_set = None
    if precision == "int8":  # sampled before the graphs are exported: a video without a full snippet fails now
        from stp_edge.export.quantize import DEFAULT_MAX_FRAMES, calibration_set

        steps.set_postfix_str("calibration frames")
        calib_set = calibration_set(calib, model.cfg, max_frames=calib_frames or DEFAULT_MAX_FRAMES)
    dtype = PRECISIONS[precision]
    # Tracing inputs: float32 at the graph boundary whatever the precision; T = 5 (any T >= 2 traces the same graph).
    inputs = {g: {k: torch.from_numpy(v) for k, v in feeds.items()}
              for g, feeds in random_inputs(model.cfg, seed=0, snippets=5).items()}
    graphs = build_graphs(model, regions=regions)
    if dtype != torch.float32:
        # Reduced precision is for the encoder, where the FLOPs are. The temporal and spatial heads cost
        # microseconds and scale cosines by 1/temperature (~14x), which turns fp16 rounding into ~1.5% error
        # in class probabilities, so they stay float32 (measured: tests/test_export.py, ViT-B/16 fp16).
        graphs["encoder"] = build_graphs(to_precision(copy.deepcopy(model), dtype), dtype, regions)["encoder"]
    graph_meta = {}
    specs = graph_specs(regions)
    for name, spec in specs.items():
        steps.set_postfix_str(f"{name}.onnx")
        export_onnx(graphs[name], inputs[name], spec, tmp / f"{name}.onnx", opset=opset, simplify=simplify)
        graph_meta[name] = {"file": f"{name}.onnx", **_graph_shapes(model.cfg, spec, regions)}
        steps.update()
    cfg = model.cfg
    quantization = {}
    if precision == "int8":
        steps.set_postfix_str("int8 calibration")
        quantization = _quantize_encoder(tmp, calib_set)
        steps.update()
    steps.set_postfix_str("manifest")
    # Provenance, so `verify` can rebuild the exact torch reference.
    source_meta = {**source.describe(), "weights_sha256": fingerprint}
    if source.kind in ("checkpoint", "demo"):
        ckpt = Path(source.checkpoint) if source.kind == "checkpoint" else demo_checkpoint_dir()
        source_meta["checkpoint_sha256"] = sha256_file(ckpt / "model.safetensors")
    write_manifest(
        tmp, config=cfg, files=[f"{n}.onnx" for n in specs], precision=precision, opset=opset,
        graphs=graph_meta, preprocess=PreprocessSpec(size=cfg.vision.image_size).to_dict(),
        extra={"source": source_meta,
               "graph_precision": {"encoder": precision, "temporal": "fp32", "spatial": "fp32"},
               "exporter": {"stp_edge_version": __version__, "torch_version": torch.__version__,
                            **quantization}},
        regions=None if regions == "host" else regions,  # "host" bundles have no key, as every reader expects
    )
    steps.update()
    steps.close()


def _quantize_encoder(tmp: Path, calib_set) -> dict:
    """Replace tmp/encoder.onnx (fp32) by its Q/DQ INT8 twin calibrated on `calib_set`; returns {"quantization": ...}.

    The settings and the calibration set's fingerprint go under the manifest's `exporter` (an open object in
    docs/manifest.schema.json; the top level admits no new key).
    """
    from stp_edge.export.quantize import quantize_encoder

    fp32 = tmp / "encoder.fp32.onnx"
    os.replace(tmp / "encoder.onnx", fp32)
    try:
        settings = quantize_encoder(fp32, tmp / "encoder.onnx", calib_set.images)
    finally:
        fp32.unlink(missing_ok=True)
    return {"quantization": {**settings, "calibration": calib_set.fingerprint}}


def _graph_shapes(cfg, spec, regions: str = "encoder") -> dict[str, dict[str, list]]:
    """{"inputs": {name: shape}, "outputs": {...}} of one graph; dynamic axes carry their symbolic names.

    The shapes come from the runtime's contract (`expected_io`), so the manifest, the config and the traced graph
    agree by construction; the spec's names and dynamic axes must match it, or the export is refused.
    """
    from stp_edge.bundle import expected_io

    io = expected_io(cfg, regions)[spec.name]
    for kind, names in (("inputs", spec.inputs), ("outputs", spec.outputs)):
        if list(io[kind]) != list(names):
            raise UsageError(f"graph {spec.name!r} {kind} {list(names)} differ from the bundle contract "
                             f"{list(io[kind])}")
        for name in names:
            dynamic = spec.dynamic.get(name, {})
            if {a: d for a, d in enumerate(io[kind][name]) if isinstance(d, str)} != dynamic:
                raise UsageError(f"graph {spec.name!r} tensor {name!r}: dynamic axes {dynamic} differ from the "
                                 f"bundle contract {io[kind][name]}")
    return io


