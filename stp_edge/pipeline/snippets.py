"""Stage 1, snippets: cutting a stream's frames into snippets of `snippet_len` frames and sampling them.

In: frames (arrays, or `EncodedFrame`s for the frames a snippet does not sample). Out: one `Snippet` per
`snippet_len` frames, holding copies of its sampled frames (and a partial one at the end of the stream).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stp_edge.errors import UsageError
from stp_edge.frames import EncodedFrame, FrameError


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
    `cap.read(img)` idiom) without changing what the snippet holds.
    """

    stream: int
    index: int
    frame_start: int
    frame_end: int
    frames: tuple[np.ndarray, ...]
    frame_shape: tuple[int, int]  # (H, W) of the first sampled frame (a stream's frames share a size in practice)


class SnippetAssembler:
    """Collects the frames of one stream and emits a `Snippet` every `snippet_len` frames.

    Only the sampled frames (and the latest frame) are kept, not the whole snippet, and they are copied: the
    caller's array may be overwritten as soon as `push` returns. A partial snippet at the end of the stream
    (`flush`) uses the same offsets, clipped to its last frame.

    Frames the snippet does not sample may be `EncodedFrame`s (compressed, decoded only if a partial snippet at
    `flush` needs them); sampled ones must be arrays (`Detector` decodes them before `push`, see `samples`).
    A partial snippet whose only candidate frame does not decode is dropped and counted in `undecodable`.
    """

    def __init__(self, snippet_len: int, frames_per_snippet: int = 1, stream: int = 0) -> None:
        self.snippet_len = snippet_len
        self.offsets = sample_offsets(snippet_len, frames_per_snippet)
        self.stream = stream
        self.reset()

    def reset(self) -> None:
        """Forget everything; the next frame is frame 0 of snippet 0."""
        self.frames_seen = 0
        self.snippets_emitted = 0
        self.undecodable = 0  # partial snippets dropped because no frame of theirs decodes
        self.undecodable_frames = 0  # ... and their frames
        self._kept: dict[int, np.ndarray] = {}
        self._last: np.ndarray | None = None
        self._scratch: np.ndarray | None = None

    def samples(self) -> bool:
        """Whether the next frame pushed is one the snippet samples (its pixels are needed now)."""
        return self.frames_seen - self.snippets_emitted * self.snippet_len in self.offsets

    def push(self, frame: np.ndarray | EncodedFrame) -> Snippet | None:
        """Add one frame; return the snippet it completes, if any.

        A sampled frame is copied. A frame before the last sampling offset may end the stream (a partial
        snippet at `flush` stands it in for the offsets it did not reach), so it is copied into one reused
        scratch buffer; frames after the last offset are not touched.
        """
        pos = self.frames_seen - self.snippets_emitted * self.snippet_len
        if isinstance(frame, EncodedFrame) and pos in self.offsets:
            frame = frame.decode(stream=self.stream)
        if pos in self.offsets:
            self._last = self._kept[pos] = frame.copy()
        elif isinstance(frame, EncodedFrame):
            if pos < self.offsets[-1]:
                self._last = frame  # immutable bytes: nothing to copy; decoded only by a partial snippet
        elif pos < self.offsets[-1]:
            if self._scratch is None or self._scratch.shape != frame.shape:
                self._scratch = np.empty_like(frame)
            np.copyto(self._scratch, frame)
            self._last = self._scratch
        self.frames_seen += 1
        if pos + 1 == self.snippet_len:
            return self._emit(self.snippet_len)
        return None

    def flush(self) -> Snippet | None:
        """Emit the partial snippet at the end of the stream, if it has any frame."""
        pos = self.frames_seen - self.snippets_emitted * self.snippet_len
        if pos <= 0:  # no frame since the last snippet (a partial one ends the count below zero)
            return None
        if isinstance(self._last, EncodedFrame):
            try:
                self._last = self._last.decode(stream=self.stream)
            except FrameError:
                kept = [self._kept[o] for o in self.offsets if o in self._kept]
                if not kept:  # nothing of this partial snippet decodes: drop it, counted
                    self.undecodable += 1
                    self.undecodable_frames += pos
                    self.frames_seen -= pos
                    self._kept, self._last = {}, None
                    return None
                self._last = kept[-1]
        return self._emit(pos)

    def _emit(self, length: int) -> Snippet:
        last = self._last
        if last is None:
            raise RuntimeError("SnippetAssembler: a snippet ended before any frame was kept")
        if last is self._scratch:  # the scratch buffer is reused by the next push: the snippet gets its own
            last = last.copy()
        frames = tuple(self._kept.get(o, last) if o < length else last for o in self.offsets)
        start = self.snippets_emitted * self.snippet_len
        snip = Snippet(self.stream, self.snippets_emitted, start, start + length, frames,
                       (int(frames[0].shape[0]), int(frames[0].shape[1])))
        self.snippets_emitted += 1
        self._kept = {}
        self._last = None
        return snip
