"""Dataset index: an ImageFolder tree (``root/{train,val,test}/<class>/*`` or ``root/<class>/*``) as a flat table.

The dashboard browses, filters and caches predictions by this index; it never serves a file that resolves outside the
chosen root (symlinks included). Containment is checked twice: when the folder is indexed and again when a file is
read (:func:`read_item`), so a file swapped for a symlink out of the root after indexing is refused. A split or class
folder that links out of the root is skipped whole. Entries that are not regular files (FIFOs, sockets, devices, broken
symlinks, symlink loops) are indexed as items with an ``error`` and never opened. Listing uses ``os.scandir``: a
regular file's type comes with the directory listing, so only symlinks and special files cost a system call.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cascade.errors import ConfigError, ImageReadError
from cascade.images import is_image_file, read_image, special_file_reason

SPLITS = ("train", "val", "test")
NO_SPLIT = "all"


@dataclass(frozen=True)
class Item:
    path: Path  # absolute
    rel: str  # relative to the dataset root, forward slashes
    split: str
    label: str
    error: str = ""  # set at index time for an entry that cannot be an image (a FIFO, a broken symlink, ...)
    root: Path | None = None  # the dataset root it was indexed under: reads re-check containment against it


@dataclass(frozen=True)
class DatasetIndex:
    root: Path
    items: tuple[Item, ...]
    classes: tuple[str, ...]

    @property
    def splits(self) -> tuple[str, ...]:
        seen = {it.split for it in self.items}
        return tuple(s for s in (*SPLITS, NO_SPLIT) if s in seen)

    def select(self, split: str | None = None) -> list[Item]:
        return [it for it in self.items if split in (None, it.split)]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: count}}."""
        out: dict[str, dict[str, int]] = {s: dict.fromkeys(self.classes, 0) for s in self.splits}
        for it in self.items:
            out[it.split][it.label] += 1
        return out

    def fingerprint(self, split: str | None = None) -> str:
        """Hash of the file list (paths, sizes, mtimes): cached predictions are valid while it does not change."""
        lines = []
        for it in self.select(split):
            try:
                st = os.stat(it.path)
                lines.append(f"{it.rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n")
            except OSError as exc:  # a broken link or a removed file: part of the identity, not a crash
                lines.append(f"{it.rel}\0{exc.errno}\n")
        return hashlib.sha256("".join(lines).encode()).hexdigest()[:16]

    def resolve(self, rel: str) -> Path:
        """The absolute path of ``rel`` inside the root; refuses anything that escapes it."""
        return safe_join(self.root, rel)

    def read(self, rel: str):
        """Read the image at ``rel`` (2-D uint8), resolving and confining it to the root at this moment."""
        try:
            path = self.resolve(rel)
        except ConfigError as exc:
            raise ImageReadError(str(exc)) from exc
        return read_image(path, root=self.root)


def read_item(item: Item):
    """Read an indexed item: its index-time error, or the file re-checked against its root right before reading."""
    if item.error:
        raise ImageReadError(item.error)
    return read_image(item.path, root=item.root)


def safe_join(root: Path, rel: str) -> Path:
    """``root/rel`` resolved, or ConfigError when it would leave ``root`` (``..``, absolute paths, symlinks)."""
    base = Path(root).resolve()
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise ConfigError(f"'{rel}' lies outside the dataset root '{base}'")
    return target


def _class_dirs(folder: Path) -> list[Path]:
    try:
        found = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError as exc:
        raise ConfigError(f"cannot list the dataset folder '{folder}': {exc.strerror or exc}") from exc
    return sorted(found, key=lambda d: d.name)


def _walk(folder: str) -> Iterator[os.DirEntry]:
    """Image-file entries under ``folder``, in ``os.walk`` order (a folder's files sorted, then its subfolders sorted).

    Hidden names are skipped; symlinks to folders are not followed (as ``os.walk``); unreadable subfolders are skipped.
    Entries come from ``os.scandir``, whose file types come with the listing, so a regular file costs no system call.
    """
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except OSError:
        return
    files, subdirs = [], []
    for e in entries:
        try:
            is_dir = e.is_dir()  # follows symlinks, as os.walk's split into folders and files does
        except OSError:
            is_dir = False
        if is_dir:
            if not e.is_symlink():
                subdirs.append(e)
        elif is_image_file(e.name):
            files.append(e)
    files.sort(key=lambda e: e.name)
    yield from files
    for d in sorted(subdirs, key=lambda e: e.name):
        yield from _walk(d.path)


def _files(folder: Path) -> list[Path]:
    return [Path(e.path) for e in _walk(os.fspath(folder))]


def _escapes(f: Path, base: Path) -> bool:
    """True for a symlink whose target lies outside ``base`` (never indexed); loops and broken links do not escape."""
    if not f.is_symlink():
        return False
    try:
        target = f.resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        return False
    return target != f.absolute() and base not in target.parents


def _outside(folder: Path, base: Path) -> bool:
    """True when ``folder`` resolves outside ``base`` (a split or class folder that is a symlink out of the root)."""
    target = folder.resolve()
    return target != base and base not in target.parents


def index_dataset(root: str | os.PathLike) -> DatasetIndex:
    """Index an ImageFolder dataset, with or without train/val/test split folders."""
    base = Path(root).expanduser()
    if not base.is_dir():
        if base.exists():
            raise ConfigError(f"dataset path '{base}' is a file, not a folder: give the folder that holds the classes")
        raise ConfigError(f"dataset folder '{base}' does not exist")
    base = base.resolve()
    split_dirs = [base / s for s in SPLITS if (base / s).is_dir()]
    groups = [(d.name, d) for d in split_dirs] if split_dirs else [(NO_SPLIT, base)]
    prefix = os.path.join(os.fspath(base), "")  # entry paths start with it; the rest is the relative path
    items: list[Item] = []
    classes: set[str] = set()
    for split, folder in groups:
        for cdir in _class_dirs(folder):
            if _outside(cdir, base):
                continue  # a split or class folder that links out of the root: none of its files is indexed
            classes.add(cdir.name)
            for entry in _walk(os.fspath(cdir)):
                f = Path(entry.path)
                rel = entry.path[len(prefix) :]
                if os.sep != "/":
                    rel = rel.replace(os.sep, "/")
                if entry.is_file(follow_symlinks=False):  # a regular file (the type came with the listing)
                    items.append(Item(f, rel, split, cdir.name, "", base))
                    continue
                if entry.is_symlink() and _escapes(f, base):
                    continue  # a symlink out of the root is never indexed
                reason = special_file_reason(f)  # links are followed here; FIFOs, sockets, devices get a reason
                items.append(Item(f, rel, split, cdir.name, f"'{rel}' {reason}" if reason else "", base))
    if not items:
        raise ConfigError(
            f"no images found in '{base}'; expected ImageFolder layout root/[train|val|test/]<class>/<image>"
        )
    return DatasetIndex(base, tuple(items), tuple(sorted(classes)))


def iter_image_files(paths: Sequence[str | os.PathLike]) -> Iterator[Path]:
    """Files as given, and image files under folders (recursive, sorted): the inputs of a command-line run.

    Nothing is opened here: special files (FIFOs, sockets, devices, broken links) are listed as given and refused by
    the reader (:func:`cascade.images.special_file_reason`), so each gets its row with the reason.
    """
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from _files(p)
        else:
            yield p
