"""File helpers: atomic writes and the one content hash.

Atomic writes: a reader (another session, a crash, a second process) sees the old file or the new one, never half of
one. Used for configs, checkpoints, metrics, prediction caches, ONNX exports, engines and their manifests. The content
hash is the identity of models in caches and manifests.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` in one step.

    The temporary name is unique per call, so threads and processes writing the same target never collide; on any
    failure it is removed. The file gets the usual permissions (unlike ``tempfile.mkstemp``'s private 0600).
    """
    target = Path(path)
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
