"""The preprocessing a bundle declares (manifest `preprocess`), and which of it the runtime implements.

The golden function is CLIP's (docs/DESIGN section 3): PIL antialiased bicubic resize of the short side, centre
crop, RGB, /255, per-channel mean/std, CHW. Both preprocessors (the CPU twin `stp_edge.preprocess` and the CUDA
kernel) take `size`, `mean` and `std` from the spec; `interpolation`, `crop`, `input` and `layout` name the one
function they implement, so a bundle declaring another is refused when it loads instead of running with CLIP's.
NumPy only (no OpenCV): the bundle package imports this wherever bundles are read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stp_edge.errors import UsageError

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessSpec:
        """The spec of a manifest's `preprocess` object (schema-checked: every key, three means and stds)."""
        return cls(size=int(d["size"]), interpolation=str(d["interpolation"]), crop=str(d["crop"]),
                   mean=tuple(float(x) for x in d["mean"]), std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
                   input=str(d["input"]), layout=str(d["layout"]))

    def unsupported(self) -> list[str]:
        """One line per field the preprocessors cannot honour: field, what they implement, what this spec says."""
        out = [f"preprocess.{k} {getattr(self, k)!r} is not implemented (this runtime implements {v!r})"
               for k, v in IMPLEMENTED.items() if getattr(self, k) != v]
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            scale, bias = normalisation(self)
        if not (np.isfinite(scale).all() and np.isfinite(bias).all()):
            out.append(f"preprocess.std {list(self.std)} with mean {list(self.mean)} overflows float32 "
                       f"(1/(255 std) and mean/std must be finite)")
        return out


# The fields the preprocessors implement one way only, and that way (docs/bundle-format.md, "preprocess").
IMPLEMENTED = {"interpolation": "bicubic-antialias-pil", "crop": "center", "input": "bgr8", "layout": "NCHW"}


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


def normalisation(spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, bias), float32 [3] RGB, with x_norm = x_uint8 * scale + bias = (x/255 - mean) / std.

    The CPU twin and the CUDA kernel both take these, in this operation order, so they agree to the last bit.
    """
    std = np.asarray(spec.std, np.float32)
    return np.float32(1.0) / (np.float32(255.0) * std), -np.asarray(spec.mean, np.float32) / std


