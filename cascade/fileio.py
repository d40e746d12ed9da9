"""File helpers: atomic writes and the one content hash.

Atomic writes: a reader (another session, a crash, a second process) sees the old file or the new one, never half of
one. Used for configs, checkpoints, metrics, prediction caches, ONNX exports, engines and their manifests. The content
hash is the identity of models in caches and manifests.
"""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cascade.errors import CascadeError


def _not_a_file_reason(target: Path) -> str | None:
    """Why ``target`` must not be replaced by a file: it is (or links to) a folder, device, FIFO or socket."""
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None  # absent, a broken link or a file in the way of its folder (mkdir says so): a new file is written
    except OSError as exc:  # a symlink loop, a permission error on the way
        return f"cannot be checked ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "is a folder"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a device, FIFO or socket); writing would replace it"
    return None


def check_output_path(path: str | os.PathLike, what: str = "the output file") -> Path:
    """Refuse an output path before any work is done: a folder, a special file, an unwritable folder.

    Creates the parent folder (as the commands promise) and probes it with a real file, since ``os.access`` says yes
    to root on read-only mounts. Raises :class:`CascadeError` with the path and what to name instead.
    """
    target = Path(path)
    why = _not_a_file_reason(target)
    if why is not None:
        raise CascadeError(f"--out '{target}' {why}; name {what} to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = target.with_name(f".{target.name}.{uuid.uuid4().hex}.probe")
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise CascadeError(
            f"--out '{target}': cannot write in '{target.parent}' ({exc.strerror or exc}); choose a writable folder"
        ) from None
    return target


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` in one step.

    The temporary name is unique per call, so threads and processes writing the same target never collide; on any
    failure it is removed. The file gets the usual permissions (unlike ``tempfile.mkstemp``'s private 0600).
    """
    target = Path(path)
    why = _not_a_file_reason(target)
    if why is not None:  # os.replace would swap a device node or a link to one for a regular file
        raise CascadeError(f"refusing to write '{target}': it {why}")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes | memoryview | str) -> None:
    """Write bytes, or text as UTF-8, to ``path`` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Content hash of a file (model identity for caches and engine manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
