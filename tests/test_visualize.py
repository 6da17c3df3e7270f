import cv2
import numpy as np
import pytest

from stp_edge.geometry import crop_square_pixels
from stp_edge.video import VideoError
from stp_edge.visualize import OverlayWriter, heatmap_overlay, plot_timeline

W, H = 160, 120


def _scene():
    # A textured, non-constant frame (gradients + checker), so "unchanged" is a real claim.
    y, x = np.mgrid[0:H, 0:W]
    f = np.stack([(x * 255 // W), (y * 255 // H), ((x // 8 + y // 8) % 2) * 120 + 60], -1)
    return f.astype(np.uint8)


def _read_all(path):
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


def test_heatmap_changes_pixels_only_where_the_map_is_high():
    frame = _scene()
    amap = np.zeros((4, 4), np.float32)
    amap[0, 0] = 1.0
    out = heatmap_overlay(frame, amap)
    diff = np.abs(out.astype(int) - frame.astype(int)).sum(-1)
    redder = out[..., 2].astype(int) - frame[..., 2].astype(int)
    assert redder[: H // 8, : W // 8].min() > 30  # core of the hot cell turns red
    assert diff[H // 2:, W // 2:].max() == 0  # map is 0 there: pixels untouched


def test_heatmap_roi_places_the_map():
    frame = _scene()
    roi = crop_square_pixels((H, W))
    assert roi == (20, 0, 140, 120)
    out = heatmap_overlay(frame, np.ones((3, 3)), roi)
    diff = np.abs(out.astype(int) - frame.astype(int)).mean(-1)
    assert diff[:, :20].max() == 0 and diff[:, 140:].max() == 0 and diff[:, 20:140].mean() > 30
    with pytest.raises(ValueError, match="not inside"):
        heatmap_overlay(frame, np.ones((3, 3)), (0, 0, W + 1, H))


@pytest.mark.parametrize("ext", [".avi", ".mp4"])
def test_overlay_video_written_and_readable(tmp_path, ext):
    frame = _scene()
    amap = np.zeros((7, 7), np.float32)
    amap[1:3, 1:3] = 1.0
    path = tmp_path / f"overlay{ext}"
    with OverlayWriter(path, fps=10, size=(W, H)) as w:
        for k in range(6):
            w.write(frame, 0.1 + 0.15 * k, "fighting", amap, [(100, 60, 150, 100)])
        assert w.frames_written == 6
    frames = _read_all(path)
    assert len(frames) == 6 and frames[0].shape == (H, W, 3)
    diff = np.abs(frames[3].astype(int) - frame.astype(int)).mean(-1)
    hot = diff[int(H * 1.3 / 7):int(H * 2.7 / 7), int(W * 1.3 / 7):int(W * 2.7 / 7)].mean()
    cold = diff[int(H * 4 / 7):int(H * 5.5 / 7), int(W * 0.5 / 7):int(W * 3 / 7)].mean()
    assert hot > 40 and cold < 12, (hot, cold)
    # The box edge is drawn red.
    edge = frames[3][62:98, 99:102].astype(int)
    assert (edge[..., 2] - edge[..., 1]).mean() > 80
    # The score bar fills further for higher scores (bottom rows, left to right).
    bar = lambda f: (np.abs(f[H - 5, 4:W - 4].astype(int) - 30).sum(-1) > 60).sum()  # noqa: E731
    assert bar(frames[5]) > bar(frames[0]) + W // 3


def test_overlay_resizes_frames_and_boxes(tmp_path):
    big = cv2.resize(_scene(), (W * 2, H * 2))
    path = tmp_path / "small.avi"
    with OverlayWriter(path, fps=5, size=(W, H)) as w:
        w.write(big, 0.9, None, None, [(200, 120, 300, 200)])  # -> (100, 60, 150, 100) at the output size
    (f,) = _read_all(path)
    edge = f[62:98, 99:102].astype(int)
    assert (edge[..., 2] - edge[..., 1]).mean() > 80


def test_overlay_errors_are_video_errors(tmp_path):
    """The overlay fails as `VideoWriter` does: one error type, naming the file (and the frame)."""
    with pytest.raises(VideoError, match=r"x\.gif: unsupported extension"):
        OverlayWriter(tmp_path / "x.gif", fps=5, size=(W, H))
    with pytest.raises(VideoError, match=r"x\.avi: fps must be"):
        OverlayWriter(tmp_path / "x.avi", fps=0, size=(W, H))
    with pytest.raises(VideoError, match=r"x\.avi: size 161x120"):
        OverlayWriter(tmp_path / "x.avi", fps=5, size=(W + 1, H))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(VideoError, match=r"file/x\.avi: cannot create"):
        OverlayWriter(blocker / "x.avi", fps=5, size=(W, H))
    w = OverlayWriter(tmp_path / "x.avi", fps=5, size=(W, H))
    w.write(_scene(), 0.5)
    with pytest.raises(VideoError, match=r"x\.avi: frame 1: expected uint8 \[H,W,3\] BGR, got uint8 \(120, 160\)"):
        w.write(_scene()[..., 0], 0.5)
    w.close()
    with pytest.raises(VideoError, match="after close"):
        w.write(_scene(), 0.5)


def test_overlay_appears_under_its_name_only_when_closed(tmp_path):
    path = tmp_path / "overlay.mp4"
    with OverlayWriter(path, fps=5, size=(W, H)) as w:
        w.write(_scene(), 0.2)
        assert not path.exists()
    assert len(_read_all(path)) == 1

    def failing_run():
        with OverlayWriter(path, fps=5, size=(W, H)) as w:
            w.write(cv2.flip(_scene(), 1), 0.9)
            raise OSError("the source went away")

    with pytest.raises(OSError, match="went away"):
        failing_run()
    (kept,) = _read_all(path)  # the earlier file, untouched: the failed run's frame was not written over it
    middle = slice(H // 3, 2 * H // 3)  # clear of the label plate (top) and the score bar (bottom)
    to_old = np.abs(kept[middle].astype(int) - _scene()[middle]).mean()
    to_new = np.abs(kept[middle].astype(int) - cv2.flip(_scene(), 1)[middle]).mean()
    assert to_old < 8 < to_new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.mp4"]
    w = OverlayWriter(tmp_path / "aborted.avi", fps=5, size=(W, H))
    w.write(_scene(), 0.2)
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.mp4"]


def test_timeline_png(tmp_path):
    t = np.arange(250)
    scores = 0.1 + 0.8 * ((t > 100) & (t < 160)) + 0.05 * np.sin(t / 5)
    path = plot_timeline(tmp_path / "tl.png", scores, fps=25, gt_ranges=[(100, 160)], threshold=0.5,
                         title="test_0001")
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 150 and img.shape[1] > 500
    assert img.std() > 20
    b, r = img[..., 0].astype(int), img[..., 2].astype(int)
    blue_line = ((b - r) > 60).sum()  # matplotlib tab:blue score curve
    shade = ((r - b) > 15) & (r > 200)  # light red ground-truth span
    assert blue_line > 200
    cols = np.flatnonzero(shade.sum(0) > 50)
    assert cols.size > 0
    # The shaded span covers 60 of 250 frames: roughly a quarter of the axis width, not the whole figure.
    assert 0.12 * img.shape[1] < cols.max() - cols.min() < 0.4 * img.shape[1]


def test_timeline_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="at least one score"):
        plot_timeline(tmp_path / "x.png", [], fps=25)
