"""The cascade configuration, ``cascade.toml``: which model folders, which gate.

Paths are relative to the config file's folder. Saving the gate rewrites only the gate keys, keeps every comment and
other key (tomlkit), the file's mode, line endings and BOM, writes through a symlink to its target, and replaces the
file atomically, so a crash never leaves a half-written config. A config that was edited into an invalid one since it
was loaded is not overwritten: :class:`StaleConfigError` says so.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from cascade.calibration import SECTION as CALIBRATION_SECTION
from cascade.calibration import CalibrationSettings, parse_calibration
from cascade.errors import ConfigError
from cascade.fileio import atomic_path
from cascade.gate import DEFAULT_THRESHOLD, GateRule

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "cascade.toml"
_BOM = b"\xef\xbb\xbf"


class StaleConfigError(ConfigError):
    """The config file on disk is no longer a valid config (edited since it was loaded); nothing was written."""


@dataclass(frozen=True)
class CascadeConfig:
    stage1_dir: Path
    stage2_dir: Path
    threshold: float
    rule: GateRule
    normal_label: str
    path: Path | None = None
    calibration: CalibrationSettings = CalibrationSettings()  # [calibration]: per-stage temperatures, on or off

    @property
    def temperatures(self) -> tuple[float, float]:
        """Per-stage temperatures to apply: the fitted ones when calibration is on, else (1, 1)."""
        return self.calibration.temperatures


def _section(doc: dict, name: str, path: Path) -> dict:
    sec = doc.get(name)
    if not isinstance(sec, dict):
        raise ConfigError(f"'{path}' has no [{name}] table")
    return sec


def load_config(path: str | os.PathLike | None = None) -> CascadeConfig:
    """Read and validate a cascade config (default: ``cascade.toml`` at the repository root)."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    return _validate(_parse(_read_text(p)[0], p), p)


def _read_text(p: Path) -> tuple[str, bool, bool]:
    """The config's text with LF line endings, whether the file had a UTF-8 BOM, and whether it used CRLF."""
    try:
        if p.exists() and not p.is_file():
            raise ConfigError(f"config '{p}' is not a regular file")
        raw = p.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"config file '{p}' does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config '{p}': {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"'{p}' is not UTF-8 text; save it as UTF-8") from exc
    return text.replace("\r\n", "\n"), raw.startswith(_BOM), "\r\n" in text


def _parse(text: str, p: Path) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"'{p}' is not valid TOML: {exc}") from exc


def _validate(doc: tomlkit.TOMLDocument, p: Path) -> CascadeConfig:
    base = p.resolve().parent
    dirs = []
    for name in ("stage1", "stage2"):
        sec = _section(doc, name, p)
        if not isinstance(sec.get("model_dir"), str) or not str(sec["model_dir"]).strip():
            raise ConfigError(f"'{p}': [{name}] needs model_dir = \"path/to/model/folder\" (a string)")
        dirs.append((base / str(sec["model_dir"])).resolve())
    gate = _section(doc, "gate", p)
    raw = gate.get("threshold", DEFAULT_THRESHOLD)
    if isinstance(raw, bool) or not isinstance(raw, int | float):  # true would read as 1.0, "0.5" as 0.5
        raise ConfigError(f"'{p}' [gate]: threshold must be a number in [0, 1] (no quotes), got {raw!r}")
    try:
        threshold = float(raw)
        rule = GateRule.parse(str(gate.get("rule", GateRule.P_NORMAL.value)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"'{p}' [gate]: {exc}") from exc
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"'{p}' [gate]: threshold must lie in [0, 1], got {threshold}")
    calibration = parse_calibration(doc.get("calibration"), p)
    normal = str(gate.get("normal_label", "normal"))
    return CascadeConfig(dirs[0], dirs[1], threshold, rule, normal, p.resolve(), calibration)


def save_gate(path: str | os.PathLike, threshold: float, rule: GateRule | str | None = None) -> None:
    """Write the gate threshold (and rule) into an existing config, keeping the rest of the file as it is.

    Raises :class:`StaleConfigError` when the file is no longer a valid config, and ConfigError when it may not be
    written; in both cases the file is left untouched.
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ConfigError(f"gate threshold must lie in [0, 1], got {threshold}")
    parsed_rule = GateRule.parse(rule).value if rule is not None else None

    def edit(doc: tomlkit.TOMLDocument) -> None:
        if "gate" not in doc:
            doc["gate"] = tomlkit.table()
        doc["gate"]["threshold"] = round(float(threshold), 4)
        if parsed_rule is not None:
            doc["gate"]["rule"] = parsed_rule

    _update_config(path, edit, "the gate")


def save_calibration(path: str | os.PathLike, settings: CalibrationSettings) -> None:
    """Write the ``[calibration]`` table (see :mod:`cascade.calibration`) into an existing config, as ``save_gate``
    writes the gate: every other key, comment, mode, line ending and BOM kept, atomically, never over a stale file."""
    values = settings.table()

    def edit(doc: tomlkit.TOMLDocument) -> None:
        if CALIBRATION_SECTION not in doc:
            doc[CALIBRATION_SECTION] = tomlkit.table()
        for key, value in values.items():
            doc[CALIBRATION_SECTION][key] = value

    _update_config(path, edit, "the calibration")


def _update_config(path: str | os.PathLike, edit: Callable[[tomlkit.TOMLDocument], None], what: str) -> None:
    """Apply ``edit`` to a valid config's document and write it back the way the file was (see the module doc)."""
    link = Path(path)
    p = link.resolve()  # a symlinked config is written at its target; the link stays a link
    text, bom, crlf = _read_text(p)
    try:
        doc = _parse(text, link)
        _validate(doc, link)
    except ConfigError as exc:
        raise StaleConfigError(
            f"the config '{link}' is no longer valid (was it edited since it was loaded?): {exc}. "
            f"{what[0].upper()}{what[1:]} was not saved; fix the file or reload the app"
        ) from exc
    edit(doc)
    out = tomlkit.dumps(doc)
    if crlf:
        out = out.replace("\n", "\r\n")
    data = (_BOM if bom else b"") + out.encode("utf-8")
    mode = stat.S_IMODE(os.stat(p).st_mode)
    # A config without write bits is read-only by intent, even for a user (root) whom the OS would let write it.
    problem = None
    if not mode & 0o222 or not os.access(p, os.W_OK):
        problem = f"'{p}' is read-only (mode {mode:o})"
    elif not os.access(p.parent, os.W_OK | os.X_OK):
        problem = f"its folder '{p.parent}' is not writable"
    if problem:
        raise ConfigError(
            f"cannot save {what} to '{link}': {problem}; make it writable, or copy the config somewhere writable "
            "and open that one"
        )
    try:
        with atomic_path(p) as tmp:
            tmp.write_bytes(data)
            os.chmod(tmp, mode)  # the replacement keeps the original's permissions
    except OSError as exc:
        raise ConfigError(f"cannot save {what} to '{link}': {exc.strerror or exc}") from exc
