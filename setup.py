"""stp-edge: STPrompt video anomaly detection exported to ONNX/TensorRT with a torch-free runtime."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
VERSION = "0.1.0"

RUNTIME = ["numpy>=1.24", "opencv-python-headless>=4.8", "tqdm>=4.60"]
EXTRAS = {
    "ort": ["onnxruntime>=1.17"],
    "ort-gpu": ["onnxruntime-gpu>=1.17"],
    # TensorRT's Python wheels; on Jetson (JetPack 6) use the system python3-libnvinfer instead.
    "trt": ["tensorrt>=10.0"],
    "cuda": ["pycuda>=2024.1"],
    # torch is deliberately unpinned here; `make test` pins the CPU build (requirements/ci.txt).
    "export": [
        "torch>=2.3",
        "onnx>=1.16",
        "onnxscript>=0.1",
        "onnxsim>=0.4",
        "safetensors>=0.4",
        "ftfy>=6.1",
        "regex>=2023.0",
        "pillow>=10.0",
    ],
    "eval": ["scikit-learn>=1.3", "matplotlib>=3.7"],
    "dev": ["pytest>=8.0", "ruff>=0.5", "polygraphy>=0.49", "pillow>=10.0"],
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
        "stp_edge.backends",
        "stp_edge.cuda",
        "stp_edge.model",
        "stp_edge.export",
        "stp_edge.kernels",
    ],
    # The repository keeps export scripts and CUDA sources at the top level (DESIGN §4); installed, they
    # become subpackages so `pip install stp-edge[export]` gives a working `stp-edge export`.
    package_dir={"stp_edge.export": "export", "stp_edge.kernels": "kernels"},
    package_data={"stp_edge.kernels": ["*.cu", "*.cuh"], "stp_edge": ["assets/demo/*"]},
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["stp-edge=stp_edge.cli:main"]},
)
