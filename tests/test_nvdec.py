"""GPU decoding (NVDEC through PyNvVideoCodec): the decisions on the CPU, the real decoder on a GPU.

CPU tests: the decoder choice (every branch), the packets NVDEC is sent (keyframes only; Annex B with parameter
sets, from a real H.264 MP4 written by PyAV here), the NV12 plane and staging arithmetic, the device frame type
through the door and the snippet assembler (its pointers are never dereferenced there: bookkeeping, not a GPU).
The `gpu` tests decode a real H.264 clip with NVDEC and compare the preprocessed images with the CPU path.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import moving_frames

av = pytest.importorskip("av")

from stp_edge.av_source import split_nal_units  # noqa: E402
from stp_edge.cuda.nv12 import Nv12Layout, batch_layout  # noqa: E402
from stp_edge.errors import UsageError  # noqa: E402
from stp_edge.frames import DeviceNV12Frame, FrameError, validate_frame  # noqa: E402
from stp_edge.nvdec import (  # noqa: E402
    NvdecProbe,
    annexb_filter,
    choose_nvdec,
    describe_nvdec,
    nv12_planes,
    nvdec_payloads,
    stream_colour,
)
from stp_edge.pipeline.snippets import SnippetAssembler  # noqa: E402

READY = NvdecProbe("2.2.4", 1)


def write_h264(path, n=40, keyint=16, bframes=2, size=(96, 64), fmt=None):
    frames = moving_frames(n, height=size[1], width=size[0], seed=3)
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={bframes}"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


# --- the choice -------------------------------------------------------------------------------------------------
def test_nvdec_asked_for_runs_where_everything_is_there():
    assert choose_nvdec("nvdec", kind="file", codec="h264", probe=READY, cuda_preprocess=True) == (True, "asked for")
    # preprocessing not known at open (a deployment input): asked for, it runs; the encoder refuses CPU preprocessing
    assert choose_nvdec("nvdec", kind="url", codec=None, probe=READY)[0]


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"probe": NvdecProbe(None, 1, "PyNvVideoCodec is not installed (pip install pynvvideocodec)")},
     "PyNvVideoCodec is not installed"),
    ({"probe": NvdecProbe(None, 0, "PyNvVideoCodec does not load (libnvcuvid.so.1)")}, "libnvcuvid"),
    ({"probe": NvdecProbe("2.2.4", 0, "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)")}, "no CUDA GPU"),
    ({"device": 1}, "CUDA device 1 does not exist (1 visible)"),
    ({"kind": "camera"}, "camera indices are read through OpenCV"),
    ({"codec": "mjpeg"}, "mjpeg codec"),
    ({"cuda_preprocess": False}, "preprocess='cuda'"),
])
def test_nvdec_asked_for_names_what_is_missing(kwargs, named):
    args = {"kind": "file", "codec": "h264", "probe": READY, "cuda_preprocess": True, **kwargs}
    with pytest.raises(UsageError, match="decoder='nvdec' cannot be used") as err:
        choose_nvdec("nvdec", **args)
    assert named in str(err.value)


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"probe": NvdecProbe(None, 1, "PyNvVideoCodec is not installed (pip install pynvvideocodec)")},
     "PyNvVideoCodec is not installed"),
    ({"probe": NvdecProbe("2.2.4", 0, "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)")}, "no CUDA GPU"),
    ({"device": 2}, "CUDA device 2 does not exist"),
    ({"codec": "mpeg4"}, "mpeg4 codec"),  # NVDEC decodes it, but auto keeps MPEG-4 Part 2 on the CPU
    ({"codec": "av1"}, "av1 codec"),  # not on A100/H100's NVDEC: only where asked for
    ({"codec": None}, "an unknown codec"),
    ({"cuda_preprocess": None}, "does not preprocess on CUDA"),
    ({"cuda_preprocess": False}, "does not preprocess on CUDA"),
])
def test_auto_falls_back_to_cpu_decoding_and_says_why(kwargs, reason):
    args = {"kind": "file", "codec": "h264", "probe": READY, "cuda_preprocess": True, **kwargs}
    use, why = choose_nvdec("auto", **args)
    assert not use and why.startswith("auto: ") and reason in why


@pytest.mark.parametrize("codec", ["h264", "hevc", "vp9"])
def test_auto_picks_nvdec_only_with_everything_present(codec):
    use, why = choose_nvdec("auto", kind="file", codec=codec, probe=READY, cuda_preprocess=True)
    assert use and "PyNvVideoCodec 2.2.4" in why and "GPU 0" in why


def test_choice_refuses_other_requests():
    with pytest.raises(UsageError, match="'nvdec' or 'auto'"):
        choose_nvdec("pyav", kind="file", codec="h264", probe=READY)


def test_run_names_the_decoder():
    assert describe_nvdec(READY, 0, "keyframes") == "nvdec (PyNvVideoCodec 2.2.4, GPU 0, keyframes)"


def test_video_source_choice_without_nvdec(tmp_path):
    """Here (no PyNvVideoCodec, no GPU): auto stays on PyAV and says why; nvdec asked for is refused, named."""
    from stp_edge.nvdec import probe_nvdec
    from stp_edge.video import _choose_decoder

    path = write_h264(tmp_path / "a.mp4")
    probe = probe_nvdec()
    if probe.error is None:
        pytest.skip("this machine can decode with NVDEC: the CPU fallback is not what happens here")
    assert _choose_decoder("file", str(path), "auto", "full") == (
        "pyav", "full", "h264 file: FFmpeg decodes, only the frames used are converted to BGR")
    decoder, mode, why = _choose_decoder("file", str(path), "auto", "keyframes", cuda_device=0)
    assert (decoder, mode) == ("pyav", "keyframes") and f"NVDEC not used (auto: {probe.error})" in why
    with pytest.raises(UsageError, match="decoder='nvdec' cannot be used") as err:
        _choose_decoder("file", str(path), "nvdec", "keyframes", cuda_device=0)
    assert probe.error in str(err.value)


def test_open_source_and_cli_take_nvdec(tmp_path):
    """The option exists end to end: the CLI parses it, and a source asked for it here says what is missing."""
    from stp_edge.cli import build_parser
    from stp_edge.nvdec import probe_nvdec
    from stp_edge.video import open_source

    args = build_parser().parse_args(["run", "B.stp", "cam.mp4", "--decoder", "nvdec", "--decode", "keyframes"])
    assert (args.decoder, args.decode) == ("nvdec", "keyframes")
    probe = probe_nvdec()
    if probe.error is None:
        pytest.skip("this machine can decode with NVDEC")
    with pytest.raises(UsageError, match="decoder='nvdec' cannot be used: " + probe.error.split(" (")[0]):
        open_source(write_h264(tmp_path / "o.mp4", n=4), decoder="nvdec")


# --- the packets NVDEC is sent ----------------------------------------------------------------------------------
def _payloads(path, mode):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        bsf = annexb_filter(stream)
        keys, sent = 0, []
        for packet in container.demux(stream):
            if packet.size == 0 and packet.pts is None:
                sent += nvdec_payloads(None, mode, bsf)
                break
            keys += bool(packet.is_keyframe)
            sent += nvdec_payloads(packet, mode, bsf)
    return keys, sent


def test_keyframes_mode_sends_only_keyframes_in_annex_b(tmp_path):
    path = write_h264(tmp_path / "k.mp4", n=40, keyint=16)
    keys, sent = _payloads(path, "keyframes")
    assert keys == 3 and len(sent) == 3  # frames 0, 16, 32: nothing else reaches the decoder
    for data, pts, key in sent:
        assert key and pts is not None
        assert data.startswith(b"\x00\x00\x00\x01") or data.startswith(b"\x00\x00\x01")  # start codes, not AVCC
        types = [u[0] & 0x1F for u in split_nal_units(data, None)]
        assert 7 in types and 8 in types and types.index(8) < types.index(5)  # SPS, PPS in band before the IDR


def test_full_mode_sends_every_packet_in_order_of_the_container(tmp_path):
    path = write_h264(tmp_path / "f.mp4", n=40, keyint=16, bframes=2)
    keys, sent = _payloads(path, "full")
    assert len(sent) == 40 and sum(k for _, _, k in sent) == keys == 3
    non_idr = [split_nal_units(d, None) for d, _, k in sent if not k]
    assert all(any(u[0] & 0x1F == 1 for u in units) for units in non_idr)  # non-IDR slices


def test_mpegts_needs_no_filter(tmp_path):
    path = write_h264(tmp_path / "t.ts", n=20, keyint=10, fmt="mpegts")
    with av.open(str(path)) as container:
        assert annexb_filter(container.streams.video[0]) is None
    _, sent = _payloads(path, "keyframes")
    assert len(sent) == 2 and all(d.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01")) for d, _, _ in sent)


# --- planes, colour and staging ---------------------------------------------------------------------------------
def test_nv12_planes_from_pynvvideocodec_views():
    # PyNvVideoCodec 2.x's NV12 views (GetCAIMemoryViewAndDLPack): luma (H, W, 1), chroma (H/2, W/2, 2), pitch W
    luma = {"shape": (1080, 1920, 1), "strides": (1920, 1, 1), "typestr": "|u1", "data": (0x7000_0000, False)}
    chroma = {"shape": (540, 960, 2), "strides": (1920, 2, 1), "typestr": "|u1",
              "data": (0x7000_0000 + 1920 * 1080, False)}
    p = nv12_planes(luma, chroma)
    assert (p.ptr, p.uv_ptr - p.ptr, p.pitch, p.height, p.width) == (0x7000_0000, 1920 * 1080, 1920, 1080, 1920)
    pitched = nv12_planes({**luma, "strides": (2048, 1, 1)}, {**chroma, "strides": (2048, 2, 1)})
    assert pitched.pitch == 2048
    assert nv12_planes({**luma, "strides": None}, {**chroma, "strides": None}).pitch == 1920


@pytest.mark.parametrize(("luma", "chroma", "match"), [
    ({"typestr": "|u2"}, {}, "8-bit NV12"),  # P016: a 10-bit stream
    ({}, {"shape": (1080, 1920, 1)}, "expected NV12's"),  # 4:4:4 planes
    ({}, {"strides": (2048, 2, 1)}, "luma pitch 1920 differs"),
])
def test_nv12_planes_refuses_what_is_not_nv12(luma, chroma, match):
    base_l = {"shape": (1080, 1920, 1), "strides": (1920, 1, 1), "typestr": "|u1", "data": (4096, False)}
    base_c = {"shape": (540, 960, 2), "strides": (1920, 2, 1), "typestr": "|u1", "data": (4096 + 1920 * 1080, False)}
    with pytest.raises(UsageError, match=match):
        nv12_planes({**base_l, **luma}, {**base_c, **chroma})


def test_stream_colour_follows_the_cpu_path(tmp_path):
    assert stream_colour(1, 1) == ("bt709", False)
    assert stream_colour(2, 2) == ("bt601", True)  # unspecified matrix: swscale's BT.601; JPEG range: full
    assert stream_colour(None, None) == ("bt601", False)
    path = write_h264(tmp_path / "c.mp4", n=4)
    with av.open(str(path)) as container:
        cc = container.streams.video[0].codec_context
        assert stream_colour(cc.colorspace, cc.color_range) == ("bt601", False)  # x264's defaults: untagged


def test_staging_layout_sizes_and_offsets():
    lay = Nv12Layout(1080, 1920)
    assert (lay.pitch, lay.uv_offset, lay.frame_stride) == (1920, 1920 * 1080, 1920 * 1620)
    assert lay.nbytes(4) == 4 * 1920 * 1620 and lay.offset(3) == 3 * 1920 * 1620
    with pytest.raises(UsageError, match="even"):
        Nv12Layout(1079, 1920)


def test_batch_layout_refuses_mixed_frames():
    a = DeviceNV12Frame(4096, 2048, 64, 96)
    assert batch_layout([a, DeviceNV12Frame(8192, 96, 64, 96)]) == Nv12Layout(64, 96)  # pitches may differ
    with pytest.raises(UsageError, match="frame 1 is 64x128"):
        batch_layout([a, DeviceNV12Frame(8192, 128, 64, 128)])
    with pytest.raises(UsageError, match="bt709"):
        batch_layout([a, DeviceNV12Frame(8192, 96, 64, 96, matrix="bt709")])


# --- the device frame through the door and the assembler ---------------------------------------------------------
def test_device_frame_passes_the_door_as_it_is():
    f = DeviceNV12Frame(4096, 128, 64, 96, matrix="bt709", index=7)
    assert validate_frame(f, 7) is f and f.shape == (64, 96, 3) and f.copy() is f
    for bad, match in [(DeviceNV12Frame(4096, 64, 64, 96), "pitch 64"), (DeviceNV12Frame(4096, 96, 63, 96), "even"),
                       (DeviceNV12Frame(4096, 96, 64, 96, uv_offset=100), "overlaps"),
                       (DeviceNV12Frame(0, 96, 64, 96), "without memory")]:
        with pytest.raises(FrameError, match=match):
            validate_frame(bad, 3, stream=1)
    with pytest.raises(FrameError, match="no host pixels"):
        f.decode()


def _device_frames(n, keys=()):
    return [DeviceNV12Frame(0x1000 * (i + 1), 96, 64, 96, index=i, key=i in keys) for i in range(n)]


def test_assembler_keeps_device_frames_by_reference():
    frames = _device_frames(40)
    asm = SnippetAssembler(16, 1)
    snippets = [s for s in (asm.push(asm.prepare(f)) for f in frames) if s is not None]
    tail = asm.flush()
    assert [s.frames[0] for s in snippets] == [frames[8], frames[24]]  # the objects themselves: nothing copied
    assert tail.frames[0] is frames[39] and snippets[0].frame_shape == (64, 96)  # the last frame stands in


def test_keyframe_sampling_finds_device_keyframes():
    frames = _device_frames(32, keys={0, 16})
    asm = SnippetAssembler(16, 1, sampling="keyframe")
    snippets = [s for s in (asm.push(asm.prepare(f)) for f in frames) if s is not None]
    assert [s.frames[0] for s in snippets] == [frames[0], frames[16]] and asm.fallbacks == 0


def test_cpu_preprocessing_refuses_device_frames_by_name():
    from stp_edge.pipeline.encode import Encoder
    from stp_edge.preprocess import CpuPreprocessor

    enc = Encoder(runner=None, preprocess=CpuPreprocessor(32), config=None)
    with pytest.raises(UsageError, match="preprocessing is cpu: use preprocess='cuda'"):
        enc.preprocess_frames(_device_frames(2))


# --- on a GPU ------------------------------------------------------------------------------------------------------
def _gpu_or_skip():
    from stp_edge.nvdec import probe_nvdec

    probe = probe_nvdec()
    if probe.error is not None:
        pytest.skip(f"NVDEC cannot run here: {probe.error}")
    try:
        from stp_edge.cuda import CudaPreprocessor

        pre = CudaPreprocessor(224, max_batch=4)
    except Exception as exc:  # the CUDA preprocessor's binding missing on this image
        pytest.skip(f"the CUDA preprocessor does not start here: {exc}")
    return pre


# NVDEC and FFmpeg decode H.264 to the same YUV (a conformant decoder's output is exact: the test below checks it
# byte for byte); what differs is the YUV -> RGB conversion: swscale's bgr24 on the CPU path, the kernel's NV12
# conversion on the GPU (chroma upsampling at colour edges, rounding). Normalised units (CLIP's std ~0.27): 99% of
# values within 0.1 (~7 levels of 255), 0.02 (~1.4 levels) on average; the largest difference is reported.
P99_ABS, MEAN_ABS = 0.1, 0.02


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["full", "keyframes"])
def test_nvdec_frames_preprocess_like_the_cpu_path(tmp_path, mode):
    from stp_edge.av_source import AvCapture
    from stp_edge.frames import SkippedFrame
    from stp_edge.nvdec import NvdecCapture
    from stp_edge.preprocess import CpuPreprocessor

    pre = _gpu_or_skip()
    path = write_h264(tmp_path / "g.mp4", n=48, keyint=16, size=(640, 480))
    cpu = AvCapture(path, "full")
    gpu = NvdecCapture(path, mode, device=0, sampling=(16, [8]))
    assert gpu.opened, gpu.error
    try:
        ref, got, kinds = [], [], []
        for i in range(48):
            c, g = cpu.read(), gpu.read()
            assert c is not None and g is not None, f"frame {i}: a reader ended early"
            kinds.append("d" if isinstance(g, DeviceNV12Frame) else "s" if isinstance(g, SkippedFrame) else "?")
            if isinstance(g, DeviceNV12Frame):
                got.append(pre.to_host(pre.from_device_nv12([g])))
                ref.append(CpuPreprocessor(224)([c.decode()]))
        assert cpu.read() is None and gpu.read() is None
    finally:
        cpu.release()
        gpu.release()
        pre.close()
    expected = {"full": {0, 8, 16, 24, 32, 40, 47}, "keyframes": {0, 16, 32}}[mode]  # sampled, keys, the last
    assert {i for i, k in enumerate(kinds) if k == "d"} == expected, "".join(kinds)
    diff = np.abs(np.concatenate(got) - np.concatenate(ref))
    assert np.concatenate(ref).std() > 0.1  # real pictures, not a constant
    p99 = float(np.percentile(diff, 99))
    assert p99 <= P99_ABS and diff.mean() <= MEAN_ABS, f"p99 {p99:.4f}, mean {diff.mean():.4f}, max {diff.max():.4f}"


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["full", "nonref", "keyframes"])
def test_nvdec_decodes_the_same_nv12_as_ffmpeg(tmp_path, mode):
    """H.264 decoding is exact in a conformant decoder: the kept frames' NV12 bytes equal FFmpeg's, frame for frame."""
    from stp_edge.av_source import AvCapture
    from stp_edge.frames import SkippedFrame
    from stp_edge.nvdec import NvdecCapture, probe_nvdec

    probe = probe_nvdec()
    if probe.error is not None:
        pytest.skip(f"NVDEC cannot run here: {probe.error}")
    path = write_h264(tmp_path / "e.mp4", n=48, keyint=16, size=(320, 240))
    cpu = AvCapture(path, "full")
    gpu = NvdecCapture(path, mode, device=0, sampling=(16, [8]))
    assert gpu.opened, gpu.error
    kept = []
    try:
        for i in range(48):
            c, g = cpu.read(), gpu.read()
            assert c is not None and g is not None, f"frame {i}: a reader ended early"
            assert isinstance(g, (DeviceNV12Frame, SkippedFrame)), type(g)
            if isinstance(g, DeviceNV12Frame):
                assert (g.height, g.width, g.pitch) == (240, 320, 320) and g.matrix == "bt601"
                kept.append(i)
                np.testing.assert_array_equal(gpu.download_nv12(g), c.frame.to_ndarray(format="nv12"),
                                              err_msg=f"frame {i}")
        assert cpu.read() is None and gpu.read() is None
    finally:
        cpu.release()
        gpu.release()
    assert set(kept) >= {0, 16, 32} and (mode == "keyframes") == (8 not in kept)


def test_run_refuses_nvdec_with_cpu_preprocessing_before_reading(handmade_bundle, tmp_path, capsys):
    from stp_edge.cli import main

    clip = write_h264(tmp_path / "r.mp4", n=20)
    assert main(["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--decoder", "nvdec"]) == 2
    err = capsys.readouterr().err
    assert "--decoder nvdec keeps frames on the GPU" in err and "preprocesses with cpu" in err
