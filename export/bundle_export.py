"""PyTorch STPrompt -> bundle directory (manifest.json + encoder/temporal/spatial ONNX), written atomically.

Everything is written into a hidden temporary directory beside the destination and renamed into place at the
end, so an interrupted or failed export leaves nothing half-written.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import torch

from stp_edge.bundle.preprocessing import FRAME_POLICIES
from stp_edge.config import BOX_RULES, pretrained_overrides
from stp_edge.errors import OutputExistsError, UsageError
from stp_edge.export.onnx_export import DEFAULT_OPSET, export_onnx
from stp_edge.model.graphs import build_graphs, graph_specs, random_inputs, to_precision
from stp_edge.model.sources import QUERY_FIELDS, ModelSource, build_model, demo_checkpoint_dir, weights_fingerprint
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
    region_features: str | None = None,
    int8_form: str | None = None,
    box_rule: str | None = None,
    frame_policy: str = "center",
    region_extent: str | None = None,
) -> Path:
    """Export one model to the bundle directory `out` and return its path.

    Exactly one of `checkpoint`, `demo` or `random_config` chooses the model. `precision="int8"` quantizes
    the encoder (heads stay fp32) on frames sampled from the videos in `calib` (at most `calib_frames`,
    default `stp_edge.export.quantize.DEFAULT_MAX_FRAMES`); see `stp_edge.export.quantize`. `int8_form`:
    "static" (Q/DQ, calibrated; the default), "dynamic" (MatMulInteger, no calibration: the fast form on CPUs
    without VNNI) or "auto" (the one fast on this CPU); recorded as exporter.quantization.form.

    `box_rule` (one of `stp_edge.config.BOX_RULES`) replaces the model config's rule for turning anomaly maps into
    boxes; it changes no graph, so it can be chosen for a trained model here.

    `frame_policy` (manifest `preprocess.frame_policy`): what the frame embedding sees, "center" (CLIP's centre
    crop), "pad" (the whole frame letterboxed) or "tiles" (centre and both sides, averaged); README, "What part of
    the frame is analysed".

    `region_extent` (crops mode): "frame", crops tiling the whole frame, or "center", crops of the centre square;
    None: the model config's (`config.region_extent`: "frame" for the ViT-B/16 preset around pretrained CLIP weights,
    `pretrained_overrides`; "center" for configs without the field). A trained model whose SA2 region term read
    features of one extent keeps it.

    `region_features` None (default): "encoder" (the encoder graph returns region_emb), or "host" for region extent
    "frame" (the preprocessing cuts the crops of the whole frame as views, the encoder graph encodes each image and
    returns patch_emb). "host" for region extent "center" writes the deprecated layout (no `region_features` key in
    the manifest) that stp-edge 0.3.0 stops reading (docs/bundle-format.md, "Compatibility").
    """
    source = _source(checkpoint, clip_weights, demo, random_config, seed, config_overrides)
    if region_features is not None:
        graph_specs(region_features)  # refuses an unknown layout before any work
    if frame_policy not in FRAME_POLICIES:
        raise UsageError(f"frame_policy must be one of {FRAME_POLICIES}, got {frame_policy!r}")
    if box_rule is not None and box_rule not in BOX_RULES:
        raise UsageError(f"box_rule must be one of {BOX_RULES}, got {box_rule!r}")
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    from stp_edge.export.quantize import check_int8_form_request, model_snippet_len

    # Fail before minutes of export: the options agree, the frame cap, every video opens, a full snippet to sample.
    int8_form = check_int8_form_request(precision, int8_form, calib, calib_frames, model_snippet_len(
        checkpoint=checkpoint, demo=demo, random_config=random_config, overrides=config_overrides))
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass overwrite=True (CLI: --force) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp creates 0700; the finished bundle should be readable like any directory
    try:
        _write_bundle(tmp, source, precision, opset, simplify, progress, calib, calib_frames, region_features,
                      int8_form=int8_form, box_rule=box_rule, frame_policy=frame_policy, region_extent=region_extent)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _source(checkpoint, clip_weights, demo, random_config, seed, overrides) -> ModelSource:
    chosen = [bool(checkpoint), bool(demo), bool(random_config)]
    if sum(chosen) != 1:
        raise UsageError("choose exactly one model: a checkpoint, the demo model, or a random config")
    trained = dict(overrides or {})  # a trained model takes only new spatial queries (training-free)
    if (checkpoint or demo) and set(trained) - set(QUERY_FIELDS):
        raise UsageError(f"config_overrides {sorted(set(trained) - set(QUERY_FIELDS))} apply to a random model only; "
                         f"a trained model's config is its checkpoint's, except {list(QUERY_FIELDS)}")
    if checkpoint:
        return ModelSource("checkpoint", checkpoint=str(Path(checkpoint).resolve()),
                           clip_weights=str(Path(clip_weights).resolve()) if clip_weights else None, overrides=trained)
    if demo:
        return ModelSource("demo", overrides=trained)
    # Around pretrained CLIP weights the ViT-B/16 preset defaults to crops (`pretrained_overrides`), recorded here.
    overrides = pretrained_overrides(random_config, overrides) if clip_weights else dict(overrides or {})
    return ModelSource("random", config=random_config, seed=seed, overrides=overrides,
                       clip_weights=str(Path(clip_weights).resolve()) if clip_weights else None)


def _write_bundle(tmp: Path, source: ModelSource, precision: str, opset: int, simplify: bool, progress: bool,
                  calib=None, calib_frames: int | None = None, regions: str | None = None,
                  int8_form: str | None = None, box_rule: str | None = None, frame_policy: str = "center",
                  region_extent: str | None = None):
    from tqdm.auto import tqdm

    from stp_edge._version import __version__
    from stp_edge.bundle import sha256_file, write_manifest

    steps = tqdm(total=6 if precision == "int8" else 5, desc="export", unit="step", disable=not progress)
    steps.set_postfix_str("building model")
    model = build_model(source)
    fingerprint = weights_fingerprint(model)
    extent = export_region_extent(model.cfg, region_extent, trained=source.kind != "random")
    regions = region_layout(extent, regions)
    steps.update()
    calib_set = None
    if precision == "int8" and int8_form != "dynamic":  # sampled first: a video without a full snippet fails now
        from stp_edge.export.quantize import DEFAULT_MAX_FRAMES, calibration_set

        steps.set_postfix_str("calibration frames")
        # The encoder is calibrated on the images the runtime will feed it: every view of the bundle's
        # preprocessing (frame policy, whole-frame region windows, the preset's resize and normalisation).
        calib_spec = preprocess_for(dataclasses.replace(model.cfg, region_extent=extent), frame_policy)
        calib_set = calibration_set(calib, model.cfg, max_frames=calib_frames or DEFAULT_MAX_FRAMES, spec=calib_spec)
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
    # The box rule is runtime-only (no graph depends on it): chosen here for any model, recorded in the manifest;
    # so is the region extent (it changes where the crops are cut, not the graphs' weights).
    cfg = dataclasses.replace(model.cfg, box_rule=box_rule or model.cfg.box_rule, region_extent=extent)
    quantization = {}
    if precision == "int8":
        steps.set_postfix_str("int8 calibration")
        if int8_form == "dynamic":
            quantization = _quantize_encoder_dynamic(tmp)
        else:
            quantization = _quantize_encoder(tmp, calib_set)
            quantization["quantization"].setdefault("form", "static")
        steps.update()
    steps.set_postfix_str("manifest")
    # Provenance, so `verify` can rebuild the exact torch reference.
    source_meta = {**source.describe(), "weights_sha256": fingerprint}
    if source.kind in ("checkpoint", "demo"):
        ckpt = Path(source.checkpoint) if source.kind == "checkpoint" else demo_checkpoint_dir()
        source_meta["checkpoint_sha256"] = sha256_file(ckpt / "model.safetensors")
        source_meta.update(training_record(ckpt))
    write_manifest(
        tmp, config=cfg, files=[f"{n}.onnx" for n in specs], precision=precision, opset=opset,
        graphs=graph_meta, preprocess=preprocess_for(cfg, frame_policy).to_dict(),
        extra={"source": source_meta,
               "graph_precision": {"encoder": precision, "temporal": "fp32", "spatial": "fp32"},
               "exporter": {"stp_edge_version": __version__, "torch_version": torch.__version__,
                            **quantization}},
        # Deprecated "host" bundles have no key, as every reader expects; whole-frame crops say "host".
        regions=None if regions == "host" and extent != "frame" else regions,
    )
    steps.update()
    steps.close()


def preprocess_for(cfg, frame_policy: str = "center"):
    """The manifest's preprocessing spec for a model: the one its training features were made with.

    "clip": CLIP's own. "vadclip" (a model trained on VadCLIP's released features): resize to 340x256, centre crop,
    mirrored, as the view VadCLIP tests on (`NAME__5.npy`, the mirrored centre crop). Region extent "frame" adds
    the R x R windows of the whole frame (`region_grid` R).
    """
    import dataclasses

    from stp_edge.preprocess import PreprocessSpec

    spec = PreprocessSpec.preset(cfg.preprocess, size=cfg.vision.image_size, frame_policy=frame_policy)
    spec = dataclasses.replace(spec, region_grid=cfg.region_grid if cfg.region_extent == "frame" else 0)
    return dataclasses.replace(spec, mirror=True) if cfg.preprocess == "vadclip" else spec


def export_region_extent(cfg, requested: str | None, *, trained: bool) -> str:
    """The region extent a bundle gets: `requested`, or the model config's; refused where it cannot hold.

    Tokens mode has no crops to place. A trained model whose SA2 region term read region features keeps the extent
    they were made with (its temporal stream would see other features); a frame-only model (region_term false) may
    take either, its spatial stream being training-free.
    """
    from stp_edge.config import REGION_EXTENTS

    if requested is None:
        return cfg.region_extent
    if requested not in REGION_EXTENTS:
        raise UsageError(f"region_extent must be one of {REGION_EXTENTS}, got {requested!r}")
    if requested == "frame" and cfg.region_mode != "crops":
        raise UsageError(f"region_extent 'frame' places crops, but this model's region_mode is {cfg.region_mode!r}; "
                         "export a crops-mode model (config region_mode 'crops')")
    if trained and cfg.region_term and requested != cfg.region_extent:
        raise UsageError(f"this trained model's SA2 region term read region features of extent "
                         f"{cfg.region_extent!r}; exporting it with {requested!r} would feed it other features: "
                         "extract features with that extent and train again")
    return requested


def region_layout(extent: str, regions: str | None) -> str:
    """The bundle's `region_features`: "host" for crops of the whole frame, else the requested one ("encoder").

    Crops of the whole frame are cut by the preprocessing, and the encoder graph encodes each image.
    """
    if extent == "frame":
        if regions not in (None, "host"):
            raise UsageError(f"region_extent 'frame' needs region_features 'host' (the preprocessing cuts the crops "
                             f"of the whole frame and the encoder graph encodes each image), got {regions!r}")
        return "host"
    return regions or "encoder"


def training_record(checkpoint: Path) -> dict:
    """{"training": ...}: how a checkpoint was trained (its training.json from `stp-edge train`), or {}."""
    import json

    from stp_edge.model.train import TRAINING_RECORD

    path = checkpoint / TRAINING_RECORD
    return {"training": json.loads(path.read_text(encoding="utf-8"))} if path.is_file() else {}


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


def _quantize_encoder_dynamic(tmp: Path) -> dict:
    """Replace tmp/encoder.onnx (fp32) by its dynamic INT8 twin (no calibration); returns {"quantization": ...}."""
    from stp_edge.export.quantize import quantize_encoder_dynamic

    fp32 = tmp / "encoder.fp32.onnx"
    os.replace(tmp / "encoder.onnx", fp32)
    try:
        return {"quantization": quantize_encoder_dynamic(fp32, tmp / "encoder.onnx")}
    finally:
        fp32.unlink(missing_ok=True)


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


