"""stp-edge: STPrompt video anomaly detection exported to ONNX/TensorRT with a torch-free runtime."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
VERSION = "0.1.0"

# Every range has an upper bound: the next major release, or for torch (whose ONNX exporter changes between
# minor releases) the newest tested minor. requirements/ci.txt pins one tested version inside each range
# (tests/test_packaging.py checks both).
RUNTIME = ["numpy>=1.24,<3", "opencv-python-headless>=4.8,<6", "tqdm>=4.60,<5"]
EXTRAS = {
    "ort": ["onnxruntime>=1.17,<2"],
    "ort-gpu": ["onnxruntime-gpu>=1.17,<2"],
    # OpenVINO runs the same ONNX graphs on Intel/AMD CPUs (bf16 on AVX512_BF16/AMX) and Intel GPUs.
    "openvino": ["openvino>=2024.0,<2027"],
    # TensorRT's Python wheels; on Jetson (JetPack 6) use the system python3-libnvinfer instead.
    "trt": ["tensorrt>=10.0,<12"],
    # The CUDA preprocessor's binding: pycuda, or NVIDIA's cuda-python (x86-64 and aarch64 wheels);
    # $STP_EDGE_CUDA_BINDING picks one where both are installed (auto: pycuda).
    "cuda": ["pycuda>=2024.1,<2027"],
    "cuda-python": ["cuda-bindings>=12.6,<14"],
    # `make test` installs the CPU torch build pinned in requirements/ci.txt.
    "export": [
        "torch>=2.3,<2.14",
        "onnx>=1.16,<2",
        "onnxscript>=0.1,<1",
        "onnxsim>=0.4,<1",
        "safetensors>=0.4,<1",
        "ftfy>=6.1,<7",
        "regex>=2023.0,<2028",  # calendar-versioned: the ceiling is a year
        "pillow>=10.0,<14",
    ],
    "eval": ["scikit-learn>=1.3,<2", "matplotlib>=3.7,<4"],
    # Scale-out: Ray Data pipelines for archives (`stp-edge extract --ray`, `stp-edge score --ray`), and the
    # triton:// client backend (the server itself runs from PyTriton: stp_edge/scale/serve.py).
    "scale": ["ray[data]>=2.40,<3", "tritonclient[http]>=2.40,<3"],
    "dev": ["pytest>=8.0,<10", "ruff>=0.5,<1", "polygraphy>=0.49,<1", "pillow>=10.0,<14", "vermin>=1.6,<2"],
    # H.264 overlays: PyAV's wheels carry an FFmpeg with libx264 (OpenCV's have no H.264 encoder).
    "h264": ["av>=13,<20"],
    # Camera apps: the MQTT sink and the deployment config file (`stp-edge run --config cameras.yaml`); event clips
    # use PyAV (the h264 extra).
    "apps": ["paho-mqtt>=2.0,<3", "pyyaml>=6.0,<7", "av>=13,<20"],
}

setup(
    name="stp-edge",
    version=VERSION,
    description=__doc__,
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "stp_edge",
        "stp_edge.apps",
        "stp_edge.apps.gst",
        "stp_edge.backends",
        "stp_edge.bench",
        "stp_edge.bundle",
        "stp_edge.cuda",
        "stp_edge.demo",
        "stp_edge.eval",
        "stp_edge.model",
        "stp_edge.pipeline",
        "stp_edge.scale",
        "stp_edge.synthetic",
        "stp_edge.export",
        "stp_edge.kernels",
    ],
    # The repository keeps export scripts and CUDA sources at the top level; installed, they
    # become subpackages so `pip install stp-edge[export]` gives a working `stp-edge export`.
    package_dir={"stp_edge.export": "export", "stp_edge.kernels": "kernels"},
    package_data={"stp_edge.kernels": ["*.cu", "*.cuh"], "stp_edge.model": ["assets/*"],
                  "stp_edge.apps.gst": ["python/*.py"]},
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["stp-edge=stp_edge.cli:main"]},
)
