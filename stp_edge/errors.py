"""The root of the errors a user can act on: the CLI prints these as one line (exit 2), bugs keep a traceback.

Every error class the library raises on purpose (a bad bundle, an unreadable video, an invalid frame, a missing
optional dependency, a bad argument) derives from `StpEdgeError`. A ValueError, OSError or ImportError raised by
anything else (a bug, NumPy on a shape it did not expect) is not one, so it is reported with its traceback.
"""

from __future__ import annotations


class StpEdgeError(Exception):
    """Base of the errors stp-edge raises on purpose about its inputs, options or environment."""


class UsageError(StpEdgeError, ValueError):
    """A bad argument or option value (a ValueError, so existing `except ValueError` keeps working)."""


class MissingInputError(StpEdgeError, FileNotFoundError):
    """A file or directory the caller named does not exist (or lacks what it must hold)."""


class OutputExistsError(StpEdgeError, FileExistsError):
    """An output exists and replacing it was not asked for."""
