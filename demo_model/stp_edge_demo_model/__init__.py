"""The stp-edge demo model's checkpoint (`model.safetensors`, `config.json`), installed as package data."""

from __future__ import annotations

from pathlib import Path


def checkpoint_dir() -> Path:
    """The directory holding the demo checkpoint: this package's own directory."""
    return Path(__file__).resolve().parent
