"""The plain PyTorch pipeline a researcher writes on the same weights: what the runtime is compared with.

Per snippet: PIL preprocessing of the sampled (middle) frame, eager `STPrompt.encode` and region features, the
temporal stream recomputed on the last 2c+1 snippets, the spatial stream. `stp-edge bench` and the benchmarks
use this one definition, fed from a video it decodes itself with cv2 (every frame) or with frames in memory.
torch is imported only when it runs.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from stp_edge.bench.reference import pil_pipeline

STEPS = ("preprocess", "encoder", "temporal", "spatial")


class TorchPipeline:
    """The researcher's loop, one snippet per call, with the ms of each stage.

    Args:
        model: An `STPrompt` (eval mode).
        video: A file to decode snippet by snippet with `__call__`; None when frames are given to `step`.
    """

    def __init__(self, model, video: str | os.PathLike | None = None) -> None:
        import cv2

        self.model = model
        self.cap = cv2.VideoCapture(str(video)) if video is not None else None
        self.feats: list[Any] = []
        self.regions: list[Any] = []
        self.times: dict[str, list[float]] = {k: [] for k in ("decode", *STEPS, "total")}

    def step(self, frames: Sequence[np.ndarray]) -> dict[str, float]:
        """Run one snippet of BGR frames; ms of each of `STEPS` and their "total" (not recorded in `times`)."""
        import torch

        cfg = self.model.cfg
        with torch.no_grad():
            t0 = time.perf_counter()
            images = torch.from_numpy(pil_pipeline([frames[len(frames) // 2]], cfg.vision.image_size))
            t1 = time.perf_counter()
            fe, pe = self.model.encode(images)
            rg = self.model.regions(images, pe)
            t2 = time.perf_counter()
            self.feats.append(fe[0])
            self.regions.append(rg[0])
            lo = max(0, len(self.feats) - (2 * cfg.context + 1))
            self.model.temporal(torch.stack(self.feats[lo:])[None], torch.stack(self.regions[lo:])[None])
            t3 = time.perf_counter()
            self.model.spatial(rg)
            t4 = time.perf_counter()
        marks = (t0, t1, t2, t3, t4)
        ms = {k: (marks[i + 1] - marks[i]) * 1e3 for i, k in enumerate(STEPS)}
        ms["total"] = (t4 - t0) * 1e3
        return ms

    def __call__(self) -> bool:
        """Decode the video's next snippet and run it, recording every stage; False once no full snippet is left."""
        L = self.model.cfg.snippet_len
        t0 = time.perf_counter()
        clip = [f for ok, f in (self.cap.read() for _ in range(L)) if ok]
        if len(clip) < L:
            return False
        decode_ms = (time.perf_counter() - t0) * 1e3
        ms = self.step(clip)
        ms["total"] += decode_ms
        for k, v in {"decode": decode_ms, **ms}.items():
            self.times[k].append(v)
        return True

    def summary(self) -> dict[str, Any]:
        """Snippets run, end-to-end ms per snippet, median ms per stage, torch version and threads."""
        import torch

        if self.cap is not None:
            self.cap.release()
        total = self.times["total"]
        return {"snippets": len(total), "end_to_end_ms_per_snippet": float(np.sum(total)) / max(1, len(total)),
                "stages": {k: float(np.median(v)) if v else float("nan") for k, v in self.times.items()
                           if k != "total"},
                "torch": torch.__version__, "threads": torch.get_num_threads()}


def load_torch_pipeline(bundle, video: str | os.PathLike, *, notes: list[str],
                        checkpoint: str | os.PathLike | None = None) -> TorchPipeline | None:
    """The researcher's pipeline on the bundle's own weights, rebuilt from its recorded source.

    Args:
        bundle: A loaded `Bundle`.
        video: The file the pipeline decodes.
        notes: Receives the reason when the pipeline cannot run (then None is returned).
        checkpoint: The checkpoint a checkpoint-exported bundle came from (paths named inside a bundle are never
            opened).
    """
    if importlib.util.find_spec("torch") is None:
        notes.append("plain PyTorch baseline skipped: torch is not installed (pip install 'stp-edge[export]')")
        return None
    source = dict(bundle.manifest.get("source") or {})
    if checkpoint:
        source = {"kind": "checkpoint", "checkpoint": str(checkpoint)}
    if not source or (source.get("kind") == "checkpoint" and not checkpoint) or source.get("clip_weights"):
        notes.append("plain PyTorch baseline skipped: the bundle records no rebuildable source (pass checkpoint=; "
                     "paths named inside a bundle are not opened)")
        return None
    from stp_edge.model.sources import ModelSource, build_model, weights_fingerprint

    model = build_model(ModelSource.from_manifest(source))
    want = (bundle.manifest.get("source") or {}).get("weights_sha256")
    if want and weights_fingerprint(model) != want:
        notes.append("plain PyTorch baseline skipped: the rebuilt weights differ from the bundle's")
        return None
    return TorchPipeline(model, video)
