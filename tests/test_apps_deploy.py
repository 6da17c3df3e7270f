"""The deployment config file: the three-camera example loads, every error names file:line:key, secrets stay hidden."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from stp_edge._deps import MissingDependencyError
from stp_edge.apps.deploy import ConfigError, config_from_dict, load_config
from stp_edge.apps.events import EventPolicy
from stp_edge.errors import UsageError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cameras.yaml"
SECRETS = {"CAM_PASS": "s3cr3t-cam-pw", "MQTT_PASSWORD": "mqtt-pw-7781", "WEBHOOK_SECRET": "whsec_dGVzdHNlY3JldA=="}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    return SECRETS


@pytest.fixture
def example(tmp_path: Path, env: dict[str, str]) -> Path:
    """A copy of examples/cameras.yaml one directory down, so relative paths resolve against it, not the repo."""
    (tmp_path / "site").mkdir()
    return Path(shutil.copy(EXAMPLE, tmp_path / "site" / "cameras.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return str(exc.value)


# --------------------------------------------------------------------------------------------- the example file


def test_example_loads_three_cameras_with_zones_roles_and_sinks(example: Path) -> None:
    cfg = load_config(example)
    site = example.parent
    assert list(cfg.cameras) == ["front_door", "backyard", "loading_dock"]
    assert cfg.bundle == site.parent / "out" / "demo" / "demo.stp"
    assert cfg.backend == "auto"
    assert cfg.output_dir == site / "out" / "cameras"
    assert cfg.jsonl == site / "out" / "cameras" / "records.jsonl"
    assert cfg.health_file == site / "out" / "cameras" / "health.json"
    assert cfg.log_events is True

    front = cfg.cameras["front_door"]
    assert front.detect.path == f"rtsp://viewer:{SECRETS['CAM_PASS']}@10.0.0.5:554/sub"
    assert front.detect.roles == ("detect",)
    assert front.clips is not None and front.clips.path.endswith("/main") and front.clips.roles == ("clips",)
    assert front.clip_input is front.clips
    assert (front.threshold, front.off_threshold, front.spatial, front.lookahead) == (0.6, 0.45, "all", 2)
    assert [(z.name, z.mode) for z in front.zones] == [("driveway", "watch"), ("street", "ignore")]
    assert front.zones[0].points == ((0.1, 0.5), (0.9, 0.5), (0.9, 1.0), (0.1, 1.0))
    assert (front.clips_enabled, front.pre_s, front.post_s, front.snapshots) == (True, 5.0, 5.0, True)
    # the event policy carries the camera's own thresholds and zones, and defaults.events key by key
    pol = front.events
    assert isinstance(pol, EventPolicy)
    assert (pol.threshold, pol.off_threshold, pol.min_snippets) == (0.6, 0.45, 3)
    assert (pol.update_interval_s, pol.cutoff_s, pol.max_duration_s) == (5.0, 2.0, 300.0)
    assert [z.name for z in pol.zones] == ["driveway", "street"]
    assert not pol.zones.admits_box([0.4, 0.05, 0.6, 0.2])  # inside the ignored street
    assert pol.zones.admits_box([0.4, 0.6, 0.6, 0.8])  # on the watched driveway

    back = cfg.cameras["backyard"]
    assert back.detect.roles == ("detect", "clips") and back.clip_input is back.detect
    assert (back.threshold, back.off_threshold, back.spatial, back.lookahead) == (0.5, 0.4, "flagged", 0)
    assert back.zones[0].mode == "watch" and back.events.min_snippets == 2
    assert back.clips_enabled is True

    dock = cfg.cameras["loading_dock"]
    assert dock.detect.path == str(site.parent / "out" / "demo" / "clip.mp4")
    assert dock.clips is dock.detect or dock.clips == dock.detect
    assert (dock.threshold, dock.off_threshold, dock.snapshots, dock.clips_enabled) == (0.7, 0.4, False, False)
    assert dock.events.zones is None or len(dock.events.zones) == 0

    assert cfg.mqtt is not None
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.prefix, cfg.mqtt.username) == ("127.0.0.1", 1883, "stp-edge",
                                                                                  "stp-edge")
    assert cfg.mqtt.password == SECRETS["MQTT_PASSWORD"]
    assert cfg.mqtt.spool_dir == cfg.output_dir / "spool" / "mqtt"
    (hook,) = cfg.webhooks
    assert (hook.url, hook.secret, hook.snippets) == ("https://vms.example/hooks/stp-edge", SECRETS["WEBHOOK_SECRET"],
                                                      False)
    assert hook.spool_dir == cfg.output_dir / "spool" / "webhook-0"


def test_secrets_never_in_repr_str_or_describe(example: Path) -> None:
    cfg = load_config(example)
    texts = [repr(cfg), str(cfg), cfg.describe(), repr(cfg.mqtt), repr(cfg.webhooks[0]),
             *(repr(c) for c in cfg.cameras.values()), *(c.describe() for c in cfg.cameras.values())]
    for text in texts:
        for secret in SECRETS.values():
            assert secret not in text
    assert "rtsp://viewer:***@10.0.0.5:554/sub" in cfg.describe()
    assert "rtsp://viewer:***@10.0.0.5:554/main" in repr(cfg.cameras["front_door"])
    assert "password='***'" in repr(cfg.mqtt) and "secret='***'" in repr(cfg.webhooks[0])
    assert "camera front_door" in cfg.describe() and "driveway (watch)" in cfg.describe()


def test_config_from_dict_equals_load_config_of_the_same_data(example: Path) -> None:
    data = yaml.safe_load(example.read_text())
    assert config_from_dict(data, base_dir=example.parent) == load_config(example)
    changed = dict(data, backend="ort")
    assert config_from_dict(changed, base_dir=example.parent) != load_config(example)


# --------------------------------------------------------------------------------------------- merging, paths


def test_defaults_merged_key_by_key_and_overridden(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """\
bundle: b.stp
defaults:
  threshold: 0.55
  spatial: off
  events: {min_snippets: 4, cutoff_s: 7, region_threshold: 0.3}
  clips: {pre_s: 3}
cameras:
  a:
    inputs: [a.mp4]
  b:
    inputs: [b.mp4]
    threshold: 0.8
    events: {cutoff_s: 1.5}
    clips: {enabled: true}
"""))
    a, b = cfg.cameras["a"], cfg.cameras["b"]
    assert (a.threshold, a.spatial, a.events.min_snippets, a.events.cutoff_s, a.events.region_threshold) == (
        0.55, "off", 4, 7.0, 0.3)
    assert (a.clips_enabled, a.pre_s, a.post_s) == (False, 3.0, 5.0)
    assert (b.threshold, b.events.threshold, b.spatial) == (0.8, 0.8, "off")
    assert (b.events.min_snippets, b.events.cutoff_s) == (4, 1.5)  # one events key overridden, the others kept
    assert (b.clips_enabled, b.pre_s) == (True, 3.0)
    # nothing set anywhere: the bundle's threshold and spatial mode, no lookahead, policy defaults
    bare = config_from_dict({"bundle": "b.stp", "cameras": {"c": {"inputs": ["c.mp4"]}}}).cameras["c"]
    assert (bare.threshold, bare.off_threshold, bare.spatial, bare.lookahead) == (None, None, None, None)
    assert bare.events == EventPolicy()
    assert (bare.snapshots, bare.clips_enabled, bare.clips, bare.zones) == (True, False, bare.detect, ())
    # `clips: true` is short for `clips: {enabled: true}`; the lengths stay the defaults'
    short = config_from_dict({"bundle": "b.stp", "defaults": {"clips": {"post_s": 8}},
                              "cameras": {"c": {"inputs": ["c.mp4"], "clips": True}}}).cameras["c"]
    assert (short.clips_enabled, short.pre_s, short.post_s) == (True, 5.0, 8.0)


def test_anchors_merge_keys_and_keys_as_written(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """\
bundle: b.stp
cameras:
  "1": &base
    inputs: [a.mp4]
    threshold: 0.7
    zones:
      off: {points: [[0, 0], [1, 0], [1, 1]], mode: ignore}
  2:
    <<: *base
    threshold: 0.8
"""))
    assert list(cfg.cameras) == ["1", "2"]  # `2:` is the camera "2", not the int 2
    assert (cfg.cameras["1"].threshold, cfg.cameras["2"].threshold) == (0.7, 0.8)  # a merged key overridden
    assert cfg.cameras["2"].detect.path == str(tmp_path / "a.mp4")
    assert [z.name for z in cfg.cameras["2"].zones] == ["off"]  # `off:` as a key is the name "off", not False
    path = write(tmp_path, "bundle: b.stp\ncameras:\n  a: &base\n    inputs: [a.mp4]\n    threshold: 2\n"
                           "  b: {<<: *base}\n")
    assert error_of(path) == f"{path}:5: cameras.a.threshold: expected a number in [0, 1], got 2"


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "stp"
    conf.mkdir(parents=True)
    cfg = load_config(write(conf, """\
bundle: models/m.stp
output_dir: /var/lib/stp-edge
jsonl: logs/records.jsonl
health_file: ../health.json
mqtt: {host: localhost, spool_dir: q/mqtt, tls: certs/ca.pem}
webhooks: [http://127.0.0.1:9/hook]
cameras:
  file_cam: {inputs: [clips/a.mp4]}
  abs_cam: {inputs: [/data/b.mp4]}
  usb_cam: {inputs: [0]}
  net_cam: {inputs: ["rtsp://10.0.0.9/live"]}
"""))
    assert cfg.bundle == conf / "models" / "m.stp"
    assert cfg.output_dir == Path("/var/lib/stp-edge")
    assert cfg.jsonl == conf / "logs" / "records.jsonl"
    assert cfg.health_file == tmp_path / "etc" / "health.json"
    assert cfg.mqtt.spool_dir == conf / "q" / "mqtt"
    assert cfg.mqtt.tls == str(conf / "certs" / "ca.pem")  # a str, as MqttSink takes a CA file
    assert cfg.webhooks[0].spool_dir == Path("/var/lib/stp-edge/spool/webhook-0")
    assert cfg.cameras["file_cam"].detect.path == str(conf / "clips" / "a.mp4")
    assert cfg.cameras["abs_cam"].detect.path == "/data/b.mp4"
    assert cfg.cameras["usb_cam"].detect.path == 0
    assert cfg.cameras["net_cam"].detect.path == "rtsp://10.0.0.9/live"
    # the same data from Python resolves against base_dir
    other = config_from_dict({"bundle": "m.stp", "cameras": {"c": {"inputs": ["a.mp4"]}}}, base_dir=tmp_path)
    assert other.bundle == tmp_path / "m.stp" and other.output_dir == tmp_path / "out"


# --------------------------------------------------------------------------------------------- errors

HEAD = "bundle: b.stp\ncameras:\n  front_door:\n"  # lines 1-3; a camera's keys start on line 4

ERRORS = [
    ("wrong type", HEAD + "    inputs: [a.mp4]\n    threshold: high\n",
     "5: cameras.front_door.threshold: expected a number in [0, 1], got 'high'"),
    ("out of range", HEAD + "    inputs: [a.mp4]\n    threshold: 1.5\n",
     "5: cameras.front_door.threshold: expected a number in [0, 1], got 1.5"),
    ("bool is not a number", HEAD + "    inputs: [a.mp4]\n    lookahead: true\n",
     "5: cameras.front_door.lookahead: expected an integer >= 0, got True"),
    ("off above threshold", HEAD + "    inputs: [a.mp4]\n    threshold: 0.5\n    off_threshold: 0.6\n",
     "6: cameras.front_door.off_threshold: expected an off_threshold <= threshold (0.5, from "
     "cameras.front_door.threshold), got 0.6"),
    ("off above a default threshold", "bundle: b.stp\ndefaults:\n  threshold: 0.3\ncameras:\n  front_door:\n"
     "    inputs: [a.mp4]\n    off_threshold: 0.35\n",
     "7: cameras.front_door.off_threshold: expected an off_threshold <= threshold (0.3, from defaults.threshold), "
     "got 0.35"),
    ("unknown key", HEAD + "    inputs: [a.mp4]\n    treshold: 0.5\n",
     "5: cameras.front_door.treshold: unknown key; did you mean 'threshold'?"),
    ("unknown top key", "bundle: b.stp\nwebhook: []\ncameras: {}\n",
     "2: webhook: unknown key; did you mean 'webhooks'?"),
    ("unknown events key", HEAD + "    inputs: [a.mp4]\n    events:\n      min_snipets: 3\n",
     "6: cameras.front_door.events.min_snipets: unknown key; did you mean 'min_snippets'?"),
    ("bad choice", HEAD + "    inputs: [a.mp4]\n    spatial: flaged\n",
     "5: cameras.front_door.spatial: expected one of flagged, all, off, got 'flaged' (did you mean 'flagged'?)"),
    ("missing detect", HEAD + "    inputs:\n      - {path: a.mp4, roles: [clips]}\n",
     "4: cameras.front_door.inputs: expected exactly one input with the detect role, got none"),
    ("two detect", HEAD + "    inputs:\n      - {path: a.mp4, roles: [detect]}\n"
     "      - {path: b.mp4, roles: [detect]}\n",
     "6: cameras.front_door.inputs[1].roles: expected exactly one input with the detect role, got 2 (inputs 0, 1)"),
    ("two clips", HEAD + "    inputs:\n      - {path: a.mp4, roles: [detect, clips]}\n"
     "      - {path: b.mp4, roles: [clips]}\n",
     "6: cameras.front_door.inputs[1].roles: expected at most one input with the clips role, got 2"),
    ("roles missing", HEAD + "    inputs:\n      - {path: a.mp4, roles: [detect]}\n      - path: b.mp4\n",
     "6: cameras.front_door.inputs[1]: expected roles (detect and/or clips) on each input of a camera with "
     "several inputs, got none"),
    ("bad role", HEAD + "    inputs:\n      - {path: a.mp4, roles: [detect, record]}\n",
     "5: cameras.front_door.inputs[0].roles[1]: expected one of detect, clips, got 'record'"),
    ("bad decoder", HEAD + "    inputs:\n      - {path: a.mp4, decoder: ffmpeg}\n",
     "5: cameras.front_door.inputs[0].decoder: expected one of auto, opencv, pyav, nvdec, got 'ffmpeg'"),
    ("decode without pyav", HEAD + "    inputs:\n      - {path: a.mp4, decoder: opencv, decode: keyframes}\n",
     "5: cameras.front_door.inputs[0].decode: expected full: decode keyframes needs the PyAV decoder, and decoder "
     "is opencv"),
    ("decode of a camera index", HEAD + "    inputs:\n      - {path: 0, decode: nonref}\n",
     "5: cameras.front_door.inputs[0].decode: expected full: decode nonref needs the PyAV decoder, and camera "
     "indices are read through OpenCV"),
    ("no inputs", HEAD + "    threshold: 0.5\n",
     "3: cameras.front_door: expected a value for 'inputs', got none"),
    ("unset env var", HEAD + "    inputs:\n      - path: 'rtsp://u:{env:STP_TEST_UNSET_PW}@10.0.0.5/sub'\n",
     "5: cameras.front_door.inputs[0].path: environment variable STP_TEST_UNSET_PW is not set (referenced as "
     "{env:STP_TEST_UNSET_PW}); set it or change the value"),
    ("unquoted env reference", "bundle: b.stp\nmqtt:\n  host: h\n  password: {env:MQTT_PASSWORD}\ncameras:\n"
     "  a: {inputs: [a.mp4]}\n",
     "4: mqtt.password: expected a quoted \"{env:MQTT_PASSWORD}\" (YAML reads an unquoted {...} as a mapping), "
     "got a mapping"),
    ("malformed env reference", HEAD + "    inputs: ['rtsp://u:{env:1X}@h/s']\n",
     "4: cameras.front_door.inputs[0]: expected {env:NAME} with NAME of letters, digits and '_' (not starting "
     "with a digit), got a malformed '{env:' reference"),
    ("zone too few points", HEAD + "    inputs: [a.mp4]\n    zones:\n      lawn: {points: [[0, 0], [1, 1]]}\n",
     "6: cameras.front_door.zones.lawn.points: expected a polygon of at least 3 [x, y] points, got 2 points"),
    ("zone point out of range", HEAD + "    inputs: [a.mp4]\n    zones:\n      lawn:\n        points:\n"
     "          - [0.1, 0.1]\n          - [1.2, 0.1]\n          - [0.5, 0.9]\n",
     "9: cameras.front_door.zones.lawn.points[1][0]: expected a number in [0, 1], got 1.2"),
    ("zone crossing edges", HEAD + "    inputs: [a.mp4]\n    zones:\n"
     "      lawn: {points: [[0, 0], [1, 1], [1, 0], [0, 1]]}\n",
     "6: cameras.front_door.zones.lawn.points: edges 0-1 and 2-3 cross; a zone must be a simple polygon (list its "
     "points in order around it)"),
    ("zone without area", HEAD + "    inputs: [a.mp4]\n    zones:\n"
     "      lawn: {points: [[0, 0], [0.5, 0.5], [1, 1]]}\n",
     "6: cameras.front_door.zones.lawn.points: the polygon has no area (its points lie on one line)"),
    ("zone bad mode", HEAD + "    inputs: [a.mp4]\n    zones:\n"
     "      lawn: {points: [[0, 0], [1, 0], [1, 1]], mode: mask}\n",
     "6: cameras.front_door.zones.lawn.mode: expected one of watch, ignore, got 'mask'"),
    ("bad camera name", "bundle: b.stp\ncameras:\n  front door:\n    inputs: [a.mp4]\n",
     "3: cameras.front door: expected a camera name of letters, digits, '_' and '-' (it becomes an MQTT topic "
     "level), got 'front door'"),
    ("camera name with a slash", "bundle: b.stp\ncameras:\n  front/door:\n    inputs: [a.mp4]\n",
     "3: cameras.front/door: expected a camera name of letters, digits, '_' and '-' (it becomes an MQTT topic "
     "level), got 'front/door'"),
    ("duplicate key", HEAD + "    inputs: [a.mp4]\n    threshold: 0.5\n    threshold: 0.6\n",
     "6: cameras.front_door.threshold: duplicate key (also on line 5)"),
    ("missing bundle", "cameras:\n  a: {inputs: [a.mp4]}\n",
     "1: (top level): expected a value for 'bundle', got none"),
    ("mqtt port", "bundle: b.stp\nmqtt:\n  host: h\n  port: 70000\ncameras:\n  a: {inputs: [a.mp4]}\n",
     "4: mqtt.port: expected an integer in [1, 65535], got 70000"),
    ("webhook url", "bundle: b.stp\nwebhooks:\n  - url: ftp://x/y\ncameras:\n  a: {inputs: [a.mp4]}\n",
     "3: webhooks[0].url: expected an http:// or https:// URL, got 'ftp://x/y'"),
    ("webhook secret not base64", "bundle: b.stp\nwebhooks:\n  - url: https://x/y\n    secret: whsec_%%%\n"
     "cameras:\n  a: {inputs: [a.mp4]}\n",
     "4: webhooks[0].secret: webhook secret starts with 'whsec_' but the rest is not valid base64 (expected "
     "whsec_<base64 key>, or a plain string without the prefix)"),
    ("events range", HEAD + "    inputs: [a.mp4]\n    events: {max_duration_s: 0}\n",
     "5: cameras.front_door.events.max_duration_s: expected a number > 0, got 0"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    got = error_of(path)
    assert got == f"{path}:{message}"


def test_error_attributes_and_class(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "    inputs: [a.mp4]\n    threshold: high\n")
    with pytest.raises(UsageError) as exc:  # a ConfigError is a UsageError, so the CLI prints it as one line
        load_config(path)
    assert isinstance(exc.value, ConfigError)
    assert (exc.value.file, exc.value.line, exc.value.key) == (str(path), 5, "cameras.front_door.threshold")


def test_yaml_syntax_errors_give_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "    inputs: [a.mp4\n    threshold: 0.5\n")
    assert error_of(path) == (f"{path}:5: YAML syntax error: expected ',' or ']', but got ':' (while parsing a "
                              "flow sequence on line 4)")
    path = write(tmp_path, HEAD + "    inputs: [a.mp4]\n   threshold: 0.5\n")  # bad indentation
    got = error_of(path)
    assert got.startswith(f"{path}:5: YAML syntax error: ")
    assert error_of(write(tmp_path, "# nothing\n")).startswith(f"{path}:1: the config file is empty")


def test_secret_values_stay_out_of_error_messages(tmp_path: Path, env: dict[str, str]) -> None:
    # a secret put where a number belongs: the error names the key, not the secret
    got = error_of(write(tmp_path, "bundle: b.stp\nmqtt: {host: h, port: '{env:MQTT_PASSWORD}'}\ncameras:\n"
                                   "  a: {inputs: [a.mp4]}\n"))
    assert got.endswith("2: mqtt.port: expected an integer in [1, 65535], got a string from an {env:...} reference")
    assert env["MQTT_PASSWORD"] not in got
    got = error_of(write(tmp_path, "bundle: b.stp\nwebhooks:\n  - url: 'ftp://u:{env:WEBHOOK_SECRET}@x/y'\n"
                                   "cameras:\n  a: {inputs: [a.mp4]}\n"))
    assert env["WEBHOOK_SECRET"] not in got and "ftp://u:***@x/y" in got


def test_dict_errors_name_the_key_without_a_line() -> None:
    data = {"bundle": "b.stp", "cameras": {"front_door": {"inputs": ["a.mp4"], "threshold": "high"}}}
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data)
    assert str(exc.value) == "<dict>: cameras.front_door.threshold: expected a number in [0, 1], got 'high'"
    assert exc.value.line is None
    data = {"bundle": "b.stp", "cameras": {"a": {"inputs": ["a.mp4"], "zones": {"z": {"pointz": []}}}}}
    with pytest.raises(ConfigError, match=r"^site: cameras\.a\.zones\.z\.pointz: unknown key; did you mean 'points'"):
        config_from_dict(data, name="site")


def test_missing_file_and_missing_pyyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stp_edge.errors import MissingInputError

    with pytest.raises(MissingInputError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    path = write(tmp_path, "bundle: b.stp\ncameras:\n  a: {inputs: [a.mp4]}\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ImportError, as when it is missing
    with pytest.raises(MissingDependencyError, match=r"pip install 'stp-edge\[apps\]'"):
        load_config(path)
