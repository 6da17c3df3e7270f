"""The `stpedge` GStreamer element in real pipelines on a real video file (Debian's GStreamer and gst-python).

The python plugin loader embeds the system Python (/usr/bin/python3.11), so every pipeline runs in a subprocess
with a private plugin registry, GST_PLUGIN_PATH = `plugin_path()` and PYTHONPATH = the venv's site-packages and
the repository (`plugin_env`). The reference the element must equal is `stp_edge.api.Detector` run here, in the
venv, on the very frames GStreamer decoded (copied by a pad probe before the element).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import validate_record

from stp_edge.apps.gst import plugin_env, plugin_path

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3.11"
FRAMES, FPS, HEIGHT, WIDTH = 160, 15, 48, 62  # 62 * 3 = 186 bytes a row: GStreamer pads the stride to 188
PROPERTIES = ("bundle", "backend", "threshold", "camera", "spatial", "lookahead", "draw", "off-threshold",
              "min-snippets")


def _why_not() -> str | None:
    """Why the element cannot run here (a missing part, named), or None."""
    if shutil.which("gst-launch-1.0") is None or shutil.which("gst-inspect-1.0") is None:
        return "gst-launch-1.0 / gst-inspect-1.0 not installed (apt install gstreamer1.0-tools)"
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} (the Python the plugin loader embeds) not installed"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstBase', '1.0'); "
                            "gi.require_version('GstVideo', '1.0')"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"python3-gst-1.0 missing for {SYSTEM_PYTHON}: {probe.stderr.strip()[-200:]}"
    loader = subprocess.run(["gst-inspect-1.0", "python"], capture_output=True, text=True)
    if loader.returncode != 0:
        return "the GStreamer python plugin loader is missing (apt install gstreamer1.0-python3-plugin-loader)"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


@pytest.fixture(scope="module")
def gst_env(tmp_path_factory) -> dict[str, str]:
    """The environment of every GStreamer subprocess: a private registry, the plugin and the venv on the paths."""
    env = plugin_env()
    env["GST_REGISTRY"] = str(tmp_path_factory.mktemp("gst") / "registry.bin")  # never a stale cached failure
    return env


@pytest.fixture(scope="module")
def bundle16(tmp_path_factory) -> Path:
    """The hand-made contract bundle with 16-frame snippets (the shape of exported bundles), context 3."""
    from conftest import handmade_config, write_handmade_bundle

    return write_handmade_bundle(tmp_path_factory.mktemp("gst") / "b16.stp", handmade_config(snippet_len=16))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """An MJPG AVI: a textured background, a bright square moving across frames 48-111, still again after."""
    from conftest import write_avi

    rng = np.random.default_rng(0)
    background = rng.integers(20, 120, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    frames = []
    for i in range(FRAMES):
        f = background.copy()
        if 48 <= i < 112:
            x = (2 * i) % (WIDTH - 16)
            f[10:26, x:x + 16] = (255, 255, 255)
        frames.append(f)
    return write_avi(tmp_path_factory.mktemp("gst") / "blob.avi", frames, FPS)


def launch_line(video: Path, bundle: Path) -> list[str]:
    """The pipeline of docs/gstreamer.md, as gst-launch-1.0 arguments."""
    return ["gst-launch-1.0", "filesrc", f"location={video}", "!", "decodebin", "!", "videoconvert", "!",
            "stpedge", f"bundle={bundle}", "!", "fakesink"]


# A pipeline driven from Python (the system Python that the loader embeds): bus messages, the frames going into
# and out of the element, and the StpEdgeMeta of each buffer after a videoconvert to I420 behind the element.
DRIVER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import gi
    gi.require_version("Gst", "1.0"); gi.require_version("GstVideo", "1.0")
    from gi.repository import Gst, GstVideo
    Gst.init(None)
    from stp_edge.apps.gst import meta

    video, bundle, props, out, fmt = sys.argv[1:6]
    pipeline = Gst.parse_launch(
        f"filesrc location={video} ! decodebin ! videoconvert ! video/x-raw,format={fmt} ! "
        f"stpedge name=det bundle={bundle} {props} ! videoconvert ! video/x-raw,format=I420 ! fakesink name=sink")
    det = pipeline.get_by_name("det")
    frames = {"in": [], "out": []}
    metas = []

    def copy_frame(key):
        def probe(pad, info):
            buf = info.get_buffer()
            vi = GstVideo.VideoInfo.new_from_caps(pad.get_current_caps())
            with buf.map(Gst.MapFlags.READ) as m:
                view = np.ndarray((vi.height, vi.width, 3), np.uint8, m.data, vi.offset[0], (vi.stride[0], 3, 1))
                frames[key].append(view.copy())
                del view
            return Gst.PadProbeReturn.OK
        return probe

    def read_meta(pad, info):
        metas.append(meta.read(info.get_buffer()))
        return Gst.PadProbeReturn.OK

    det.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, copy_frame("in"))
    det.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, copy_frame("out"))
    pipeline.get_by_name("sink").get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, read_meta)
    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    messages, errors = [], []
    kinds = Gst.MessageType.ELEMENT | Gst.MessageType.ERROR | Gst.MessageType.EOS
    while True:
        msg = bus.timed_pop_filtered(60 * Gst.SECOND, kinds)
        if msg is None:
            errors.append("timeout: no EOS within 60 s")
            break
        if msg.type == Gst.MessageType.ERROR:
            errors.append(msg.parse_error()[0].message)
            break
        if msg.type == Gst.MessageType.EOS:
            break
        s = msg.get_structure()
        if s.get_name().startswith("stpedge"):
            fields = {s.nth_field_name(i): s.get_value(s.nth_field_name(i)) for i in range(s.n_fields())}
            messages.append({"name": s.get_name(), "source": msg.src.get_name(), **fields})
    pipeline.set_state(Gst.State.NULL)
    np.savez(out + ".npz", inputs=np.stack(frames["in"]), outputs=np.stack(frames["out"]))
    with open(out + ".json", "w") as f:
        json.dump({"messages": messages, "metas": metas, "errors": errors}, f)
""")


def run_driver(tmp: Path, env: dict[str, str], video: Path, bundle: Path, props: str,
               fmt: str = "BGR") -> tuple[dict, dict]:
    """Run DRIVER under the system Python; (its JSON, its frames {"inputs", "outputs"} in `fmt`)."""
    script = tmp / "driver.py"
    script.write_text(DRIVER)
    out = tmp / "run"
    proc = subprocess.run([SYSTEM_PYTHON, str(script), str(video), str(bundle), props, str(out), fmt],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(Path(f"{out}.json").read_text())
    assert result["errors"] == [], result["errors"]
    with np.load(f"{out}.npz") as npz:
        return result, {k: npz[k] for k in npz.files}


def reference_scores(bundle: Path, frames: np.ndarray) -> list[tuple[int, int, float]]:
    """(frame_start, frame_end, score) of each snippet: `Detector` in the venv on the same frames."""
    from stp_edge.api import Detector

    with Detector.load(bundle, backend="ort-cpu") as det:
        results = [r for f in frames for r in det.push(f)] + det.flush()
    return [(r.frame_start, r.frame_end, r.score) for r in results]


def test_plugin_path_holds_the_element():
    assert (plugin_path() / "python" / "stpedge.py").is_file()
    proc = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "stp_edge.apps.gst"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0 and Path(proc.stdout.strip()) == plugin_path()


def test_gst_inspect_lists_the_properties(gst_env):
    proc = subprocess.run(["gst-inspect-1.0", "stpedge"], capture_output=True, text=True, env=gst_env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Filter/Analyzer/Video" in out and "GstBaseTransform" in out
    listed = {line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  ") and ":" in line}
    missing = [p for p in PROPERTIES if p not in listed]
    assert not missing, f"gst-inspect-1.0 stpedge does not list {missing}:\n{out}"
    assert "format: { (string)BGR, (string)RGB }" in out


def test_gst_launch_runs_a_real_video(gst_env, video, bundle16):
    proc = subprocess.run([launch_line(video, bundle16)[0], "-m", *launch_line(video, bundle16)[1:]],
                          capture_output=True, text=True, env=gst_env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    snippets = [line for line in proc.stdout.splitlines() if "(element): stpedge-snippet" in line]
    assert len(snippets) == FRAMES // 16, proc.stdout[-3000:]


def test_missing_bundle_is_a_gstreamer_error(gst_env, video, tmp_path):
    proc = subprocess.run(launch_line(video, tmp_path / "nope.stp"), capture_output=True, text=True, env=gst_env,
                          timeout=60)
    assert proc.returncode != 0
    assert f"ERROR: from element /GstPipeline:pipeline0/stpedge:stpedge0: stpedge: bundle '{tmp_path}/nope.stp': " \
           "no such directory" in proc.stdout + proc.stderr


def test_without_the_venv_on_pythonpath_the_error_says_what_to_do(gst_env, video, bundle16, tmp_path):
    env = {**gst_env, "PYTHONPATH": "", "GST_REGISTRY": str(tmp_path / "registry.bin")}
    proc = subprocess.run(launch_line(video, bundle16), capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "stpedge cannot import" in out and "python -m stp_edge.apps.gst --env" in out, out[-2000:]


def test_caps_it_cannot_take_do_not_link(gst_env, bundle16):
    proc = subprocess.run(["gst-launch-1.0", "videotestsrc", "num-buffers=4", "!", "video/x-raw,format=I420", "!",
                           "stpedge", f"bundle={bundle16}", "!", "fakesink"], capture_output=True, text=True,
                          env=gst_env, timeout=60)
    assert proc.returncode != 0
    assert "could not link" in proc.stdout + proc.stderr and "stpedge0" in proc.stdout + proc.stderr


def test_pipeline_results_equal_the_detector(gst_env, video, bundle16, tmp_path):
    result, frames = run_driver(tmp_path, gst_env, video, bundle16, "camera=gate")
    assert frames["inputs"].shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert np.array_equal(frames["inputs"], frames["outputs"]), "draw=false must pass the pixels through"
    snippets = [m for m in result["messages"] if m["name"] == "stpedge-snippet"]
    assert len(snippets) == FRAMES // 16
    assert [(m["frame_start"], m["frame_end"]) for m in snippets] == [(16 * t, 16 * t + 16) for t in range(10)]
    assert {m["camera"] for m in snippets} == {"gate"} and {m["source"] for m in snippets} == {"det"}
    ref = reference_scores(bundle16, frames["inputs"])
    assert [(a, b) for a, b, _ in ref] == [(m["frame_start"], m["frame_end"]) for m in snippets]
    got = np.array([m["score"] for m in snippets])
    want = np.array([s for _, _, s in ref])
    assert np.allclose(got, want, atol=1e-4), (got, want)
    assert np.ptp(got) > 0.05, f"scores barely move ({got}): the video does not exercise the detector"
    # Media times: frame_start / fps from the buffer PTS; records are whole, schema-valid JSON.
    records = [json.loads(m["record"]) for m in snippets]
    for t, r in enumerate(records):
        assert r["clock"] == "media" and math.isclose(r["media_time"], 16 * t / FPS, abs_tol=2e-3)
        assert math.isclose(r["end_time"] - r["start_time"], 16 / FPS, abs_tol=2e-3)
        assert r["frame_size"] == [WIDTH, HEIGHT] and r["camera"] == "gate" and r["source"] == str(video)
    _validate(records, "snippet")
    # Buffer meta after videoconvert to I420: each result on the buffer that completed it (context c = 3: snippet t
    # is final when snippet t + 3 ends); the last three came at EOS, with no buffer left to carry them.
    assert len(result["metas"]) == FRAMES
    carried = {i: m for i, m in enumerate(result["metas"]) if m}
    assert sorted(carried) == [16 * (t + 3) + 15 for t in range(7)]
    for t in range(7):
        (m,) = carried[16 * (t + 3) + 15]
        assert (m["snippet"], m["frame_start"], m["frame_end"]) == (t, 16 * t, 16 * t + 16)
        assert math.isclose(m["score"], want[t], abs_tol=1e-4) and m["class_name"] == records[t]["class_name"]
        assert m["is_anomaly"] == records[t]["is_anomaly"] and json.loads(m["boxes"]) == records[t]["boxes"]


def test_rgb_input_and_provisional_results(gst_env, video, bundle16, tmp_path):
    result, frames = run_driver(tmp_path, gst_env, video, bundle16, "lookahead=1", fmt="RGB")
    snippets = [m for m in result["messages"] if m["name"] == "stpedge-snippet"]
    final = [m for m in snippets if m["final"]]
    provisional = [m for m in snippets if not m["final"]]
    # lookahead=1: a provisional result once the next snippet is encoded; flush leaves none for the last one.
    assert [m["snippet"] for m in provisional] == list(range(9))
    ref = reference_scores(bundle16, frames["inputs"][..., ::-1])  # the same pixels, as the detector's BGR
    assert [m["snippet"] for m in final] == list(range(10))
    assert np.allclose([m["score"] for m in final], [s for _, _, s in ref], atol=1e-4)
    # Results ride on the buffer that completed them, in the detector's order: snippet 3's last buffer carries
    # the final result of snippet 0 (context 3) and the provisional one of snippet 2 (lookahead 1).
    carried = {i: m for i, m in enumerate(result["metas"]) if m}
    assert [(m["snippet"], m["final"]) for m in carried[16 * 1 + 15]] == [(0, False)]
    assert [(m["snippet"], m["final"]) for m in carried[16 * 3 + 15]] == [(0, True), (2, False)]


def test_events_and_drawing(gst_env, video, bundle16, tmp_path):
    first, frames = run_driver(tmp_path, gst_env, video, bundle16, "")
    scores = sorted(m["score"] for m in first["messages"] if m["name"] == "stpedge-snippet")
    threshold = round((scores[-1] + scores[-2]) / 2, 4)  # the top two scores differ: one opens an event
    props = f"draw=true threshold={threshold} off-threshold={threshold} min-snippets=1 spatial=all"
    result, frames = run_driver(tmp_path, gst_env, video, bundle16, props)
    changed = np.any(frames["inputs"] != frames["outputs"], axis=(1, 2, 3))
    assert changed.all(), f"draw=true left {np.flatnonzero(~changed)} unchanged"
    snippets = [json.loads(m["record"]) for m in result["messages"] if m["name"] == "stpedge-snippet"]
    events = [m for m in result["messages"] if m["name"] == "stpedge-event"]
    above = [r["snippet"] for r in snippets if r["score"] >= threshold]
    assert above, (threshold, [r["score"] for r in snippets])
    kinds = [e["type"] for e in events]
    assert kinds[0] == "begin" and kinds[-1] == "end" and kinds.count("begin") == kinds.count("end"), kinds
    begin = json.loads(events[0]["event"])["after"]
    assert begin["frame_start"] == 16 * above[0] and events[0]["camera"] == "det"
    # The same records through the EventEngine here give the same messages (ids are random; the rest is not).
    from stp_edge.apps.events import EventEngine, EventPolicy

    engine = EventEngine("det", EventPolicy(threshold=threshold, off_threshold=threshold, min_snippets=1))
    replay = [m for r in snippets for m in engine.add(r)] + engine.finish()
    assert [m["type"] for m in replay] == [{"begin": "new"}.get(k, k) for k in kinds]
    for ours, theirs in zip(events, replay, strict=True):
        got = json.loads(ours["event"])
        assert {**got["after"], "id": None} == {**theirs["after"], "id": None}
    _validate([json.loads(e["event"]) for e in events], "event")


def _validate(docs: list[dict], kind: str) -> None:
    for doc in docs:
        assert doc["schema"] == f"stp-edge.{kind}"
        validate_record(doc)


def test_the_element_never_starts_openvino(bundle16):
    """OpenVINO aborts inside a GStreamer process (libunwind, see stp_edge.apps.gst.analysis): refused by name."""
    from stp_edge.apps.gst.analysis import _without_openvino
    from stp_edge.errors import UsageError

    for name in ("openvino", "openvino-gpu"):
        with pytest.raises(UsageError, match="cannot run inside a GStreamer pipeline"):
            _without_openvino(name, str(bundle16))
    assert _without_openvino("ort-cpu", str(bundle16)) == "ort-cpu"
    assert _without_openvino("auto", str(bundle16)) in ("auto", "ort-cpu")  # never a choice that starts OpenVINO
