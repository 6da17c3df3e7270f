"""Property tests (hypothesis) of the frame API: `validate_frame`, `Detector.push` and `Detector.push_many`.

Any value offered as a frame (any dtype, ndim, shape, memory layout, read-only, NaN, empty, not an array) is
either accepted as the image an oracle says it is, or refused with a one-line `FrameError` that names the stream,
the frame index and the field at fault; never another exception. A refused frame changes nothing: every stream
then ends with exactly the results of a clean run. A frame that is the clean frame in another memory layout
(read-only, Fortran order, strided or negative-stride view, BGRA) gives exactly the clean results.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import moving_frames

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from stp_edge.api import Detector  # noqa: E402
from stp_edge.frames import FrameError, validate_frame  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
N_FRAMES = 14  # handmade bundle: snippets of 4 frames -> 3 full snippets and a 2-frame tail per stream
FIELDS = ("dtype", "shape", "numpy array", "non-empty")

any_dtype = st.one_of(hnp.integer_dtypes(endianness="="), hnp.unsigned_integer_dtypes(endianness="?"),
                      hnp.floating_dtypes(endianness="?"), hnp.boolean_dtypes(), hnp.complex_number_dtypes(),
                      st.just(np.dtype("datetime64[s]")), st.just(np.dtype("U3")))
any_array = hnp.arrays(any_dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
image_like = hnp.arrays(np.uint8, st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)))
nan_image = hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64]), st.just((6, 8, 3)),
                       elements=st.sampled_from([np.nan, 0.0, 127.5, 255.0, np.inf]))
subclassed = st.one_of(
    hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=5)).map(np.matrix),
    hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=3, min_side=0, max_side=5)).map(np.ma.masked_array))
not_arrays = st.sampled_from([None, 7, 3.5, "frame", b"\xff\xd8\xff", [[1, 2], [3, 4]], [[[1, 2, 3]]],
                              memoryview(b"abc"), {"pixels": 1}])


def _layouts(base: np.ndarray) -> st.SearchStrategy[np.ndarray]:
    """Views of `base`'s content in other memory layouts (all must give base's results)."""
    h, w, _ = base.shape

    def readonly(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a.setflags(write=False)
        return a

    def strided(a: np.ndarray) -> np.ndarray:
        big = np.zeros((2 * h, 2 * w, 3), np.uint8)
        big[::2, ::2] = a
        return big[::2, ::2]

    def channel_strided(a: np.ndarray) -> np.ndarray:
        planar = np.ascontiguousarray(a.transpose(2, 0, 1))
        return planar.transpose(1, 2, 0)

    def bgra(a: np.ndarray) -> np.ndarray:
        return np.dstack([a, np.full((h, w, 1), 77, np.uint8)])

    variants = [readonly, np.asfortranarray, strided, lambda a: a[::-1].copy()[::-1], channel_strided, bgra,
                lambda a: np.ma.masked_array(a.copy()), lambda a: a.copy().view(np.recarray)]
    return st.sampled_from(variants).map(lambda f: f(base))


def _oracle(x: object) -> np.ndarray | None:
    """The (H, W, 3) uint8 image `x` stands for, or None when it must be refused."""
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        return None
    a = np.asarray(x)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2) if a.size else None
    if a.ndim == 3 and a.shape[2] in (3, 4) and a.shape[0] and a.shape[1]:
        return a[:, :, :3]
    return None


def _assert_refusal(exc: FrameError, stream: int, index: int) -> None:
    msg = str(exc)
    assert re.match(rf"stream {stream} frame {index}: expected ", msg), msg
    assert any(f in msg for f in FIELDS), f"the message names no field: {msg}"
    assert "\n" not in msg and len(msg) < 300, msg


# ---------------------------------------------------------------------------------------------- validate_frame
@SETTINGS
@given(x=st.one_of(any_array, image_like, nan_image, subclassed, not_arrays), index=st.integers(0, 10**6),
       stream=st.integers(0, 64))
def test_validate_frame_accepts_as_the_oracle_says_or_raises_frame_error(x, index, stream):
    before = x.copy() if isinstance(x, np.ndarray) else None
    want = _oracle(x)
    if want is None:
        with pytest.raises(FrameError) as err:
            validate_frame(x, index, stream=stream)
        _assert_refusal(err.value, stream, index)
    else:
        got = validate_frame(x, index, stream=stream)
        assert type(got) is np.ndarray and got.dtype == np.uint8 and got.flags.c_contiguous
        assert got.ndim == 3 and got.shape[2] == 3 and got.shape[0] > 0 and got.shape[1] > 0
        np.testing.assert_array_equal(got, want)
    if before is not None:
        np.testing.assert_array_equal(x, before)  # the caller's array is never written


# -------------------------------------------------------------------------------------- Detector.push_many/push
@pytest.fixture(scope="module")
def det(handmade_bundle):
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu", spatial_on="all") as d:
        yield d


class Clean:
    """The two streams' frames and the results of their clean run (short repr for hypothesis reports)."""

    def __init__(self, frames: dict[int, list[np.ndarray]], want: list) -> None:
        self.frames, self.want = frames, want

    def __repr__(self) -> str:
        return f"Clean(2 streams x {N_FRAMES} frames, {len(self.want)} results)"


@pytest.fixture(scope="module")
def clean(det) -> Clean:
    frames = {0: moving_frames(N_FRAMES, seed=21), 1: moving_frames(N_FRAMES, seed=22)}
    det.reset()
    return Clean(frames, _summary(_feed(det, frames, None, None, None)))


def _summary(results):
    return sorted((r.stream, r.snippet, r.frame_start, r.frame_end, round(r.score, 7),
                   tuple(np.round(r.class_probs, 7)), tuple(np.round(r.region_scores, 7))) for r in results)


def _feed(det, frames, at, stream, x):
    """Run both streams frame by frame through push_many, offering `x` as `stream`'s frame `at` first.

    Returns every result (flush included). A refused offer is followed by the clean frame, as a caller that
    skips a bad frame would; an accepted one takes that frame's place.
    """
    out = []
    for i in range(N_FRAMES):
        batch = {k: frames[k][i] for k in frames}
        if i == at:
            try:
                out += det.push_many({**batch, stream: x})
            except FrameError as exc:
                _assert_refusal(exc, stream, i)
            else:
                continue
        out += det.push_many(batch)
    return out + det.flush()


@SETTINGS
@given(x=st.one_of(any_array, image_like, nan_image, subclassed, not_arrays), at=st.integers(0, N_FRAMES - 1),
       stream=st.sampled_from([0, 1]))
def test_push_many_refusal_changes_nothing(det, clean, x, at, stream):
    frames, want = clean.frames, clean.want
    det.reset()
    got = _summary(_feed(det, frames, at, stream, x))
    other = 1 - stream
    assert [r for r in got if r[0] == other] == [r for r in want if r[0] == other]  # the other stream: untouched
    if _oracle(x) is None:
        assert got == want  # refused: both streams exactly as in the clean run
    else:
        assert [r[:4] for r in got if r[0] == stream] == [r[:4] for r in want if r[0] == stream]


@SETTINGS
@given(data=st.data(), at=st.integers(0, N_FRAMES - 1), stream=st.sampled_from([0, 1]))
def test_frame_layout_never_changes_results(det, clean, data, at, stream):
    frames, want = clean.frames, clean.want
    x = data.draw(_layouts(frames[stream][at]))
    det.reset()
    assert _summary(_feed(det, frames, at, stream, x)) == want


@SETTINGS
@given(x=st.one_of(any_array, nan_image, not_arrays), stream=st.integers(2, 9))
def test_push_refusal_on_a_new_stream_leaves_no_state(det, clean, x, stream):
    frames, want = clean.frames, clean.want
    if _oracle(x) is not None:
        return
    det.reset()
    with pytest.raises(FrameError) as err:
        det.push(x, stream)
    _assert_refusal(err.value, stream, 0)
    assert det.flush(stream) == []  # the refused frame opened no stream
    out = []
    for f in frames[0]:
        out += det.push(f, stream)
    out += det.flush(stream)
    assert [r[1:] for r in _summary(out)] == [r[1:] for r in want if r[0] == 0]
