"""Visual output: an overlay video (heatmap, boxes, score bar, label) and score-timeline plots.

The anomaly map is the spatial stream's region grid (R x R scores in [0, 1]). It describes the part of the frame
the regions come from: the center square for CLIP preprocessing, the whole frame for region crops of the whole frame
(region extent "frame"); pass `map_roi=stp_edge.bundle.preprocessing.region_roi(bundle.preprocess_spec, (h, w))` to
place it there (`stp-edge run --overlay` does), or leave the default to stretch it over the whole frame. With a
`map_roi` the overlay also marks its corners (`outline_roi`; `dim=True` also darkens the outside, `dim_outside`):
no region score, map or box can come from outside it (README, "What the model sees").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from stp_edge._deps import require
from stp_edge.errors import UsageError
from stp_edge.results import SnippetResult, frame_scores
from stp_edge.video import VideoError, VideoWriter


def heatmap_overlay(frame_bgr: np.ndarray, anomaly_map: np.ndarray,
                    roi: tuple[int, int, int, int] | None = None, max_alpha: float = 0.6) -> np.ndarray:
    """Blend a JET-coloured anomaly map over `frame_bgr`; opacity grows with the map value (0 leaves pixels).

    Args:
        frame_bgr: uint8 [H,W,3].
        anomaly_map: [R,R] (or [R,C]) scores, expected in [0, 1]; values are clipped.
        roi: frame region (x1, y1, x2, y2) the map covers; default the whole frame.
        max_alpha: opacity where the map is 1.

    Returns:
        A new uint8 frame.
    """
    amap = np.asarray(anomaly_map, np.float32)
    if amap.ndim != 2 or not np.all(np.isfinite(amap)):
        raise UsageError(f"anomaly_map must be a finite 2-D array, got shape {amap.shape}")
    H, W = frame_bgr.shape[:2]
    x1, y1, x2, y2 = roi if roi is not None else (0, 0, W, H)
    if not (0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H):
        raise UsageError(f"map roi {roi} is not inside the {W}x{H} frame")
    up = np.clip(cv2.resize(amap, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR), 0, 1)
    # JET up to 7/8 of its range, so the hottest value is pure red rather than JET's dark maroon end.
    colour = cv2.applyColorMap((up * 223).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    alpha = (max_alpha * up)[..., None]
    out = frame_bgr.copy()
    region = out[y1:y2, x1:x2].astype(np.float32)
    out[y1:y2, x1:x2] = np.clip(region * (1 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)
    return out


def dim_outside(frame_bgr: np.ndarray, roi: tuple[int, int, int, int], keep: float = 0.45) -> np.ndarray:
    """A copy of `frame_bgr` darkened to `keep` of its brightness outside `roi` (x1, y1, x2, y2), the roi outlined.

    Shows where no region score, map or box can come from: the sides of a wide frame that the centre crop drops
    (the frame embedding sees them under the `pad` and `tiles` frame policies; the regions never do).
    """
    H, W = frame_bgr.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in roi)
    out = frame_bgr.copy()
    if (x1, y1, x2, y2) == (0, 0, W, H):
        return out
    mask = np.ones((H, W), bool)
    mask[max(0, y1):max(0, y2), max(0, x1):max(0, x2)] = False
    out[mask] = (out[mask].astype(np.float32) * keep + 0.5).astype(np.uint8)
    return outline_roi(out, roi)


def outline_roi(frame_bgr: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
    """A copy of `frame_bgr` with the corners of the analysed part `roi` (x1, y1, x2, y2) marked (none: whole frame).

    Amber corner brackets just inside the roi, an eighth of its short side long: they show the boundary and hide
    little of the picture (the sides outside keep their pixels).
    """
    H, W = frame_bgr.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in roi)
    out = frame_bgr.copy()
    if (x1, y1, x2, y2) == (0, 0, W, H):
        return out
    arm, thick, amber = max(3, min(x2 - x1, y2 - y1) // 8), max(1, W // 320), (0, 215, 255)
    for x, dx in ((x1, 1), (x2 - 1, -1)):
        for y, dy in ((y1, 1), (y2 - 1, -1)):
            cv2.line(out, (x, y), (x + dx * arm, y), amber, thick)
            cv2.line(out, (x, y), (x, y + dy * arm), amber, thick)
    return out


def _score_colour(score: float, threshold: float) -> tuple[int, int, int]:
    return (40, 40, 230) if score >= threshold else (60, 200, 60)


def draw_hud(frame_bgr: np.ndarray, score: float | None, class_name: str | None, threshold: float = 0.5,
             boxes: Sequence[Sequence[float]] | None = None) -> np.ndarray:
    """Draw boxes, a score bar along the bottom with a threshold tick, and "class score" text; returns a copy.

    `score=None` marks a frame no result covers (a run stopped before its snippet was scored): an empty bar and
    "no result".
    """
    out = frame_bgr.copy()
    H, W = out.shape[:2]
    if score is None:
        score, class_name, empty = 0.0, None, True
    else:
        empty = False
    col = _score_colour(score, threshold)
    for b in boxes or ():
        x1, y1, x2, y2 = (round(float(v)) for v in b)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 0, 255), max(2, W // 240))
    bar_h = max(4, H // 30)
    y0 = H - bar_h - 2
    cv2.rectangle(out, (2, y0), (W - 3, H - 3), (30, 30, 30), -1)
    fill = round((W - 6) * float(np.clip(score, 0, 1)))
    if fill > 0:
        cv2.rectangle(out, (3, y0 + 1), (3 + fill, H - 4), col, -1)
    tx = 3 + round((W - 6) * float(np.clip(threshold, 0, 1)))
    cv2.line(out, (tx, y0 - 3), (tx, H - 2), (255, 255, 255), 1)
    text = "no result" if empty else f"{class_name} {score:.2f}" if class_name else f"{score:.2f}"
    scale = max(0.35, H / 600)
    thick = max(1, round(scale * 1.5))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.rectangle(out, (2, 2), (8 + tw, 8 + th + base), (20, 20, 20), -1)  # dark plate keeps text legible
    text_col = (80, 80, 255) if score >= threshold else (255, 255, 255)
    cv2.putText(out, text, (5, 5 + th), cv2.FONT_HERSHEY_SIMPLEX, scale, text_col, thick, cv2.LINE_AA)
    return out


class OverlayWriter:
    """Writes annotated frames to a video file through `stp_edge.video.VideoWriter`; a context manager.

    Example:
        with OverlayWriter("out.mp4", fps=25, size=(640, 360)) as w:
            w.write(frame, score, "fighting", anomaly_map, boxes)
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], *, threshold: float = 0.5,
                 map_roi: tuple[int, int, int, int] | None = None, partial: str | Path | None = None,
                 dim: bool = False) -> None:
        """Open the writer.

        Args:
            path: output file; the extension picks the codec (`stp_edge.video.default_codec`: .mp4 -> H.264
                where PyAV with libx264 is installed, else mp4v; .avi -> MJPG). Written under a temporary name
                until `close()`.
            fps: frame rate.
            size: (width, height) of the written video (even, see `VideoWriter`); frames of another size are
                resized (boxes and the map roi, given in input-frame pixels, are scaled with them).
            threshold: score threshold drawn on the score bar; scores at or above it are drawn red.
            map_roi: input-frame region (x1, y1, x2, y2) the anomaly map covers; default the whole frame. The
                roi's corners are marked (`outline_roi`).
            partial: the temporary name (see `VideoWriter`); default a hidden random one.
            dim: also darken the frame outside `map_roi` (`dim_outside`), where no region score or box can come
                from.

        Raises:
            VideoError: the file cannot be written with these settings.
        """
        self._video = VideoWriter(path, fps, size, partial=partial)
        self.path, self.size = self._video.path, self._video.size
        self.threshold, self.map_roi, self.dim = threshold, map_roi, dim

    @property
    def frames_written(self) -> int:
        """Frames appended so far."""
        return self._video.frames_written

    @property
    def codec_name(self) -> str:
        """The codec the file is written with, in words ("H.264")."""
        return self._video.codec_name

    def write(self, frame_bgr: np.ndarray, score: float | None, class_name: str | None = None,
              anomaly_map: np.ndarray | None = None,
              boxes: Sequence[Sequence[float]] | None = None) -> None:
        """Annotate one frame and append it.

        Args:
            frame_bgr: uint8 [H,W,3] BGR frame.
            score: anomaly score in [0, 1]; None for a frame no result covers.
            class_name: predicted class to print, or None.
            anomaly_map: [R,R] region scores in [0, 1], or None for no heatmap.
            boxes: (x1, y1, x2, y2) boxes in input-frame pixels, or None.

        Raises:
            VideoError: the writer is closed, the frame is not uint8 [H,W,3], or OpenCV refused it.
        """
        ndim, dtype = getattr(frame_bgr, "ndim", None), getattr(frame_bgr, "dtype", None)
        if ndim != 3 or frame_bgr.shape[2] != 3 or dtype != np.uint8:
            raise VideoError(f"{self.path}: frame {self.frames_written}: expected uint8 [H,W,3] BGR, got "
                             f"{dtype} {getattr(frame_bgr, 'shape', None)}")
        H, W = frame_bgr.shape[:2]
        sx, sy = self.size[0] / W, self.size[1] / H
        frame = frame_bgr if (W, H) == self.size else cv2.resize(frame_bgr, self.size,
                                                                 interpolation=cv2.INTER_AREA)
        scale = np.array([sx, sy, sx, sy])
        roi = None
        if self.map_roi is not None:
            roi = tuple(int(v) for v in np.round(np.asarray(self.map_roi, float) * scale))
        if anomaly_map is not None:
            frame = heatmap_overlay(frame, anomaly_map, roi)  # type: ignore[arg-type]
        if roi is not None:
            frame = (dim_outside if self.dim else outline_roi)(frame, roi)  # type: ignore[arg-type]
        scaled = [np.asarray(b, float) * scale for b in boxes] if boxes else None
        self._video.write(draw_hud(frame, None if score is None else float(score), class_name, self.threshold, scaled))

    def close(self) -> None:
        """Finish the file and rename it into place (safe to call twice); see `VideoWriter.close`."""
        self._video.close()

    def abort(self) -> None:
        """Drop what was written; the final path is left as it was."""
        self._video.abort()

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._video.__exit__(exc_type, exc, tb)


def plot_timeline(path: str | Path, frame_scores: Sequence[float] | np.ndarray, fps: float,
                  gt_ranges: Sequence[tuple[int, int]] | None = None, threshold: float = 0.5,
                  title: str | None = None) -> Path:
    """Save a PNG of the per-frame anomaly score over time.

    Args:
        path: output PNG.
        frame_scores: one score per frame.
        fps: frame rate, for the time axis in seconds.
        gt_ranges: ground-truth anomalous frame ranges [start, end), shaded.
        threshold: drawn as a dashed horizontal line.
        title: plot title.

    Returns:
        The written path.
    """
    matplotlib = require("matplotlib", "timeline plots")
    matplotlib.use("Agg", force=False)
    plt = require("matplotlib.pyplot", "timeline plots")
    scores = np.asarray(frame_scores, float).ravel()
    if scores.size == 0 or fps <= 0:
        raise UsageError(f"need at least one score and fps > 0, got {scores.size} scores, fps={fps}")
    t = np.arange(scores.size) / fps
    fig, ax = plt.subplots(figsize=(8, 2.6), dpi=100)
    try:
        for k, (s, e) in enumerate(gt_ranges or ()):
            ax.axvspan(s / fps, e / fps, color="tab:red", alpha=0.18, lw=0,
                       label="ground-truth anomaly" if k == 0 else None)
        ax.plot(t, scores, color="tab:blue", lw=1.4, label="anomaly score")
        ax.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:g}")
        ax.set_xlim(0, max(t[-1], 1 / fps))
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("score")
        if title:
            ax.set_title(title)
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def plot_scores(results: Sequence[SnippetResult], out: str | Path, *, fps: float | None = None,
                threshold: float = 0.5) -> Path:
    """PNG of one stream's per-frame score over time, from its results (`plot_timeline` of `frame_scores`)."""
    return plot_timeline(out, frame_scores(results), fps or 25.0, threshold=threshold)
