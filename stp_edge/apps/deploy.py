"""One YAML file for a deployment: cameras by name, their inputs and roles, thresholds, zones, events and sinks.

The shape follows Frigate's (cameras keyed by name, each with inputs that carry roles, zones as polygons in
relative 0-1 coordinates, secrets from environment variables), so people who run Frigate read it at once.
`load_config(path)` reads a file; `config_from_dict(data)` takes the same structure from Python. Every error is
a `ConfigError` naming the file, the line (from YAML's composed nodes) and the dotted key, with what was
expected and what was found. Secrets (`{env:NAME}` references, passwords, webhook secrets, credentials in URLs)
never appear in a repr or in `describe()`. docs/config.md lists every key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stp_edge.apps.events import EventPolicy
from stp_edge.apps.webhook import secret_key
from stp_edge.apps.zones import Zone, Zones
from stp_edge.av_source import DECODE_MODES
from stp_edge.errors import MissingInputError, UsageError
from stp_edge.video import DECODERS, display_source, parse_source

ENV_RE = re.compile(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
"""A secret from the environment: `{env:NAME}` anywhere in a string value (Frigate-like, explicit about its origin)."""

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
"""Camera and zone names: they become MQTT topic levels and file names, so no '/', '+', '#' or spaces."""

ROLES = ("detect", "clips")
SPATIAL_MODES = ("flagged", "all", "off")
ZONE_MODES = ("watch", "ignore")
MASK = "***"

_TOP_KEYS = ("bundle", "backend", "output_dir", "jsonl", "health_file", "log_events", "mqtt", "webhooks",
             "defaults", "cameras")
_TUNING_KEYS = ("threshold", "off_threshold", "spatial", "lookahead", "events", "snapshots", "clips")
_CAMERA_KEYS = ("inputs", "zones", *_TUNING_KEYS)
_EVENT_KEYS = ("min_snippets", "update_interval_s", "cutoff_s", "max_duration_s", "region_threshold")
_CLIP_KEYS = ("enabled", "pre_s", "post_s")
_MQTT_KEYS = ("host", "port", "prefix", "username", "password", "client_id", "tls", "snippets", "spool_dir")
_WEBHOOK_KEYS = ("url", "secret", "snippets", "timeout_s", "max_attempts", "spool_dir")
_INPUT_KEYS = ("path", "roles", "decoder", "decode")
_ZONE_KEYS = ("points", "mode")



class ConfigError(UsageError):
    """A deployment config is wrong; the message names the file, line and dotted key, expected vs got."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        super().__init__(message)
        self.file, self.line, self.key = file, line, key


# --------------------------------------------------------------------------------------------- the result


@dataclass(frozen=True, repr=False)
class InputConfig:
    """One input of a camera: a file, URL or camera index, its roles (`detect`, `clips`), and how it is read.

    `decoder` and `decode` go to `stp_edge.video.open_source` for the detect input (e.g. PyAV, keyframes only).
    """

    path: str | int
    roles: tuple[str, ...]
    decoder: str = "auto"
    decode: str = "full"

    def __repr__(self) -> str:
        return (f"InputConfig(path={display_source(self.path)!r}, roles={self.roles!r}, decoder={self.decoder!r}, "
                f"decode={self.decode!r})")


@dataclass(frozen=True, repr=False)
class MqttConfig:
    """Where MQTT messages go (`stp_edge.apps.mqtt`); `password` never shows in a repr."""

    host: str
    port: int = 1883
    prefix: str = "stp-edge"
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    tls: bool | str = False  # a str: the CA certificate file (as MqttSink takes it)
    snippets: bool = False
    spool_dir: Path | None = None

    def __repr__(self) -> str:
        pw = None if self.password is None else MASK
        return (f"MqttConfig(host={self.host!r}, port={self.port}, prefix={self.prefix!r}, "
                f"username={self.username!r}, password={pw!r}, client_id={self.client_id!r}, tls={self.tls!r}, "
                f"snippets={self.snippets!r}, spool_dir={self.spool_dir!r})")

    def describe(self) -> str:
        """One line for logs, without the password."""
        user = f" as {self.username}" + (":***" if self.password is not None else "") if self.username else ""
        tls = f", TLS (CA {self.tls})" if isinstance(self.tls, str) else ", TLS" if self.tls else ""
        return f"mqtt {self.host}:{self.port} prefix {self.prefix}{user}{tls}"


@dataclass(frozen=True, repr=False)
class WebhookConfig:
    """One HTTP endpoint for events (Standard Webhooks); `secret` and URL credentials never show in a repr."""

    url: str
    secret: str | None = None
    snippets: bool = False
    timeout_s: float = 10.0
    max_attempts: int = 8
    spool_dir: Path | None = None

    def __repr__(self) -> str:
        secret = None if self.secret is None else MASK
        return (f"WebhookConfig(url={display_source(self.url)!r}, secret={secret!r}, snippets={self.snippets!r}, "
                f"timeout_s={self.timeout_s!r}, max_attempts={self.max_attempts!r}, spool_dir={self.spool_dir!r})")

    def describe(self) -> str:
        """One line for logs, without secrets."""
        what = "events and snippets" if self.snippets else "events"
        return f"webhook {display_source(self.url)} ({what}, {'signed' if self.secret else 'unsigned'})"


@dataclass(frozen=True, repr=False)
class CameraConfig:
    """One camera: its inputs by role and its own thresholds, zones, event policy, snapshots and clips.

    `threshold`, `off_threshold`, `spatial` and `lookahead` are None where neither the camera nor `defaults` set
    them: the bundle's value (threshold, spatial) or the detector's default (no lookahead) applies, as with
    `stp-edge run` without the option. `events` is built from the camera's thresholds and zones (with
    EventPolicy's default threshold where the camera has none: `event_policy(bundle_threshold)` gives the one in
    effect).
    """

    name: str
    detect: InputConfig
    clips: InputConfig | None
    threshold: float | None
    off_threshold: float | None
    spatial: str | None
    lookahead: int | None
    events: EventPolicy
    zones: Zones = field(default_factory=Zones)
    snapshots: bool = True
    clips_enabled: bool = False
    pre_s: float = 5.0
    post_s: float = 5.0

    def __repr__(self) -> str:
        names = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__dataclass_fields__)
        return f"CameraConfig({names})"

    def event_policy(self, bundle_threshold: float) -> EventPolicy:
        """`events` with the threshold in effect: the camera's own, else the bundle's (`bundle_threshold`)."""
        if self.threshold is not None:
            return self.events
        return dataclasses.replace(self.events, threshold=bundle_threshold)

    @property
    def clip_input(self) -> InputConfig:
        """The input clips are cut from: the `clips` input where one is configured, else the detect input."""
        return self.clips or self.detect

    def describe(self) -> str:
        """One line for logs, credentials in URLs masked."""
        inputs = f"detect {display_source(self.detect.path)}"
        if self.clips is not None and self.clips is not self.detect:
            inputs += f", clips {display_source(self.clips.path)}"
        tune = (f"threshold {_or_bundle(self.threshold)}, off {_or_bundle(self.off_threshold, 'threshold')}, "
                f"spatial {_or_bundle(self.spatial)}, lookahead {self.lookahead if self.lookahead is not None else 0}")
        zones = ", ".join(f"{z.name} ({z.mode})" for z in self.zones) or "none"
        clips = f"clips {self.pre_s:g}s+{self.post_s:g}s" if self.clips_enabled else "no clips"
        snaps = "snapshots" if self.snapshots else "no snapshots"
        return f"camera {self.name}: {inputs}; {tune}; zones {zones}; {snaps}; {clips}"


@dataclass(frozen=True, repr=False)
class DeploymentConfig:
    """A whole deployment: the bundle, the outputs and sinks, and the cameras by name (in file order)."""

    bundle: Path
    backend: str
    output_dir: Path
    jsonl: Path | None
    health_file: Path | None
    mqtt: MqttConfig | None
    webhooks: tuple[WebhookConfig, ...]
    cameras: dict[str, CameraConfig]
    log_events: bool = True
    source: str = field(default="<dict>", compare=False)

    def __repr__(self) -> str:
        names = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__dataclass_fields__)
        return f"DeploymentConfig({names})"

    def describe(self) -> str:
        """A few lines for logs: everything that was configured, secrets masked."""
        lines = [f"config {self.source}: bundle {self.bundle} (backend {self.backend}), outputs in {self.output_dir}"]
        if self.jsonl is not None:
            lines.append(f"  jsonl {self.jsonl}")
        if self.health_file is not None:
            lines.append(f"  health file {self.health_file}")
        if self.mqtt is not None:
            lines.append(f"  {self.mqtt.describe()}")
        lines += [f"  {w.describe()}" for w in self.webhooks]
        lines += [f"  {c.describe()}" for c in self.cameras.values()]
        return "\n".join(lines)


def _or_bundle(value: Any, what: str = "the bundle's") -> str:
    return what if value is None else f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------- entry points


def load_config(path: str | Path) -> DeploymentConfig:
    """Read a deployment config file (YAML); relative paths in it are relative to the file's directory.

    Raises:
        ConfigError: the file is not valid YAML or not a valid config (file, line, key, expected vs got).
        MissingInputError: the file does not exist.
        MissingDependencyError: PyYAML is not installed (`pip install 'stp-edge[apps]'`).
    """
    from stp_edge._deps import require

    yaml = require("yaml", "deployment config files")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingInputError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}", file=str(path)) from None
    data, lines = _parse_yaml(yaml, text, str(path))
    return _build(_Ctx(str(path), lines), data, path.resolve().parent)


def config_from_dict(data: Mapping[str, Any], *, base_dir: str | Path = ".", name: str = "<dict>") -> DeploymentConfig:
    """A deployment config from Python data of the same shape as the file (errors name the key, no line).

    Args:
        data: The structure a config file holds (`bundle`, `cameras`, ...).
        base_dir: What relative paths are relative to.
        name: What errors call the source.
    """
    return _build(_Ctx(name, {}), data, Path(base_dir).resolve())


# --------------------------------------------------------------------------------------------- YAML with lines


def _parse_yaml(yaml: Any, text: str, file: str) -> tuple[Any, dict[tuple, int]]:
    """The document's data and the 1-based line of each key path, from YAML's composed node tree."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{file}:1: the config file is empty; expected a mapping with 'bundle' and 'cameras'",
                              file=file, line=1)
        lines: dict[tuple, int] = {(): node.start_mark.line + 1}
        return _from_node(yaml, loader, node, (), lines, file), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or exc.context or "not valid YAML"
        if exc.context and exc.problem:
            started = f" on line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
            what += f" ({exc.context}{started})"
        raise ConfigError(f"{file}:{line}: YAML syntax error: {what}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: YAML error: {exc}", file=file) from None
    finally:
        loader.dispose()


def _from_node(yaml: Any, loader: Any, node: Any, path: tuple, lines: dict[tuple, int], file: str) -> Any:
    """Plain data from a composed node, recording the line of every key and list item under `path`.

    Mapping keys are kept as written (`1:` is the camera "1", `off:` the zone "off", not YAML 1.1's int and
    bool). A key written twice is an error (YAML would keep the last silently); a key that a `<<` merge brings
    in may be overridden, as merge keys intend.
    """
    if isinstance(node, yaml.MappingNode):
        own = {id(k) for k, _ in node.value}
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys (merged pairs first), as SafeLoader does
        out: dict[Any, Any] = {}
        first: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                key = _Ctx(file, lines).dotted(path)
                raise ConfigError(f"{file}:{line}: {key}: expected a plain key, got a {key_node.id}", file=file,
                                  line=line, key=key)
            key = key_node.value
            if key in out and id(key_node) in own and id(first[key]) in own:
                key = _Ctx(file, lines).dotted((*path, key))
                raise ConfigError(f"{file}:{line}: {key}: duplicate key (also on line "
                                  f"{first[key_node.value].start_mark.line + 1})", file=file, line=line, key=key)
            first[key] = key_node
            lines[(*path, key)] = line
            out[key] = _from_node(yaml, loader, value_node, (*path, key), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            items.append(_from_node(yaml, loader, item, (*path, i), lines, file))
        return items
    return loader.construct_object(node, deep=True)


# --------------------------------------------------------------------------------------------- validation


class _Ctx:
    """Where the config came from, to make errors that name the file, line and key."""

    def __init__(self, file: str, lines: dict[tuple, int]) -> None:
        self.file, self.lines = file, lines

    @staticmethod
    def dotted(path: tuple) -> str:
        out = ""
        for part in path:
            out += f"[{part}]" if isinstance(part, int) and not isinstance(part, bool) else f".{part}"
        return out.lstrip(".") or "(top level)"

    def line(self, path: tuple) -> int | None:
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None

    def error(self, path: tuple, message: str) -> ConfigError:
        line, key = self.line(path), self.dotted(path)
        where = f"{self.file}:{line}" if line is not None else self.file
        return ConfigError(f"{where}: {key}: {message}", file=self.file, line=line, key=key)


def _show(value: Any) -> str:
    """A found value for an error message: short, and never a value that came from the environment (a secret)."""
    if isinstance(value, _FromEnv):
        return "a string from an {env:...} reference"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _FromEnv(str):
    """A string that an {env:NAME} reference filled in: error messages never show it."""


def _expand_env(ctx: _Ctx, path: tuple, value: Any) -> Any:
    """`value` with every `{env:NAME}` in its strings replaced; an unset variable is an error naming it."""
    if isinstance(value, Mapping):
        if len(value) == 1 and str(next(iter(value))).startswith("env:") and next(iter(value.values())) is None:
            name = str(next(iter(value)))[4:]
            raise ctx.error(path, f"expected a quoted \"{{env:{name}}}\" (YAML reads an unquoted {{...}} as a "
                                  "mapping), got a mapping")
        return {k: _expand_env(ctx, (*path, k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_expand_env(ctx, (*path, i), v) for i, v in enumerate(value)]
    if not isinstance(value, str) or "{env:" not in value:
        return value

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise ctx.error(path, f"environment variable {name} is not set (referenced as {{env:{name}}}); "
                                  f"set it or change the value")
        return os.environ[name]

    stray = ENV_RE.sub("", value)
    if "{env:" in stray:
        raise ctx.error(path, "expected {env:NAME} with NAME of letters, digits and '_' (not starting with a digit), "
                              "got a malformed '{env:' reference")
    return _FromEnv(ENV_RE.sub(sub, value))


def _mapping(ctx: _Ctx, path: tuple, value: Any, allowed: tuple[str, ...], required: tuple[str, ...] = (),
             what: str = "a mapping") -> dict:
    """`value` checked to be a mapping with only `allowed` keys (did-you-mean on others) and all `required`."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ctx.error(path, f"expected {what}, got {_show(value)}")
    for key in value:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f" (expected one of: {', '.join(allowed)})"
            raise ctx.error((*path, key), f"unknown key{hint}")
    for key in required:
        if value.get(key) is None:
            raise ctx.error(path if key not in value else (*path, key), f"expected a value for '{key}', got none")
    return dict(value)


def _number(ctx: _Ctx, path: tuple, value: Any, lo: float, hi: float = math.inf, *, integer: bool = False,
            lo_open: bool = False) -> Any:
    kind = "an integer" if integer else "a number"
    rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]" if hi != math.inf else (f"> {lo:g}" if lo_open else
                                                                                   f">= {lo:g}")
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        raise ctx.error(path, f"expected {kind} {rng}, got {_show(value)}")
    if value < lo or value > hi or (lo_open and value == lo):
        raise ctx.error(path, f"expected {kind} {rng}, got {value!r}")
    return int(value) if integer else float(value)


def _bool(ctx: _Ctx, path: tuple, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(path, f"expected true or false, got {_show(value)}")
    return value


def _string(ctx: _Ctx, path: tuple, value: Any, *, secret: bool = False) -> str:
    if not isinstance(value, str) or not value:
        shown = "a value that is not a string" if secret and value is not None else _show(value)
        raise ctx.error(path, f"expected a non-empty string, got {shown}")
    return str(value)


def _choice(ctx: _Ctx, path: tuple, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6) if isinstance(value, str) else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ctx.error(path, f"expected one of {', '.join(choices)}, got {_show(value)}{hint}")
    return value


def _name(ctx: _Ctx, path: tuple, value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ctx.error(path, f"expected a {what} name of letters, digits, '_' and '-' (it becomes an MQTT topic "
                              f"level), got {_show(value)}")
    return value


def _path(base: Path, value: str) -> Path:
    """A path from the config: `~` expanded, relative ones taken from the config file's directory, `..` folded."""
    p = Path(value).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def _opt_path(ctx: _Ctx, path: tuple, value: Any, base: Path) -> Path | None:
    if value is None:
        return None
    text = _string(ctx, path, value)
    return Path(text) if text in ("-", "/dev/stdout") else _path(base, text)


# --------------------------------------------------------------------------------------------- sections


def _build(ctx: _Ctx, data: Any, base: Path) -> DeploymentConfig:
    data = _expand_env(ctx, (), data)
    top = _mapping(ctx, (), data, _TOP_KEYS, ("bundle", "cameras"), "a mapping with 'bundle' and 'cameras'")
    output_dir = _opt_path(ctx, ("output_dir",), top.get("output_dir"), base) or base / "out"
    mqtt = _mqtt(ctx, top.get("mqtt"), base, output_dir)
    hooks = top.get("webhooks")
    if hooks is None:
        hooks = []
    if not isinstance(hooks, list):
        raise ctx.error(("webhooks",), f"expected a list of webhooks, got {_show(hooks)}")
    webhooks = tuple(_webhook(ctx, i, h, base, output_dir) for i, h in enumerate(hooks))
    defaults = _tuning(ctx, ("defaults",), _mapping(ctx, ("defaults",), top.get("defaults"), _TUNING_KEYS))
    cams = top["cameras"]
    if not isinstance(cams, Mapping) or not cams:
        raise ctx.error(("cameras",), f"expected a mapping of camera name -> camera, got {_show(cams)}")
    cameras = {}
    for name, cam in cams.items():
        _name(ctx, ("cameras", name), name, "camera")
        cameras[name] = _camera(ctx, name, cam, defaults, base)
    backend = top.get("backend")
    return DeploymentConfig(
        bundle=_path(base, _string(ctx, ("bundle",), top["bundle"])),
        backend="auto" if backend is None else _string(ctx, ("backend",), backend),
        output_dir=output_dir,
        jsonl=_opt_path(ctx, ("jsonl",), top.get("jsonl"), base),
        health_file=_opt_path(ctx, ("health_file",), top.get("health_file"), base),
        mqtt=mqtt, webhooks=webhooks, cameras=cameras,
        log_events=True if top.get("log_events") is None else _bool(ctx, ("log_events",), top["log_events"]),
        source=ctx.file)


def _mqtt(ctx: _Ctx, value: Any, base: Path, output_dir: Path) -> MqttConfig | None:
    if value is None:
        return None
    p = ("mqtt",)
    m = _mapping(ctx, p, value, _MQTT_KEYS, ("host",))
    prefix = "stp-edge" if m.get("prefix") is None else _string(ctx, (*p, "prefix"), m["prefix"])
    if any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/"):
        raise ctx.error((*p, "prefix"), f"expected a topic prefix without '+', '#' or a leading/trailing '/', "
                                        f"got {prefix!r}")
    opt = {k: None if m.get(k) is None else _string(ctx, (*p, k), m[k], secret=k == "password")
           for k in ("username", "password", "client_id")}
    tls = m.get("tls")
    tls = False if tls is None else tls if isinstance(tls, bool) else str(_opt_path(ctx, (*p, "tls"), tls, base))
    return MqttConfig(host=_string(ctx, (*p, "host"), m["host"]),
                      port=1883 if m.get("port") is None else _number(ctx, (*p, "port"), m["port"], 1, 65535,
                                                                      integer=True),
                      prefix=prefix, **opt, tls=tls,
                      snippets=False if m.get("snippets") is None else _bool(ctx, (*p, "snippets"), m["snippets"]),
                      spool_dir=_opt_path(ctx, (*p, "spool_dir"), m.get("spool_dir"), base)
                      or output_dir / "spool" / "mqtt")


def _webhook(ctx: _Ctx, i: int, value: Any, base: Path, output_dir: Path) -> WebhookConfig:
    p = ("webhooks", i)
    if isinstance(value, str):
        value = {"url": value}
    w = _mapping(ctx, p, value, _WEBHOOK_KEYS, ("url",), "a mapping with 'url' (or a URL)")
    url = _string(ctx, (*p, "url"), w["url"])
    if not re.match(r"^https?://[^/\s]+", url):
        raise ctx.error((*p, "url"), f"expected an http:// or https:// URL, got {display_source(url)!r}")
    secret = None if w.get("secret") is None else _string(ctx, (*p, "secret"), w["secret"], secret=True)
    if secret is not None:
        try:
            secret_key(secret)  # a "whsec_" secret must be base64: say so now, with the line, not at the first POST
        except UsageError as exc:
            raise ctx.error((*p, "secret"), str(exc)) from None
    return WebhookConfig(
        url=url, secret=secret,
        snippets=False if w.get("snippets") is None else _bool(ctx, (*p, "snippets"), w["snippets"]),
        timeout_s=10.0 if w.get("timeout_s") is None else _number(ctx, (*p, "timeout_s"), w["timeout_s"], 0.0,
                                                                   lo_open=True),
        max_attempts=8 if w.get("max_attempts") is None else _number(ctx, (*p, "max_attempts"), w["max_attempts"],
                                                                     1, integer=True),
        spool_dir=_opt_path(ctx, (*p, "spool_dir"), w.get("spool_dir"), base) or output_dir / "spool" / f"webhook-{i}")


def _tuning(ctx: _Ctx, p: tuple, m: dict) -> dict[str, tuple[Any, tuple]]:
    """The tuning keys set in `m` (defaults or a camera), each as (checked value, its key path)."""
    out: dict[str, tuple[Any, tuple]] = {}
    checks = {
        "threshold": lambda k, v: _number(ctx, k, v, 0.0, 1.0),
        "off_threshold": lambda k, v: _number(ctx, k, v, 0.0, 1.0),
        # YAML 1.1 reads a bare `off` as false: take it as the "off" it was written as
        "spatial": lambda k, v: _choice(ctx, k, "off" if v is False else v, SPATIAL_MODES),
        "lookahead": lambda k, v: _number(ctx, k, v, 0, integer=True),
        "snapshots": lambda k, v: _bool(ctx, k, v),
    }
    for key, check in checks.items():
        if m.get(key) is not None:
            out[key] = (check((*p, key), m[key]), (*p, key))
    ev = _mapping(ctx, (*p, "events"), m.get("events"), _EVENT_KEYS)
    ev_checks = {
        "min_snippets": lambda k, v: _number(ctx, k, v, 1, integer=True),
        "update_interval_s": lambda k, v: _number(ctx, k, v, 0.0),
        "cutoff_s": lambda k, v: _number(ctx, k, v, 0.0),
        "max_duration_s": lambda k, v: _number(ctx, k, v, 0.0, lo_open=True),
        "region_threshold": lambda k, v: _number(ctx, k, v, 0.0, 1.0),
    }
    for key, check in ev_checks.items():
        if ev.get(key) is not None:
            out[f"events.{key}"] = (check((*p, "events", key), ev[key]), (*p, "events", key))
    clips = m.get("clips")
    if isinstance(clips, bool):
        clips = {"enabled": clips}
    cl = _mapping(ctx, (*p, "clips"), clips, _CLIP_KEYS, what="a mapping (enabled, pre_s, post_s) or true/false")
    cl_checks = {"enabled": lambda k, v: _bool(ctx, k, v),
                 "pre_s": lambda k, v: _number(ctx, k, v, 0.0, 600.0),
                 "post_s": lambda k, v: _number(ctx, k, v, 0.0, 600.0)}
    for key, check in cl_checks.items():
        if cl.get(key) is not None:
            out[f"clips.{key}"] = (check((*p, "clips", key), cl[key]), (*p, "clips", key))
    return out


_TUNING_DEFAULTS: dict[str, Any] = {"threshold": None, "off_threshold": None, "spatial": None, "lookahead": None,
                                    "snapshots": True, "clips.enabled": False, "clips.pre_s": 5.0,
                                    "clips.post_s": 5.0}


def _camera(ctx: _Ctx, name: str, value: Any, defaults: dict[str, tuple[Any, tuple]], base: Path) -> CameraConfig:
    p = ("cameras", name)
    m = _mapping(ctx, p, value, _CAMERA_KEYS, ("inputs",), "a mapping with 'inputs'")
    detect, clips = _inputs(ctx, (*p, "inputs"), m["inputs"], base)
    merged = {**defaults, **_tuning(ctx, p, m)}  # the camera's own keys win, one key (not one section) at a time
    get = {k: merged[k][0] if k in merged else d for k, d in _TUNING_DEFAULTS.items()}
    threshold, off = get["threshold"], get["off_threshold"]
    if threshold is None and off is not None:  # below a threshold not known until the bundle loads: say it now
        raise ctx.error(merged["off_threshold"][1], "expected a threshold beside an off_threshold (in the camera or "
                                                    "in defaults), got none; set threshold too")
    if threshold is not None and off is not None and off > threshold:
        where = merged["off_threshold"][1]
        raise ctx.error(where, f"expected an off_threshold <= threshold ({threshold:g}, from "
                               f"{ctx.dotted(merged['threshold'][1])}), got {off:g}")
    zones = _zones(ctx, (*p, "zones"), m.get("zones"))
    events = _policy(ctx, p, merged, threshold, off, zones)
    return CameraConfig(name=name, detect=detect, clips=clips, threshold=threshold, off_threshold=off,
                        spatial=get["spatial"], lookahead=get["lookahead"], events=events, zones=zones,
                        snapshots=get["snapshots"], clips_enabled=get["clips.enabled"], pre_s=get["clips.pre_s"],
                        post_s=get["clips.post_s"])


def _policy(ctx: _Ctx, p: tuple, merged: dict[str, tuple[Any, tuple]], threshold: float | None, off: float | None,
            zones: Zones) -> EventPolicy:
    kwargs: dict[str, Any] = {k.split(".", 1)[1]: v for k, (v, _) in merged.items() if k.startswith("events.")}
    if threshold is not None:
        kwargs["threshold"] = threshold
    kwargs["off_threshold"] = off
    kwargs["zones"] = zones if zones else None
    try:
        return EventPolicy(**kwargs)
    except (ValueError, TypeError) as exc:  # a rule of the policy's own that the checks above do not know
        raise ctx.error((*p, "events"), f"invalid event policy: {exc}") from None


def _inputs(ctx: _Ctx, p: tuple, value: Any, base: Path) -> tuple[InputConfig, InputConfig | None]:
    """The camera's detect input and its clips input (None where no input has the clips role)."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ctx.error(p, f"expected a list of inputs ({{path: ..., roles: [detect]}}), got {_show(value)}")
    inputs = [_input(ctx, (*p, i), item, base, single=len(value) == 1) for i, item in enumerate(value)]
    by_role: dict[str, list[int]] = {r: [i for i, x in enumerate(inputs) if r in x.roles] for r in ROLES}
    if len(by_role["detect"]) != 1:
        got = ("none" if not by_role["detect"] else
               f"{len(by_role['detect'])} (inputs {', '.join(str(i) for i in by_role['detect'])})")
        where = p if not by_role["detect"] else (*p, by_role["detect"][1], "roles")
        raise ctx.error(where, f"expected exactly one input with the detect role, got {got}")
    if len(by_role["clips"]) > 1:
        raise ctx.error((*p, by_role["clips"][1], "roles"),
                        f"expected at most one input with the clips role, got {len(by_role['clips'])}")
    detect = inputs[by_role["detect"][0]]
    return detect, inputs[by_role["clips"][0]] if by_role["clips"] else None


def _input(ctx: _Ctx, p: tuple, value: Any, base: Path, *, single: bool) -> InputConfig:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = {"path": value}
    m = _mapping(ctx, p, value, _INPUT_KEYS, ("path",), "a mapping with 'path' and 'roles'")
    raw = m["path"]
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or raw == "":
        raise ctx.error((*p, "path"), f"expected a file, URL or camera index, got {_show(raw)}")
    kind, target = parse_source(raw)
    path: str | int = target if kind == "camera" else str(_path(base, raw)) if kind == "file" else str(raw)
    decoder = "auto" if m.get("decoder") is None else _choice(ctx, (*p, "decoder"), m["decoder"], DECODERS)
    decode = "full" if m.get("decode") is None else _choice(ctx, (*p, "decode"), m["decode"], DECODE_MODES)
    if decode != "full" and (decoder == "opencv" or kind == "camera"):
        raise ctx.error((*p, "decode"), f"expected full: decode {decode} needs the PyAV decoder, and "
                        + ("camera indices are read through OpenCV" if kind == "camera" else "decoder is opencv"))
    roles = m.get("roles")
    if roles is None:
        if not single:
            raise ctx.error(p, "expected roles (detect and/or clips) on each input of a camera with several inputs, "
                               "got none")
        return InputConfig(path, ROLES, decoder, decode)
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, list) or not roles:
        raise ctx.error((*p, "roles"), f"expected a list of roles from: {', '.join(ROLES)}, got {_show(roles)}")
    for j, r in enumerate(roles):
        _choice(ctx, (*p, "roles", j), r, ROLES)
    if len(set(roles)) != len(roles):
        raise ctx.error((*p, "roles"), f"expected each role once, got {roles!r}")
    return InputConfig(path, tuple(roles), decoder, decode)


def _zones(ctx: _Ctx, p: tuple, value: Any) -> Zones:
    if value is None:
        return Zones()
    if not isinstance(value, Mapping):
        raise ctx.error(p, f"expected a mapping of zone name -> {{points, mode}}, got {_show(value)}")
    zones = []
    for name, z in value.items():
        zp = (*p, name)
        _name(ctx, zp, name, "zone")
        m = _mapping(ctx, zp, z, _ZONE_KEYS, ("points",), "a mapping with 'points' (and 'mode')")
        points = _polygon(ctx, (*zp, "points"), m["points"])
        mode = "watch" if m.get("mode") is None else _choice(ctx, (*zp, "mode"), m["mode"], ZONE_MODES)
        try:
            zones.append(Zone(name, points, mode))
        except (ValueError, TypeError) as exc:  # no area, crossing edges, a repeated point: Zone's own rules
            raise ctx.error((*zp, "points"), str(exc).removeprefix(f"zone {name!r}: ")) from None
    return Zones(zones)


def _polygon(ctx: _Ctx, p: tuple, value: Any) -> tuple[tuple[float, float], ...]:
    """A zone's points checked for shape and range (with each point's line); `Zone` checks the polygon itself."""
    if not isinstance(value, list) or len(value) < 3:
        got = f"{len(value)} points" if isinstance(value, list) else _show(value)
        raise ctx.error(p, f"expected a polygon of at least 3 [x, y] points, got {got}")
    points = []
    for i, pt in enumerate(value):
        if not isinstance(pt, list) or len(pt) != 2:
            raise ctx.error((*p, i), f"expected an [x, y] point in relative 0-1 coordinates, got {_show(pt)}")
        points.append((_number(ctx, (*p, i, 0), pt[0], 0.0, 1.0), _number(ctx, (*p, i, 1), pt[1], 0.0, 1.0)))
    return tuple(points)
