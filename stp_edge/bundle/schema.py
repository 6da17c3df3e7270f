"""The published JSON Schema of manifest.json and the small validator the loader enforces it with.

`MANIFEST_SCHEMA` is the schema; docs/manifest.schema.json is this dict written out
(`python -m stp_edge.bundle.schema > docs/manifest.schema.json`; a test checks the two are the same and that
the `jsonschema` package agrees with `validate`). The validator interprets the schema itself, so the runtime
needs no `jsonschema`; it knows the keywords below and refuses a schema that uses any other, so no keyword is
ever silently ignored. It is stricter than JSON Schema in one place: an "integer" must be written without a
fraction (JSON Schema also admits 32.0), so numbers reach the runtime as Python ints.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from stp_edge.errors import StpEdgeError, UsageError

SCHEMA_ID = "https://stp-edge.dev/schemas/manifest-1.schema.json"

# A bundle-relative POSIX path: components start with a letter, digit or underscore (so never "", ".", ".." or a
# hidden name) and use only [A-Za-z0-9._-]; no leading "/", no backslash, no drive letter, no control character.
PATH_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _int(lo: int, hi: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _text(max_len: int = 200) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_len}


def _texts(max_items: int = 1000, min_items: int = 0) -> dict[str, Any]:
    return {"type": "array", "items": _text(), "minItems": min_items, "maxItems": max_items}


def _obj(props: dict[str, Any], required: list[str] | None = None, extra: bool | dict = False) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": extra}


_PROB = {"type": "number", "minimum": 0, "maximum": 1}
_PRECISION = {"enum": ["fp32", "fp16", "int8"]}
_PATH = {"type": "string", "pattern": PATH_PATTERN, "maxLength": 255}

_VISION = _obj({
    "image_size": _int(1, 8192), "patch_size": _int(1, 8192), "width": _int(1, 65536), "layers": _int(1, 1024),
    "heads": _int(1, 1024), "embed_dim": _int(1, 65536), "stem": {"enum": ["patch", "conv"]},
    "stem_width": _int(1, 65536), "stem_centred": {"type": "boolean"}, "patch_attention": _int(-1, 8192),
})
_TEXT = _obj({"context_length": _int(1, 4096), "vocab_size": _int(1, 1 << 24), "width": _int(1, 65536),
              "layers": _int(1, 1024), "heads": _int(1, 1024)})
_CONFIG = _obj({
    "vision": {"$ref": "#/$defs/vision"}, "text": {"$ref": "#/$defs/text"},
    "snippet_len": _int(1, 4096), "frames_per_snippet": _int(1, 4096),
    "region_mode": {"enum": ["tokens", "crops"]}, "region_grid": _int(1, 256), "motion_topk": _int(1, 65536),
    # Bounded so the temporal context c = 1 + layers * floor(sigma * ln(1/tol)) stays a usable window.
    "adapter_layers": _int(0, 16),
    "adapter_sigma": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
    "adapter_tol": {"type": "number", "minimum": 1e-12, "exclusiveMaximum": 1},
    "ffn_mult": _int(1, 64), "class_names": _texts(min_items=2), "prompt_ctx": _int(0, 1024),
    "temperature": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
    "normal_queries": _texts(), "abnormal_queries": _texts(),
    "spatial_queries": {"enum": ["text", "class_prompts"]}, "score_threshold": _PROB,
    "spatial_on": {"enum": ["flagged", "all"]}, "box_threshold": _PROB,
    # Optional (manifests written before them mean the defaults: region term on, "distance" adapter, "clip").
    "region_term": {"type": "boolean"}, "adapter_form": {"enum": ["distance", "exp"]},
    "adapter_window": _int(1, 4096), "preprocess": {"enum": ["clip", "vadclip"]},
    "box_rule": {"enum": ["components", "best_window"]},  # optional: absent means "components"
    "region_extent": {"enum": ["center", "frame"]},  # optional: absent means "center"
})
_CONFIG["required"] = [k for k in _CONFIG["required"] if k not in (
    "region_term", "adapter_form", "adapter_window", "preprocess", "box_rule", "region_extent")]
_PREPROCESS = _obj({
    "size": _int(1, 8192), "interpolation": _text(64), "crop": _text(64),
    "mean": {"type": "array", "items": {"type": "number", "minimum": -1000, "maximum": 1000},
             "minItems": 3, "maxItems": 3},
    "std": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
            "minItems": 3, "maxItems": 3},
    "input": _text(64), "layout": _text(64),
    # Optional (manifests written before them mean: CLIP's short-side resize, no mirror, the centre crop).
    "resize": {"type": ["array", "null"], "items": _int(1, 16384), "minItems": 2, "maxItems": 2},
    "mirror": {"type": "boolean"}, "frame_policy": {"enum": ["center", "pad", "tiles"]},
    "region_grid": _int(0, 16),  # optional: absent means 0 (regions from the centre view)
})
_PREPROCESS["required"] = [k for k in _PREPROCESS["required"]
                           if k not in ("resize", "mirror", "frame_policy", "region_grid")]
# name -> shape; a dimension is a size >= 1 or a symbolic name ("B", "T") for a dynamic axis.
_TENSORS = {"type": "object", "minProperties": 1, "maxProperties": 16,
            "propertyNames": {"pattern": _NAME, "maxLength": 64},
            "additionalProperties": {"type": "array", "minItems": 1, "maxItems": 8,
                                     "items": {"type": ["integer", "string"], "minimum": 1, "maximum": 1 << 24,
                                               "pattern": _NAME, "maxLength": 16}}}
_GRAPH = _obj({"file": _PATH, "inputs": {"$ref": "#/$defs/tensors"}, "outputs": {"$ref": "#/$defs/tensors"}})
_ENGINE = _obj({
    "dir": _PATH, "precision": _PRECISION,
    "tensorrt_version": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+){0,3}$"},
    "gpu_name": _text(), "compute_capability": {"type": "string", "pattern": r"^[0-9]{1,2}\.[0-9]{1,2}$"},
    "build_flags": {"type": "object", "maxProperties": 64, "properties": {
        "version_compatible": {"type": "boolean"}, "hardware_compatibility": {"type": ["string", "null"]}}},
    "platform": {"type": "object", "maxProperties": 16, "properties": {
        "os": _text(64), "arch": _text(64), "integrated": {"type": ["boolean", "null"]}}},
}, required=["dir", "precision", "tensorrt_version", "gpu_name", "compute_capability"])

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "stp-edge bundle manifest (manifest.json), schema_version 1",
    "description": "See docs/bundle-format.md for the meaning of every key and the checksum and path rules.",
    **_obj({
        "schema_version": {"const": 1},
        "stp_edge_version": _text(64),
        "created": _text(64),
        "config": {"$ref": "#/$defs/config"},
        "preprocess": {"$ref": "#/$defs/preprocess"},
        "snippet_len": _int(1, 4096),
        "class_names": _texts(min_items=2),
        "spatial_queries": _obj({
            "normal": _texts(),
            "abnormal": {"type": "array", "maxItems": 1000, "items": {
                "type": "array", "minItems": 2, "maxItems": 2,
                "prefixItems": [_text(), _int(1, 1000)]}},
        }),
        "thresholds": _obj({"score": _PROB, "box": _PROB}),
        "precision": _PRECISION,
        "opset": _int(7, 100),
        "graphs": _obj({g: {"$ref": "#/$defs/graph"} for g in ("encoder", "temporal", "spatial")}),
        "files": {"type": "object", "minProperties": 1, "maxProperties": 1000,
                  "propertyNames": _PATH, "additionalProperties": {"type": "string", "pattern": SHA256_PATTERN}},
        "engines": {"type": "array", "maxItems": 64, "items": {"$ref": "#/$defs/engine"}},
        "manifest_digest": {"type": "string", "pattern": SHA256_PATTERN},
        "source": {"type": "object", "properties": {"kind": {"enum": ["checkpoint", "demo", "random"]}},
                   "required": ["kind"]},
        "graph_precision": _obj({g: _PRECISION for g in ("encoder", "temporal", "spatial")}, required=[]),
        "region_features": {"enum": ["encoder", "host"], "description": (
            "encoder: encoder.onnx outputs region_emb (pooled tokens or encoded crops, computed in the graph); "
            "host (also when absent; deprecated, refused from stp-edge 0.3.0): it outputs patch_emb and the "
            "runtime derives region_emb (docs/bundle-format.md, Regions)")},
        "exporter": {"type": "object", "properties": {"stp_edge_version": _text(64), "torch_version": _text(64)}},
    }, required=["schema_version", "stp_edge_version", "created", "config", "preprocess", "snippet_len",
                 "class_names", "spatial_queries", "thresholds", "precision", "opset", "graphs", "files", "engines",
                 "manifest_digest"]),
    "$defs": {"config": _CONFIG, "vision": _VISION, "text": _TEXT, "preprocess": _PREPROCESS, "tensors": _TENSORS,
              "graph": _GRAPH, "engine": _ENGINE},
}

# --- the validator -------------------------------------------------------------------------------------------
_ANNOTATIONS = {"$schema", "$id", "title", "description", "$defs"}
_KEYWORDS = {"type", "enum", "const", "properties", "required", "additionalProperties", "propertyNames",
             "minProperties", "maxProperties", "items", "prefixItems", "minItems", "maxItems", "minimum", "maximum",
             "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "$ref"} | _ANNOTATIONS


class SchemaViolation(StpEdgeError, ValueError):
    """A JSON value does not match the schema; `str()` is one line: where (a JSON pointer-like path) and why."""


def _type_ok(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        if isinstance(value, float):
            return math.isfinite(value)
        return isinstance(value, int) and not isinstance(value, bool)
    raise UsageError(f"schema uses unknown type {name!r}")


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):  # a number of more than 4300 digits (Python's int-to-str limit)
        text = "a huge number" if isinstance(value, int) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


class _Validator:
    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.root = schema
        self._check_keywords(schema)

    def _check_keywords(self, schema: Any) -> None:
        if isinstance(schema, bool):
            return
        unknown = set(schema) - _KEYWORDS
        if unknown:
            raise UsageError(f"schema uses keywords the validator does not implement: {sorted(unknown)}")
        for key in ("properties", "$defs"):
            for sub in schema.get(key, {}).values():
                self._check_keywords(sub)
        for key in ("additionalProperties", "propertyNames", "items"):
            if key in schema:
                self._check_keywords(schema[key])
        for sub in schema.get("prefixItems", []):
            self._check_keywords(sub)

    def _resolve(self, ref: str) -> Mapping[str, Any]:
        if not ref.startswith("#/$defs/"):
            raise UsageError(f"schema $ref {ref!r} is not local")
        return self.root["$defs"][ref[len("#/$defs/"):]]

    def check(self, value: Any, schema: Any, where: str) -> None:
        if schema is True:
            return
        if schema is False:
            raise SchemaViolation(f"{where}: is not allowed here")
        if "$ref" in schema:
            self.check(value, self._resolve(schema["$ref"]), where)
        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_type_ok(value, t) for t in types):
                raise SchemaViolation(f"{where}: expected {' or '.join(types)}, got {_show(value)}")
        if "const" in schema and not _same(value, schema["const"]):
            raise SchemaViolation(f"{where}: must be {json.dumps(schema['const'])}, got {_show(value)}")
        if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
            raise SchemaViolation(f"{where}: must be one of {json.dumps(schema['enum'])}, got {_show(value)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self._number(value, schema, where)
        elif isinstance(value, str):
            self._string(value, schema, where)
        elif isinstance(value, list):
            self._array(value, schema, where)
        elif isinstance(value, dict):
            self._object(value, schema, where)

    def _number(self, value: float, schema: Mapping[str, Any], where: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise SchemaViolation(f"{where}: {value} is not a finite number")
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaViolation(f"{where}: {_show(value)} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaViolation(f"{where}: {_show(value)} is above the maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            raise SchemaViolation(f"{where}: {_show(value)} must be greater than {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            raise SchemaViolation(f"{where}: {_show(value)} must be less than {schema['exclusiveMaximum']}")

    def _string(self, value: str, schema: Mapping[str, Any], where: str) -> None:
        n = len(value)  # code points, as JSON Schema counts
        if n < schema.get("minLength", 0) or n > schema.get("maxLength", n):
            raise SchemaViolation(f"{where}: string of length {n} is not within "
                                  f"[{schema.get('minLength', 0)}, {schema.get('maxLength', 'any')}]")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise SchemaViolation(f"{where}: {_show(value)} does not match {schema['pattern']}")

    def _array(self, value: list, schema: Mapping[str, Any], where: str) -> None:
        n = len(value)
        if n < schema.get("minItems", 0) or n > schema.get("maxItems", n):
            raise SchemaViolation(f"{where}: array of {n} items is not within "
                                  f"[{schema.get('minItems', 0)}, {schema.get('maxItems', 'any')}]")
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items", True)
            self.check(item, sub, f"{where}[{i}]")

    def _object(self, value: dict, schema: Mapping[str, Any], where: str) -> None:
        n = len(value)
        if n < schema.get("minProperties", 0) or n > schema.get("maxProperties", n):
            raise SchemaViolation(f"{where}: object of {n} keys is not within "
                                  f"[{schema.get('minProperties', 0)}, {schema.get('maxProperties', 'any')}]")
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            raise SchemaViolation(f"{where}: missing keys {missing}")
        props = schema.get("properties", {})
        for key, item in value.items():
            if "propertyNames" in schema:
                self.check(key, schema["propertyNames"], f"{where}: key {_show(key)}")
            sub = props[key] if key in props else schema.get("additionalProperties", True)
            if sub is False:
                raise SchemaViolation(f"{where}: unknown key {_show(key)} (allowed: {sorted(props)})")
            self.check(item, sub, f"{where}.{key}")


def _same(a: Any, b: Any) -> bool:
    """JSON equality: True is not 1."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


_MANIFEST_VALIDATOR = _Validator(MANIFEST_SCHEMA)


def validate(value: Any, schema: Mapping[str, Any] | None = None, *, where: str = "manifest") -> None:
    """Raise `SchemaViolation` (one line, naming the key) unless `value` matches `schema` (default: the manifest's)."""
    validator = _MANIFEST_VALIDATOR if schema is None else _Validator(schema)
    validator.check(value, validator.root, where)


def schema_json() -> str:
    """The schema as written to docs/manifest.schema.json."""
    return json.dumps(MANIFEST_SCHEMA, indent=2) + "\n"


if __name__ == "__main__":
    print(schema_json(), end="")
