"""stp-edge-demo-model: the weights of stp-edge's demo model, a distribution of their own.

Kept out of the stp-edge wheel so a deployment does not carry them; `stp-edge demo` and `stp-edge export --demo`
find them through `stp_edge_demo_model.checkpoint_dir()`. From a checkout: `pip install ./demo_model`.
"""

from setuptools import setup

setup(
    name="stp-edge-demo-model",
    version="0.1.0",
    description="Weights of the stp-edge demo model (tiny STPrompt trained on the synthetic benchmark)",
    python_requires=">=3.10",
    packages=["stp_edge_demo_model"],
    package_data={"stp_edge_demo_model": ["model.safetensors", "config.json", "SHA256SUMS", "README.md",
                                          "training_log.json"]},
    zip_safe=False,
)
