"""The one command-line convention of this project's CLIs: ``get_args_parser()`` + ``main(argv) -> int``.

Every CLI builds its parser with :class:`CliParser` and ends ``main`` with :func:`run_cli`. Expected failures (a bad
argument, a missing folder, an unwritable output, a bad model or config) print one ``error: …`` line and give exit code
2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cascade.errors import CascadeError

USAGE_ERROR = 2
SOME_FILES_FAILED = 1


def report_unreadable(failed: Sequence[tuple[str, str]], what: str) -> int:
    """Name each file that could not be read on stderr; the exit code: 1 when there were any (the run went on)."""
    if not failed:
        return 0
    print(f"{len(failed)} file(s) could not be read and are not {what}:", file=sys.stderr)
    for rel, why in failed:
        print(f"  {rel}: {why}", file=sys.stderr)
    return SOME_FILES_FAILED


class UsageError(CascadeError):
    """The command line itself is wrong (unknown option, missing or malformed argument)."""


class CliParser(argparse.ArgumentParser):
    """argparse, but a bad command line raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (batch sizes, workers, repeats)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command (``args.func(args) -> int``); expected errors become exit code 2."""
    try:
        args = parser.parse_args(argv)
        return int(args.func(args))
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except (CascadeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
