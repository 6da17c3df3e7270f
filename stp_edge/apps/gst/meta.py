"""The `StpEdgeMeta` custom buffer meta: one per snippet result, on the buffer that completed it.

GStreamer 1.20+ custom metas carry a `Gst.Structure`. From PyGObject (3.42) `CustomMeta.get_structure()`
returns a *copy*: fields set on it are lost. So writing goes through `gst_custom_meta_get_structure` with
ctypes (the real structure, filled field by field from a Python-built one), and reading every meta of a buffer
(there may be several: a provisional and a final result) goes through `gst_buffer_iterate_meta_filtered`.
PyGObject hashes a boxed or struct wrapper by its C pointer, which is how the C functions get their arguments.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Mapping
from typing import Any

from stp_edge.apps.gst import META

_APT = "apt install python3-gst-1.0 gstreamer1.0-python3-plugin-loader"


def gst() -> Any:
    """The `Gst` module, initialised; an error naming the packages to install when it is missing."""
    from stp_edge._deps import MissingDependencyError

    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError) as exc:
        raise MissingDependencyError(f"GStreamer's Python bindings are not importable ({exc}): {_APT} (Debian), "
                                     "and run with the system Python or a venv that sees its gi") from exc
    Gst.init(None)
    return Gst


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("gstreamer-1.0") or "libgstreamer-1.0.so.0")
    glib = ctypes.CDLL(ctypes.util.find_library("glib-2.0") or "libglib-2.0.so.0")
    gobject = ctypes.CDLL(ctypes.util.find_library("gobject-2.0") or "libgobject-2.0.so.0")
    p, s = ctypes.c_void_p, ctypes.c_char_p
    for name, res, args in (
        ("gst_custom_meta_get_structure", p, [p]),
        ("gst_structure_get_value", p, [p, s]),
        ("gst_structure_set_value", None, [p, s, p]),
        ("gst_structure_to_string", p, [p]),
        ("gst_buffer_iterate_meta_filtered", p, [p, ctypes.POINTER(p), ctypes.c_size_t]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    glib.g_free.argtypes = [p]
    gobject.g_type_from_name.restype, gobject.g_type_from_name.argtypes = ctypes.c_size_t, [s]
    lib.g_free = glib.g_free
    lib.g_type_from_name = gobject.g_type_from_name
    return lib


def register() -> None:
    """Register `StpEdgeMeta` once per process (registering twice only warns, but warns)."""
    Gst = gst()
    if Gst.Meta.get_info(META) is None:
        Gst.Meta.register_custom(META, [], None, None)


def structure(name: str, fields: Mapping[str, Any]) -> Any:
    """A `Gst.Structure` named `name` holding `fields` (values None are left out).

    Python ints become gint64 (a frame count outgrows gint), floats gdouble, bools gboolean, str strings.
    """
    Gst = gst()
    from gi.repository import GObject

    out = Gst.Structure.new_empty(name)
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            out.set_value(key, value)
        else:
            out.set_value(key, GObject.Value(GObject.TYPE_INT64, int(value)))
    return out


def attach(buffer: Any, fields: Mapping[str, Any]) -> None:
    """Add one `StpEdgeMeta` to a writable `Gst.Buffer`, holding `fields` as `structure` stores them."""
    register()
    staged = structure(META, fields)
    meta = buffer.add_custom_meta(META)
    if meta is None:
        raise RuntimeError(f"could not add {META} to the buffer (is it writable?)")
    lib = _lib()
    target = lib.gst_custom_meta_get_structure(hash(meta))
    for i in range(staged.n_fields()):
        key = staged.nth_field_name(i).encode()
        lib.gst_structure_set_value(target, key, lib.gst_structure_get_value(hash(staged), key))


def read(buffer: Any) -> list[dict[str, Any]]:
    """Every `StpEdgeMeta` on a `Gst.Buffer`, oldest first, as dicts of their fields."""
    Gst = gst()
    register()
    lib = _lib()
    api = lib.g_type_from_name(f"{META}-api".encode())
    state = ctypes.c_void_p(None)
    out = []
    while True:
        meta = lib.gst_buffer_iterate_meta_filtered(hash(buffer), ctypes.byref(state), api)
        if not meta:
            return out
        text_p = lib.gst_structure_to_string(lib.gst_custom_meta_get_structure(meta))
        try:
            text = ctypes.string_at(text_p).decode()
        finally:
            lib.g_free(text_p)
        structure = Gst.Structure.from_string(text)[0]
        out.append({structure.nth_field_name(i): structure.get_value(structure.nth_field_name(i))
                    for i in range(structure.n_fields())})
