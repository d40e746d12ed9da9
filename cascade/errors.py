"""Exception types: one per kind of failure a user can fix, so callers can show a message instead of a traceback."""

from __future__ import annotations


class CascadeError(Exception):
    """Base of every expected, user-fixable error raised by this project."""


class ImageReadError(CascadeError):
    """An input file cannot be read as a radiograph (corrupt, empty, wrong type, too large, no pixels)."""


class CheckpointError(CascadeError):
    """A model folder or checkpoint cannot be loaded (missing file, unsafe pickle, wrong layout or architecture)."""


class ConfigError(CascadeError):
    """The cascade configuration is missing, malformed or points at something that does not exist."""


class BackendError(CascadeError):
    """A backend cannot be created or run (missing engine, missing package, no GPU)."""
