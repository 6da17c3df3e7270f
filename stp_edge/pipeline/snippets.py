"""Stage 1, snippets: cutting a stream's frames into snippets of `snippet_len` frames and sampling them.

In: frames (arrays, or `LazyFrame`s: `EncodedFrame`s, PyAV's `DecodedFrame`s and `SkippedFrame`s, whose pixels
are made only for the frames a snippet samples). Out: one `Snippet` per `snippet_len` frames, holding copies of its
sampled frames (and a partial one at the end of the stream).

Which frames a snippet samples (`SAMPLINGS`): "center" takes the evenly spaced offsets of `sample_offsets` (the
middle frame for one frame per snippet; what the model was trained on); "keyframe" takes the snippet's first
keyframe (a lazy frame whose `key` is True), so a decoder that decodes keyframes only decodes every frame the model
reads; "auto" is "keyframe" where the source says its keyframes fall at one position of every snippet
(`choose_sampling`), else "center".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stp_edge.errors import UsageError
from stp_edge.frames import DeviceNV12Frame, FrameError, LazyFrame

SAMPLINGS = ("center", "keyframe", "auto")
"""The sampling options: the frame(s) each snippet samples (see the module docstring)."""


def check_sampling(sampling: Any) -> str:
    """`sampling` if it is one of `SAMPLINGS`, else a UsageError naming the option."""
    if sampling not in SAMPLINGS:
        raise UsageError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    return str(sampling)


def choose_sampling(sampling: str, *, snippet_len: int = 16, frames_per_snippet: int = 1,
                    keyframe_interval: int | None = None, keyframes_only: bool = False) -> tuple[str, str]:
    """The sampling a stream runs under ("center" or "keyframe") for the option `sampling`, and why (one line).

    Args:
        sampling: One of `SAMPLINGS`.
        snippet_len: Frames per snippet.
        frames_per_snippet: Frames the model reads per snippet; keyframe sampling reads one.
        keyframe_interval: The source's keyframe interval where it is regular and known
            (`VideoSource.keyframe_interval`), else None. Dividing `snippet_len`, keyframes fall at one position
            of every snippet: "auto" samples them.
        keyframes_only: The source decodes keyframes only (its other frames have no pixels): keyframe sampling
            is the only one possible.

    Raises:
        UsageError: `sampling` is not one of `SAMPLINGS`, or "keyframe" is asked of a model that reads several
            frames per snippet, or "center" of a source that decodes keyframes only.
    """
    check_sampling(sampling)
    if sampling != "center" and frames_per_snippet != 1 and (sampling == "keyframe" or keyframes_only):
        raise UsageError(f"sampling={sampling!r}: keyframe sampling reads one frame per snippet; this model reads "
                         f"frames_per_snippet={frames_per_snippet} (use sampling='center' and decode every frame)")
    if sampling == "center" and keyframes_only:
        raise UsageError("sampling='center' needs the snippets' center frames, but the source decodes keyframes "
                         "only: use sampling='keyframe' (or 'auto'), or decode every frame")
    if sampling != "auto":
        return sampling, "chosen"
    if keyframes_only:
        return "keyframe", "auto: the source decodes keyframes only"
    if frames_per_snippet != 1:
        return "center", f"auto: the model reads {frames_per_snippet} frames per snippet"
    if keyframe_interval is None:
        return "center", "auto: the source's keyframe interval is not known"
    if keyframe_interval > 0 and snippet_len % keyframe_interval == 0:
        return "keyframe", f"auto: keyframe interval {keyframe_interval} divides snippet_len {snippet_len}"
    return "center", f"auto: keyframe interval {keyframe_interval} does not divide snippet_len {snippet_len}"


def is_lazy(frame: Any) -> bool:
    """True for a frame whose pixels are made on demand (a `LazyFrame`), as opposed to an array."""
    return isinstance(frame, LazyFrame)


def is_key(frame: Any) -> bool:
    """True for a lazy or device frame that says it is a keyframe (`DecodedFrame.key`, `DeviceNV12Frame.key`)."""
    return (is_lazy(frame) or isinstance(frame, DeviceNV12Frame)) and getattr(frame, "key", None) is True


class _Decoded(LazyFrame):
    """A lazy frame decoded ahead of `push` (by `SnippetAssembler.prepare`): its pixels, with its key flag."""

    __slots__ = ("image", "key")

    def __init__(self, image: np.ndarray, index: int, key: bool) -> None:
        self.image, self.index, self.key = image, index, key

    def decode(self, *, stream: int | None = None) -> np.ndarray:
        return self.image


def sample_offsets(snippet_len: int, k: int) -> list[int]:
    """Offsets of the k evenly sampled frames inside a snippet: floor((i + 0.5) * L / k), i = 0..k-1.

    For k = 1 this is the middle frame (offset 8 of 16).
    """
    if not 1 <= k <= snippet_len:
        raise UsageError(f"frames_per_snippet={k} must be in [1, snippet_len={snippet_len}]")
    return [int((i + 0.5) * snippet_len / k) for i in range(k)]


@dataclass(frozen=True)
class Snippet:
    """A completed snippet of one stream: its index, frame range [frame_start, frame_end) and sampled frames.

    The sampled frames are the assembler's own copies, so a caller may reuse its frame buffer (OpenCV's
    `cap.read(img)` idiom) without changing what the snippet holds. `sampled` holds the stream frame index of
    each, `sampling` how they were chosen: "center", or "keyframe" (a keyframe snippet without a keyframe falls
    back to "center").
    """

    stream: int
    index: int
    frame_start: int
    frame_end: int
    frames: tuple[np.ndarray, ...]
    frame_shape: tuple[int, int]  # (H, W) of the first sampled frame (a stream's frames share a size in practice)
    sampled: tuple[int, ...] = ()
    sampling: str = "center"


class SnippetAssembler:
    """Collects the frames of one stream and emits a `Snippet` every `snippet_len` frames.

    Only the sampled frames (and the latest frame) are kept, not the whole snippet, and they are copied: the
    caller's array may be overwritten as soon as `push` returns. A partial snippet at the end of the stream
    (`flush`) uses the same offsets, clipped to its last frame.

    Frames the snippet does not sample may be `LazyFrame`s (decoded only if a partial snippet at `flush` needs
    them); sampled ones are decoded by `push` (`Detector` decodes them before, with `prepare`, so that a frame
    that does not decode changes nothing).
    A partial snippet whose only candidate frame does not decode is dropped and counted in `undecodable`.

    With `sampling="keyframe"` (one frame per snippet) the snippet samples its first keyframe (`is_key`); one
    without a keyframe samples the center frame instead, counted in `fallbacks`. Its center frame is kept
    undecoded until the snippet ends without a keyframe, so a source that decodes keyframes only (its other
    frames cannot be decoded) runs as long as every snippet holds a keyframe; a snippet that does not, in such a
    stream, raises UsageError.
    """

    def __init__(self, snippet_len: int, frames_per_snippet: int = 1, stream: int = 0, *,
                 sampling: str = "center") -> None:
        if sampling not in ("center", "keyframe"):  # "auto" is resolved per source (`choose_sampling`)
            raise UsageError(f"SnippetAssembler sampling must be 'center' or 'keyframe', got {sampling!r}")
        choose_sampling(sampling, snippet_len=snippet_len, frames_per_snippet=frames_per_snippet)
        self.snippet_len = snippet_len
        self.offsets = sample_offsets(snippet_len, frames_per_snippet)
        self.stream = stream
        self.sampling = sampling
        self.fallbacks = 0  # keyframe sampling: snippets without a keyframe, sampled at the center instead
        self.reset()

    def reset(self) -> None:
        """Forget everything; the next frame is frame 0 of snippet 0."""
        self.frames_seen = 0
        self.snippets_emitted = 0
        self.undecodable = 0  # partial snippets dropped because no frame of theirs decodes
        self.undecodable_frames = 0  # ... and their frames
        self._kept: dict[int, Any] = {}  # offset -> frame (keyframe sampling: the center one may stay lazy)
        self._key: int | None = None  # keyframe sampling: offset of the snippet's keyframe once seen
        self._last: Any = None  # the frame a partial snippet stands in for offsets it did not reach ...
        self._last_at = -1  # ... and its offset
        self._scratch: np.ndarray | None = None

    @property
    def _pos(self) -> int:
        return self.frames_seen - self.snippets_emitted * self.snippet_len

    def samples(self, frame: Any = None) -> bool:
        """Whether the next frame pushed (`frame`, for keyframe sampling) is one the snippet samples now."""
        if self.sampling == "keyframe":
            return self._key is None and is_key(frame)
        return self._pos in self.offsets

    def prepare(self, frame: Any) -> Any:
        """`frame` as `push` will take it: decoded when the snippet samples it; no frame is counted yet.

        Keyframe sampling: on the last frame of a snippet that holds no keyframe, its center frame is decoded
        here (the fallback), so that a frame that cannot be decoded is refused before any stream changed.

        Raises:
            FrameError: A sampled frame does not decode.
            UsageError: A snippet holds no keyframe and its center frame cannot be decoded (a source that
                decodes keyframes only, on a stream whose keyframes do not fall in every snippet).
        """
        if not is_lazy(frame):
            return frame
        if self.samples(frame):
            image = frame.decode(stream=self.stream)
            return image if self.sampling == "center" else _Decoded(image, getattr(frame, "index", -1), True)
        if self.sampling == "keyframe" and self._key is None and self._pos == self.snippet_len - 1:
            center = self.offsets[0]
            self._kept[center] = self._decoded_fallback(self._kept.get(center, frame))
        return frame

    def _decoded_fallback(self, frame: Any) -> np.ndarray:
        """The center frame of a snippet without a keyframe, decoded; UsageError when it cannot be."""
        if not is_lazy(frame):
            return frame
        try:
            return frame.decode(stream=self.stream)
        except FrameError as exc:
            start = self.snippets_emitted * self.snippet_len
            raise UsageError(
                f"stream {self.stream} snippet {self.snippets_emitted} (frames {start}-{start + self.snippet_len - 1})"
                f" holds no keyframe, and sampling='keyframe' falls back to its center frame, which cannot be "
                f"decoded ({exc}): a source that decodes keyframes only needs a keyframe in every snippet "
                f"(keyframe interval dividing snippet_len={self.snippet_len}); decode all frames instead") from None

    def push(self, frame: np.ndarray | Any) -> Snippet | None:
        """Add one frame; return the snippet it completes, if any.

        A sampled frame is copied. A frame before the last sampling offset may end the stream (a partial
        snippet at `flush` stands it in for the offsets it did not reach), so it is copied into one reused
        scratch buffer; frames after the last offset are not touched.
        """
        pos = self._pos
        if self.sampling == "keyframe":
            self._push_keyframe(frame, pos)
        else:
            self._push_center(frame, pos)
        self.frames_seen += 1
        if pos + 1 == self.snippet_len:
            return self._emit(self.snippet_len)
        return None

    def _push_center(self, frame: Any, pos: int) -> None:
        if is_lazy(frame) and pos in self.offsets:
            frame = frame.decode(stream=self.stream)
        if pos in self.offsets:
            self._last, self._last_at = frame.copy(), pos
            self._kept[pos] = self._last
        elif is_lazy(frame):
            if pos < self.offsets[-1]:
                self._last, self._last_at = frame, pos  # nothing to copy; decoded only by a partial snippet
        elif pos < self.offsets[-1]:
            self._keep_scratch(frame, pos)

    def _push_keyframe(self, frame: Any, pos: int) -> None:
        center = self.offsets[0]
        if self._key is None and is_key(frame):
            self._key = pos
            self._kept = {pos: frame.decode(stream=self.stream) if is_lazy(frame) else frame.copy()}
            self._last, self._last_at = self._kept[pos], pos
        elif self._key is None and pos == center:
            kept = self._kept.get(pos)  # the center frame, decoded early by `prepare` on a one-frame snippet
            self._last = kept if kept is not None else frame if is_lazy(frame) else frame.copy()
            self._kept[pos], self._last_at = self._last, pos
        elif self._key is None and pos < center:
            if is_lazy(frame):
                self._last, self._last_at = frame, pos
            else:
                self._keep_scratch(frame, pos)

    def _keep_scratch(self, frame: np.ndarray, pos: int) -> None:
        if isinstance(frame, DeviceNV12Frame):  # immutable, owns its device memory: kept as it is
            self._last, self._last_at = frame, pos
            return
        if self._scratch is None or self._scratch.shape != frame.shape:
            self._scratch = np.empty_like(frame)
        np.copyto(self._scratch, frame)
        self._last, self._last_at = self._scratch, pos

    def flush(self) -> Snippet | None:
        """Emit the partial snippet at the end of the stream, if it has any frame."""
        pos = self._pos
        if pos <= 0:  # no frame since the last snippet (a partial one ends the count below zero)
            return None
        if self._key is None and is_lazy(self._last):
            lazy = self._last
            try:
                self._last = lazy.decode(stream=self.stream)
            except FrameError:
                kept = [(o, f) for o, f in self._kept.items() if not is_lazy(f)]  # in offset order
                if not kept:  # nothing of this partial snippet decodes: drop it, counted
                    self.undecodable += 1
                    self.undecodable_frames += pos
                    self.frames_seen -= pos
                    self._kept, self._key, self._last = {}, None, None
                    return None
                self._last_at, self._last = kept[-1]
            self._kept = {o: self._last if f is lazy else f for o, f in self._kept.items() if f is lazy
                          or not is_lazy(f)}
        return self._emit(pos)

    def _emit(self, length: int) -> Snippet:
        start = self.snippets_emitted * self.snippet_len
        sampling = self.sampling
        if self._key is not None:
            offsets = [self._key]
            frames: tuple[np.ndarray, ...] = (self._kept[self._key],)
        else:
            if sampling == "keyframe":  # no keyframe in this snippet: the center frame (counted)
                self.fallbacks += 1
                sampling = "center"
                center = self.offsets[0]
                if center in self._kept:
                    self._kept[center] = self._decoded_fallback(self._kept[center])
                    if self._last_at == center:
                        self._last = self._kept[center]
            last = self._last
            if last is None:
                raise RuntimeError("SnippetAssembler: a snippet ended before any frame was kept")
            if last is self._scratch:  # the scratch buffer is reused by the next push: the snippet gets its own
                last = last.copy()
            offsets = [o if o < length and o in self._kept else self._last_at for o in self.offsets]
            frames = tuple(self._kept.get(o, last) if o < length else last for o in self.offsets)
        snip = Snippet(self.stream, self.snippets_emitted, start, start + length, frames,
                       (int(frames[0].shape[0]), int(frames[0].shape[1])),
                       tuple(start + o for o in offsets), sampling)
        self.snippets_emitted += 1
        self._kept = {}
        self._key = None
        self._last = None
        self._last_at = -1
        return snip
