"""Errors of bundle loading: every problem with a bundle is a `BundleError` with a one-line message."""

from __future__ import annotations


class BundleError(Exception):
    """Base class of every problem with a bundle."""


class ManifestError(BundleError):
    """manifest.json is missing, unreadable, of an unknown schema, or lacks a key."""


class MissingFileError(BundleError):
    """A file listed in the manifest is not in the bundle."""


class ChecksumError(BundleError):
    """A file's sha256 differs from the manifest (the file was edited or corrupted)."""


class EngineCompatibilityError(BundleError):
    """No TensorRT plan of the bundle fits this machine (GPU, compute capability or TensorRT version)."""
