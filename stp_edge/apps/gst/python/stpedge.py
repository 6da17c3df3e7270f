"""`stpedge`: a GStreamer element that runs the stp-edge detector on raw video and passes the buffers through.

Loaded by GStreamer's python plugin loader (it reads `<GST_PLUGIN_PATH entry>/python/*.py`); see
docs/gstreamer.md and `python -m stp_edge.apps.gst --env`. Per snippet result it posts a "stpedge-snippet"
element message and attaches a `StpEdgeMeta` to the buffer that completed the snippet; events open, update and
end as "stpedge-event" messages with type begin / update / end (as motioncells posts motion begin / finished).
With draw=true the latest result is drawn onto the buffers in place.

Only gi is imported at load time, so the element registers (and `gst-inspect-1.0 stpedge` lists it) even
where stp_edge or its dependencies cannot be imported; that is reported as an error when the element starts.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstBase", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, GObject, Gst, GstBase, GstVideo  # noqa: E402

# Installed (not editable) this file lies in <site-packages>/stp_edge/apps/gst/python/: that site-packages holds
# stp_edge and its dependencies. From a checkout, PYTHONPATH must name the venv's site-packages and the repo.
if importlib.util.find_spec("stp_edge") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

CAPS = Gst.Caps.from_string("video/x-raw, format=(string){ BGR, RGB }, width=(int)[ 1, 32767 ], "
                            "height=(int)[ 1, 32767 ], framerate=(fraction)[ 0/1, 2147483647/1 ]")
RW = GObject.ParamFlags.READWRITE
UNSET = -1.0  # a double property left at this takes its default from the bundle
PROPERTIES = {  # GObject consumes __gproperties__; the defaults are read from here
    "bundle": (str, "bundle", "Bundle directory (required)", None, RW),
    "backend": (str, "backend", "auto, trt, ort, ort-cuda, ort-cpu or triton://HOST:PORT", "auto", RW),
    "threshold": (float, "threshold", "Score threshold; -1: the bundle's score_threshold",
                  UNSET, 1.0, UNSET, RW),
    "camera": (str, "camera", "Camera name in records and events (default: the element's name)", None, RW),
    "source": (str, "source", "Source named in records (default: the pipeline's one source URI)", None, RW),
    "spatial": (str, "spatial", "When the spatial stream runs: flagged, all or off (default: the bundle's)",
                None, RW),
    "lookahead": (int, "lookahead", "Provisional results N snippets after theirs; -1: final results only",
                  -1, 64, -1, RW),
    "draw": (bool, "draw", "Draw the score, anomaly map and boxes onto the buffers in place", False, RW),
    "off-threshold": (float, "off-threshold", "An open event ends once the score stays below this; "
                      "-1: the threshold", UNSET, 1.0, UNSET, RW),
    "min-snippets": (int, "min-snippets", "Snippets in a row at or above the threshold that open an event; "
                     "0: the event policy's default", 0, 1000, 0, RW),
}


class StpEdge(GstBase.BaseTransform):
    """The in-place transform: detector per buffer, results as bus messages and buffer meta."""

    __gtype_name__ = "stpedge"
    __gstmetadata__ = ("stp-edge anomaly detector", "Filter/Analyzer/Video",
                       "Runs an stp-edge bundle on raw video: per-snippet results as buffer meta (StpEdgeMeta) and "
                       "element messages (stpedge-snippet, stpedge-event begin/update/end)", "stp-edge")
    __gsttemplates__ = (Gst.PadTemplate.new("src", Gst.PadDirection.SRC, Gst.PadPresence.ALWAYS, CAPS),
                        Gst.PadTemplate.new("sink", Gst.PadDirection.SINK, Gst.PadPresence.ALWAYS, CAPS))
    __gproperties__ = PROPERTIES

    def __init__(self) -> None:
        super().__init__()
        self.set_in_place(True)
        self.set_passthrough(False)  # a writable buffer: metas are added to it (and pixels drawn with draw=true)
        self.props_: dict[str, Any] = {name.replace("-", "_"): spec[-2] for name, spec in PROPERTIES.items()}
        self.analysis: Any = None
        self.info: Any = None  # GstVideo.VideoInfo of the negotiated caps

    def do_get_property(self, prop: GObject.ParamSpec) -> Any:
        return self.props_[prop.name.replace("-", "_")]

    def do_set_property(self, prop: GObject.ParamSpec, value: Any) -> None:
        self.props_[prop.name.replace("-", "_")] = value

    # --- errors ----------------------------------------------------------------------------------------------
    def _error(self, domain: Any, code: Any, text: str, debug: str = "") -> None:
        """Post an error message on the bus naming the problem (what `GST_ELEMENT_ERROR` does in C)."""
        err = GLib.Error.new_literal(domain.quark(), text, int(code))
        self.post_message(Gst.Message.new_error(self, err, debug or text))

    # --- lifecycle -------------------------------------------------------------------------------------------
    def do_start(self) -> bool:
        p = self.props_
        try:
            from stp_edge.apps.gst import meta
            from stp_edge.apps.gst.analysis import Analysis, Settings

            meta.register()
            settings = Settings(
                bundle=p["bundle"] or "", camera=p["camera"] or self.get_name(), source=p["source"] or "",
                backend=p["backend"] or "auto", threshold=None if p["threshold"] < 0 else p["threshold"],
                spatial=p["spatial"] or None, lookahead=None if p["lookahead"] < 0 else p["lookahead"],
                off_threshold=None if p["off_threshold"] < 0 else p["off_threshold"],
                min_snippets=p["min_snippets"] or None)
            self.analysis = Analysis(settings)
        except ImportError as exc:
            self._error(Gst.LibraryError, Gst.LibraryError.INIT,
                        f"stpedge cannot import {exc.name or exc}: put the venv's site-packages and stp_edge on "
                        "PYTHONPATH (python -m stp_edge.apps.gst --env)", f"{exc!r}; sys.path={sys.path}")
            return False
        except Exception as exc:  # a missing or broken bundle, a bad property: named in the message
            missing = not p["bundle"] or "no such" in str(exc).lower() or isinstance(exc, FileNotFoundError)
            domain, code = ((Gst.ResourceError, Gst.ResourceError.NOT_FOUND) if missing
                            else (Gst.LibraryError, Gst.LibraryError.SETTINGS))
            self._error(domain, code, f"stpedge: {exc}", f"{type(exc).__name__}: {exc}")
            return False
        return True

    def do_stop(self) -> bool:
        if self.analysis is not None:
            self.analysis.close()
            self.analysis = None
        return True

    def do_set_caps(self, incaps: Gst.Caps, outcaps: Gst.Caps) -> bool:
        info = GstVideo.VideoInfo.new_from_caps(incaps)
        fmt = info.finfo.format if info is not None else None
        if fmt not in (GstVideo.VideoFormat.BGR, GstVideo.VideoFormat.RGB):
            self._error(Gst.CoreError, Gst.CoreError.NEGOTIATION,
                        f"stpedge takes video/x-raw BGR or RGB, got {incaps.to_string()} (put videoconvert before)")
            return False
        self.info = info
        return True

    def do_sink_event(self, event: Gst.Event) -> bool:
        if event.type == Gst.EventType.EOS and self.analysis is not None:
            try:
                self._post(self.analysis.finish(), None)
            except Exception as exc:
                self._error(Gst.StreamError, Gst.StreamError.FAILED, f"stpedge: at the end of stream: {exc}",
                            f"{type(exc).__name__}: {exc}")
        return GstBase.BaseTransform.do_sink_event(self, event)

    # --- frames ----------------------------------------------------------------------------------------------
    def do_transform_ip(self, buf: Gst.Buffer) -> Gst.FlowReturn:
        if self.analysis is None or self.info is None:
            self._error(Gst.CoreError, Gst.CoreError.NEGOTIATION, "stpedge: a buffer came before the caps")
            return Gst.FlowReturn.NOT_NEGOTIATED
        draw = bool(self.props_["draw"])
        flags = Gst.MapFlags.READ | (Gst.MapFlags.WRITE if draw else 0)
        media_s, duration_s = self._times(buf)
        live = False
        if self.analysis.frames == 0:
            live = self._is_live()
            if not self.analysis.settings.source:
                self.analysis.settings.source = self._source()
        with buf.map(flags) as mapped:
            try:
                frame = self._frame(buf, mapped.data)
                rgb = self.info.finfo.format == GstVideo.VideoFormat.RGB
                step = self.analysis.push(frame[..., ::-1] if rgb else frame, media_s, duration_s, live=live)
                if draw:
                    drawn = self.analysis.draw(frame[..., ::-1] if rgb else frame)
                    frame[...] = drawn[..., ::-1] if rgb else drawn
            except Exception as exc:
                self._error(Gst.StreamError, Gst.StreamError.FAILED,
                            f"stpedge: frame {self.analysis.frames}: {exc}", f"{type(exc).__name__}: {exc}")
                return Gst.FlowReturn.ERROR
            finally:
                frame = None  # no view of the mapped memory outlives the map
        self._post(step, buf)
        return Gst.FlowReturn.OK

    def _frame(self, buf: Gst.Buffer, data: memoryview) -> Any:
        """An (H, W, 3) numpy view of the mapped buffer, zero-copy, honouring stride and offset."""
        import numpy as np

        info = self.info
        stride, offset = info.stride[0], info.offset[0]
        vmeta = GstVideo.buffer_get_video_meta(buf)
        if vmeta is not None:  # an upstream pool's own layout
            stride, offset = vmeta.stride[0], vmeta.offset[0]
        return np.ndarray((info.height, info.width, 3), np.uint8, buffer=data, offset=offset,
                          strides=(stride, 3, 1))

    def _times(self, buf: Gst.Buffer) -> tuple[float, float]:
        """(media time, duration) of a buffer in seconds: its PTS, or its index over the frame rate."""
        fps = self.info.fps_n / self.info.fps_d if self.info.fps_d and self.info.fps_n else 25.0
        dur = buf.duration / Gst.SECOND if buf.duration != Gst.CLOCK_TIME_NONE else 1.0 / fps
        if buf.pts != Gst.CLOCK_TIME_NONE:
            return buf.pts / Gst.SECOND, dur
        return self.analysis.frames / fps, dur

    def _is_live(self) -> bool:
        query = Gst.Query.new_latency()
        return bool(self.sinkpad.peer_query(query) and query.parse_latency()[0])

    def _source(self) -> str:
        """The pipeline's one source URI (a file's path), credentials masked; "" when there is not exactly one."""
        from stp_edge.video import display_source

        top = self
        while top.get_parent() is not None:
            top = top.get_parent()
        if not isinstance(top, Gst.Bin):
            return ""
        uris = [el.get_uri() for el in top.iterate_recurse()
                if isinstance(el, Gst.URIHandler) and el.get_uri_type() == Gst.URIType.SRC and el.get_uri()]
        if len(uris) != 1:
            return ""
        location = Gst.uri_get_location(uris[0]) if uris[0].startswith("file:") else None
        return display_source(location or uris[0])

    def _post(self, step: Any, buf: Gst.Buffer | None) -> None:
        """Bus messages for the step's records and events; its records as metas on `buf` (None at EOS)."""
        from stp_edge.apps.gst import EVENT_MESSAGE, SNIPPET_MESSAGE, meta
        from stp_edge.apps.gst.analysis import event_fields, meta_fields, snippet_fields

        for record in step.records:
            if buf is not None:
                meta.attach(buf, meta_fields(record))
            self.post_message(Gst.Message.new_element(self, meta.structure(SNIPPET_MESSAGE, snippet_fields(record))))
        for message in step.events:
            self.post_message(Gst.Message.new_element(self, meta.structure(EVENT_MESSAGE, event_fields(message))))


GObject.type_register(StpEdge)
__gstelementfactory__ = ("stpedge", Gst.Rank.NONE, StpEdge)
