"""TorchRunner: the PyTorch reference behind the same Runner interface (imports torch; export extra)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from stp_edge._deps import require
from stp_edge.backends.base import Runner, TensorSpec
from stp_edge.backends.calls import CallLimits
from stp_edge.errors import UsageError


class TorchRunner(Runner):
    """Runs one of the exported graph modules (`stp_edge.model.graphs`) eagerly in PyTorch.

    Args:
        module: An EncoderGraph / TemporalGraph / SpatialGraph (float32 boundary).
        graph: Its name ("encoder", "temporal" or "spatial"), which fixes the input/output names.
        regions: The bundle's `region_features` layout ("encoder": the encoder returns region_emb; "host": it
            returns patch_emb, as a whole-frame bundle's encoder, whose regions are images of their own).
        device: torch device string.
        name: Runner name used in messages.
        limits: Call deadline (`CallLimits`).
    """

    def __init__(self, module: Any, graph: str, *, regions: str = "encoder", device: str = "cpu",
                 name: str | None = None, limits: CallLimits | None = None) -> None:
        super().__init__(name or f"torch:{graph}", limits=limits)
        from stp_edge.model.graphs import graph_specs

        self.module = module
        self.spec = graph_specs(regions)[graph]
        self.device = device
        self._torch = None

    @classmethod
    def from_bundle(cls, bundle: Any, graph: str, *, device: str = "cpu") -> TorchRunner:
        """Rebuild the torch reference of a bundle from the source its manifest records, in the bundle's layout.

        A whole-frame bundle's encoder returns patch_emb (its regions are the window images the preprocessor
        cuts), so its torch encoder must not also encode R*R crops of every image only to have them discarded.
        """
        from stp_edge.model.graphs import build_graphs
        from stp_edge.model.sources import ModelSource, build_model

        source = bundle.manifest.get("source")
        if not source:
            raise UsageError(f"bundle {bundle.path} records no model source; the torch backend cannot rebuild it")
        model = build_model(ModelSource.from_manifest(source))
        regions = bundle.region_features
        return cls(build_graphs(model, regions=regions)[graph], graph, regions=regions, device=device)

    def activate_impl(self) -> None:
        self._torch = require("torch", "the torch backend")
        self.module.to(self.device).eval()

    def deactivate_impl(self) -> None:
        self._torch = None

    def input_specs_impl(self) -> dict[str, TensorSpec]:
        cfg = self.module.model.cfg
        s, e, r2 = cfg.vision.image_size, cfg.vision.embed_dim, cfg.num_regions
        shapes = {"images": (-1, 3, s, s), "frame_emb": (-1, -1, e), "region_emb": (-1, -1, r2, e)}
        if self.spec.name == "spatial":
            shapes["region_emb"] = (-1, r2, e)
        return {k: TensorSpec(k, np.dtype(np.float32), shapes[k]) for k in self.spec.inputs}

    def output_names_impl(self) -> list[str]:
        return list(self.spec.outputs)

    def infer_impl(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(feeds[k])).to(self.device) for k in self.spec.inputs]
        with torch.no_grad():
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return {k: v.detach().cpu().numpy() for k, v in zip(self.spec.outputs, out, strict=True)}
