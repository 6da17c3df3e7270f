"""The package version, in a leaf module every layer may import (setup.py reads it too)."""

__version__ = "0.1.0"
