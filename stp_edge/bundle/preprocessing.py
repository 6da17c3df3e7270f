"""The preprocessing a bundle declares (manifest `preprocess`), and which of it the runtime implements.

The golden function is CLIP's (docs/DESIGN section 3): PIL antialiased bicubic resize of the short side, centre
crop, RGB, /255, per-channel mean/std, CHW. Both preprocessors (the CPU twin `stp_edge.preprocess` and the CUDA
kernel) take `size`, `mean` and `std` from the spec; `interpolation`, `crop`, `input` and `layout` name the one
function they implement, so a bundle declaring another is refused when it loads instead of running with CLIP's.
NumPy only (no OpenCV): the bundle package imports this wherever bundles are read.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stp_edge.errors import UsageError
from stp_edge.geometry import crop_square

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessSpec:
    """What the encoder expects; written into a bundle manifest under `preprocess`.

    Both preprocessors (the CPU twin and the CUDA kernel) honour `size`, `mean` and `std`; `interpolation`,
    `crop`, `input` and `layout` name the one function they implement (`IMPLEMENTED`), and a bundle declaring
    another is refused when it loads (`unsupported`).
    """

    size: int = 224
    interpolation: str = "bicubic-antialias-pil"
    crop: str = "center"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    input: str = "bgr8"
    layout: str = "NCHW"
    # (width, height) of a fixed resize that ignores the aspect ratio, before the centre crop (VadCLIP's features:
    # 340x256); None: CLIP's resize of the short side to `size`.
    resize: tuple[int, int] | None = None
    # Mirror the crop left-right (VadCLIP's test view: the mirrored centre crop).
    mirror: bool = False
    # What the frame embedding sees (FRAME_POLICIES): "center" (CLIP's and VadCLIP's centre crop), "pad" (the
    # whole frame, letterboxed) or "tiles" (centre and both sides, embeddings averaged). Manifests without the
    # field mean "center".
    frame_policy: str = "center"
    # Region extent (docs/bundle-format.md, "preprocess"): 0 (manifests without the field): the regions come from
    # the centre view (patch tokens, or crops of it); R > 0: the region extent is the whole frame, and the
    # preprocessors add the R*R windows tiling it (`stp_edge.geometry.frame_windows`) as views after the frame
    # views, each resized to SxS, whose frame embeddings are the region features (config.region_extent "frame").
    region_grid: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["resize"] = None if self.resize is None else list(self.resize)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessSpec:
        """The spec of a manifest's `preprocess` object (schema-checked: every key, three means and stds)."""
        return cls(size=int(d["size"]), interpolation=str(d["interpolation"]), crop=str(d["crop"]),
                   mean=tuple(float(x) for x in d["mean"]), std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
                   input=str(d["input"]), layout=str(d["layout"]),
                   resize=None if d.get("resize") is None else (int(d["resize"][0]), int(d["resize"][1])),
                   mirror=bool(d.get("mirror", False)), frame_policy=str(d.get("frame_policy", "center")),
                   region_grid=int(d.get("region_grid", 0)))

    @classmethod
    def preset(cls, name: str, size: int = 224, frame_policy: str = "center") -> PreprocessSpec:
        """A named spec: "clip" (CLIP's own) or "vadclip" (resize 340x256, centre crop, as VadCLIP's features).

        VadCLIP's test features are of the mirrored centre crop (`NAME__5.npy`), its training ones of ten views;
        the runtime sees one view, so the preset is the plain centre crop (`dataclasses.replace(spec, mirror=True)`
        gives the mirrored one).
        """
        if name == "clip":
            return cls(size=int(size), frame_policy=frame_policy)
        if name == "vadclip":
            return cls(size=int(size), resize=VADCLIP_RESIZE, frame_policy=frame_policy)
        raise UsageError(f"unknown preprocessing {name!r}; expected 'clip' or 'vadclip'")

    @property
    def views(self) -> int:
        """Images the encoder sees per frame: 1 (center), 2 (pad: the letterbox, and the centre crop), 3 (tiles).

        Plus R*R region windows when the region extent is the whole frame (`region_grid` R).
        """
        return (FRAME_VIEWS[self.frame_policy] if self.frame_policy in FRAME_VIEWS else 1) + self.region_grid ** 2

    @property
    def frame_views(self) -> int:
        """Images per frame of the frame policy alone (the region windows follow them)."""
        return self.views - self.region_grid ** 2

    @property
    def region_extent(self) -> str:
        """"frame" when region windows tile the whole frame (`region_grid` > 0), else "center"."""
        return "frame" if self.region_grid else "center"

    def unsupported(self) -> list[str]:
        """One line per field the preprocessors cannot honour: field, what they implement, what this spec says."""
        out = [f"preprocess.{k} {getattr(self, k)!r} is not implemented (this runtime implements {v!r})"
               for k, v in IMPLEMENTED.items() if getattr(self, k) != v]
        out += self._geometry_problems()
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            scale, bias = normalisation(self)
        if not (np.isfinite(scale).all() and np.isfinite(bias).all()):
            out.append(f"preprocess.std {list(self.std)} with mean {list(self.mean)} overflows float32 "
                       f"(1/(255 std) and mean/std must be finite)")
        return out


    def _geometry_problems(self) -> list[str]:
        """The resize / frame policy combinations the preprocessors cannot run."""
        out = []
        if self.frame_policy not in FRAME_VIEWS:
            out.append(f"preprocess.frame_policy {self.frame_policy!r} is not implemented (this runtime implements "
                       f"{sorted(FRAME_VIEWS)})")
        if not 0 <= self.region_grid <= MAX_REGION_GRID:
            out.append(f"preprocess.region_grid {self.region_grid} is outside [0, {MAX_REGION_GRID}]")
        if self.resize is not None:
            w, h = self.resize
            if min(w, h) < self.size:
                out.append(f"preprocess.resize {list(self.resize)} is smaller than the crop size {self.size}")
            if self.frame_policy == "pad":
                out.append("preprocess.frame_policy 'pad' letterboxes the frame itself; it takes no resize")
        return out


# The fields the preprocessors implement one way only, and that way (docs/bundle-format.md, "preprocess").
IMPLEMENTED = {"interpolation": "bicubic-antialias-pil", "crop": "center", "input": "bgr8", "layout": "NCHW"}

# Frame policies and the images each gives the encoder per frame (`PreprocessSpec.views`).
FRAME_VIEWS = {"center": 1, "pad": 2, "tiles": 3}
FRAME_POLICIES = tuple(FRAME_VIEWS)
# Largest region grid whose windows the preprocessors cut (R*R views per frame).
MAX_REGION_GRID = 16
# VadCLIP's feature extraction resize (width, height), as the issue describes its released features.
VADCLIP_RESIZE = (340, 256)


def preprocess_spec(image_size: int, spec: PreprocessSpec | None) -> PreprocessSpec:
    """The spec a preprocessor of `image_size` runs: `spec` (checked), or CLIP's at that size when None.

    Raises:
        UsageError: `spec` is for another size or asks for what the preprocessors do not implement.
    """
    if spec is None:
        return PreprocessSpec(size=int(image_size))
    if spec.size != image_size:
        raise UsageError(f"preprocess spec size {spec.size} differs from image_size {image_size}")
    problems = spec.unsupported()
    if problems:
        raise UsageError("; ".join(problems))
    return spec


def view_roles(spec: PreprocessSpec) -> tuple[tuple[int, ...], int]:
    """(views averaged into the frame embedding, view whose regions are used) of a frame policy's views.

    The views (`stp_edge.preprocess.CropResizePlan.views`): center (centre crop); pad (letterbox, centre crop);
    tiles (start, centre, end). Without region windows (`region_grid` 0) regions come from the centre crop, the
    square the spatial stream's maps and boxes are laid on; with them, from the windows that follow these views.
    """
    return {"center": ((0,), 0), "pad": ((0,), 1), "tiles": ((0, 1, 2), 1)}[spec.frame_policy]


Box = tuple[float, float, float, float]


def analysed_boxes(spec: PreprocessSpec, frame_hw: tuple[int, int]) -> dict[str, list[Box]]:
    """The parts of an H x W frame the model sees, in frame pixels (x0, y0, x1, y1), per output.

    "regions": what region scores, anomaly maps and boxes can come from (the centre crop, every policy; the whole
    frame when region windows tile it, `region_grid` > 0); "frame": what the frame embedding sees (the centre
    crop; the whole frame letterboxed; the three tiles).
    """
    h, w = frame_hw
    if spec.resize is None:  # CLIP: short side -> S; the crop is the centre square of side min(H, W)
        x0, y0, cw = crop_square(frame_hw)
        ch = cw
    else:  # a fixed resize to (rw, rh), crop S x S: a (W S / rw) x (H S / rh) rectangle of the frame
        cw, ch = w * spec.size / spec.resize[0], h * spec.size / spec.resize[1]
        x0, y0 = (w - cw) / 2, (h - ch) / 2
    centre = (x0, y0, x0 + cw, y0 + ch)
    frame = {"center": [centre], "pad": [(0.0, 0.0, float(w), float(h))]}.get(spec.frame_policy)
    if frame is None:  # tiles: start, centre, end along the long side
        frame = ([(0.0, y0, cw, y0 + ch), centre, (w - cw, y0, float(w), y0 + ch)] if w >= h else
                 [(x0, 0.0, x0 + cw, ch), centre, (x0, h - ch, x0 + cw, float(h))])
    return {"regions": [(0.0, 0.0, float(w), float(h))] if spec.region_grid else [centre], "frame": frame}


def region_roi(spec: PreprocessSpec, frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The part of the frame region scores, maps and boxes come from, in whole pixels (x1, y1, x2, y2).

    The centre crop (`stp_edge.geometry.crop_square_pixels` for CLIP's), or the whole frame with region windows;
    the overlay marks it (`stp_edge.visualize.outline_roi`).
    """
    x0, y0, x1, y1 = analysed_boxes(spec, frame_hw)["regions"][0]
    left, top = math.floor(x0), math.floor(y0)
    return left, top, left + int(x1 - x0), top + int(y1 - y0)


def covered_fraction(boxes: list[Box], frame_hw: tuple[int, int]) -> float:
    """Share of the frame's area inside the union of `boxes` (boxes that share rows or columns, as views do)."""
    h, w = frame_hw
    xs = sorted({b[0] for b in boxes} | {b[2] for b in boxes})
    area = 0.0
    for a, b in itertools.pairwise(xs):  # vertical strips: the union of the boxes' spans in each
        spans = sorted((y0, y1) for x0, y0, x1, y1 in boxes if x0 <= a and x1 >= b)
        covered, end = 0.0, -1.0
        for y0, y1 in spans:
            covered += max(0.0, y1 - max(y0, end))
            end = max(end, y1)
        area += (b - a) * covered
    return area / (h * w)


def preprocess_text(spec: PreprocessSpec) -> str:
    """One line for `stp-edge info`: "CLIP (short side -> 224, centre crop 224), frame policy center"."""
    resize = f"short side -> {spec.size}" if spec.resize is None else f"resize {spec.resize[0]}x{spec.resize[1]}"
    name = "CLIP" if spec.resize is None else ("VadCLIP" if tuple(spec.resize) == VADCLIP_RESIZE else "fixed")
    mirror = ", mirrored" if spec.mirror else ""
    regions = (f", region extent frame ({spec.region_grid}x{spec.region_grid} crops of the whole frame)"
               if spec.region_grid else "")
    return (f"{name} ({resize}, centre crop {spec.size}{mirror}), frame policy {spec.frame_policy}{regions} "
            f"({spec.views} image{'s' if spec.views > 1 else ''} per frame)")


def describe_coverage(spec: PreprocessSpec, frame_hw: tuple[int, int] | None = None) -> str:
    """"frame analysed: centre 576x576 of 768x576 (75%)", for `stp-edge info` (no frame: examples) and `run`."""
    examples = ((576, 768), (1080, 1920))
    if spec.region_grid:  # regions, maps and boxes: the whole frame, whatever its size
        sizes = [frame_hw] if frame_hw is not None else examples
        frame = {"center": "the centre crop", "pad": "the whole frame letterboxed"}.get(spec.frame_policy,
                                                                                         "3 tiles, averaged")
        seen = ", ".join(f"{covered_fraction(analysed_boxes(spec, hw)['frame'], hw):.0%} of {hw[1]}x{hw[0]}"
                         for hw in sizes)
        whole = "the whole frame" if frame_hw is None else f"the whole {frame_hw[1]}x{frame_hw[0]} frame"
        return (f"frame analysed: regions, maps and boxes: {whole} (100%, {spec.region_grid}x{spec.region_grid} "
                f"overlapping crops); frame embedding: {frame} ({seen})")
    if frame_hw is None:
        return "; ".join(describe_coverage(spec, hw).removeprefix("frame analysed: ") if i else
                         describe_coverage(spec, hw) for i, hw in enumerate(examples))
    h, w = frame_hw
    boxes = analysed_boxes(spec, frame_hw)
    x0, y0, x1, y1 = boxes["regions"][0]
    regions = f"centre {x1 - x0:.0f}x{y1 - y0:.0f} of {w}x{h} ({covered_fraction(boxes['regions'], frame_hw):.0%})"
    if spec.frame_policy == "center":
        return f"frame analysed: {regions}"
    how = "letterboxed" if spec.frame_policy == "pad" else "3 tiles, embeddings averaged"
    return (f"frame analysed: {covered_fraction(boxes['frame'], frame_hw):.0%} of {w}x{h} by the frame embedding "
            f"({how}), regions and boxes from the {regions}")


def normalisation(spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, bias), float32 [3] RGB, with x_norm = x_uint8 * scale + bias = (x/255 - mean) / std.

    The CPU twin and the CUDA kernel both take these, in this operation order, so they agree to the last bit.
    """
    std = np.asarray(spec.std, np.float32)
    return np.float32(1.0) / (np.float32(255.0) * std), -np.asarray(spec.mean, np.float32) / std


