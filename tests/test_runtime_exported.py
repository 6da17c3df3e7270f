"""The runtime on bundles from the real exporter: streaming equals offline, and no torch in the runtime process."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from stp_edge.api import Detector
from stp_edge.synthetic import generate_clip


@pytest.fixture(scope="module")
def long_clip():
    # 40 snippets of 16 frames plus a partial one: several times the streaming window (2c+1 = 19 snippets)
    return generate_clip(7, width=160, height=120, num_frames=40 * 16 + 5, anomaly="fire")


def test_streaming_equals_offline_on_a_long_clip(exported_tiny_bundle, long_clip):
    frames = list(long_clip.frames)
    with Detector.load(exported_tiny_bundle, backend="ort-cpu", preprocess="cpu", spatial_on="all") as det:
        streamed = []
        for f in frames:
            streamed += det.push(f)
        streamed += det.flush()
        offline, offline_probs = det.offline_scores(frames)
    assert [r.snippet for r in streamed] == list(range(41))
    assert streamed[-1].frame_end == len(frames)
    assert np.std(offline) > 1e-4  # scores vary over the clip, so equality is not trivial
    np.testing.assert_allclose([r.score for r in streamed], offline, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.stack([r.class_probs for r in streamed]), offline_probs, atol=1e-4, rtol=0)
    for r in streamed:
        assert set(r.timings) >= {"preprocess", "encoder", "temporal", "spatial"}
        assert r.anomaly_map.shape == (7, 7)


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "tensorrt", "pycuda", "onnxscript", "onnxsim"):
            raise ImportError(f"blocked for the test: {name}")
        return None
sys.meta_path.insert(0, Block())
"""


def test_bundle_runs_in_a_fresh_process_without_torch(exported_tiny_bundle, long_clip, tmp_path):
    frames = np.stack(long_clip.frames[:16 * 12])
    np.save(tmp_path / "frames.npy", frames)
    code = BLOCKER + textwrap.dedent(f"""
        import json, numpy as np
        import stp_edge
        try:
            import torch  # noqa: F401
            raise SystemExit("torch imported despite the blocker")
        except ImportError:
            pass
        frames = np.load({str(tmp_path / "frames.npy")!r})
        with stp_edge.Detector.load({str(exported_tiny_bundle)!r}, backend="ort-cpu") as det:
            out = []
            for f in frames:
                out += det.push(f)
            out += det.flush()
        assert not [m for m in sys.modules if m.split(".")[0] == "torch"]
        print(json.dumps([r.score for r in out]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads(proc.stdout.strip().splitlines()[-1])
    with Detector.load(exported_tiny_bundle, backend="ort-cpu") as det:
        here = []
        for f in frames:
            here += det.push(f)
        here += det.flush()
    assert len(scores) == 12
    np.testing.assert_allclose(scores, [r.score for r in here], atol=1e-6)
