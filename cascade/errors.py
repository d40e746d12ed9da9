"""Exception types: one per kind of failure a user can fix, so callers can show a message instead of a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class CascadeError(Exception):
    """Base of every expected, user-fixable error raised by this project."""


class ImageReadError(CascadeError):
    """An input file cannot be read as a radiograph (corrupt, empty, wrong type, too large, no pixels)."""


class CheckpointError(CascadeError):
    """A model folder or checkpoint cannot be loaded (missing file, unsafe pickle, wrong layout or architecture)."""


class ConfigError(CascadeError):
    """The cascade configuration is missing, malformed or points at something that does not exist."""


def run_cli_command(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a CLI subcommand: an expected error becomes one ``error: …`` line and exit code 2, never a traceback."""
    try:
        return command(args)
    except CascadeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
