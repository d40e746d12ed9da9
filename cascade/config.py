"""The cascade configuration, ``cascade.toml``: which model folders, which gate.

Paths are relative to the config file's folder. Saving the gate rewrites only the gate keys, keeps every comment and
other key (tomlkit), and replaces the file atomically, so a crash never leaves a half-written config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from cascade.calibration import CalibrationSettings, parse_calibration
from cascade.errors import ConfigError
from cascade.fileio import write_atomic
from cascade.gate import GateRule

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "cascade.toml"


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
    try:
        doc = tomlkit.parse(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file '{p}' does not exist") from exc
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"'{p}' is not valid TOML: {exc}") from exc
    base = p.resolve().parent
    dirs = []
    for name in ("stage1", "stage2"):
        sec = _section(doc, name, p)
        if "model_dir" not in sec:
            raise ConfigError(f"'{p}': [{name}] needs model_dir = \"path/to/model/folder\"")
        dirs.append((base / str(sec["model_dir"])).resolve())
    gate = _section(doc, "gate", p)
    try:
        threshold = float(gate.get("threshold", 0.6))
        rule = GateRule.parse(str(gate.get("rule", GateRule.P_NORMAL.value)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"'{p}' [gate]: {exc}") from exc
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"'{p}' [gate]: threshold must lie in [0, 1], got {threshold}")
    calibration = parse_calibration(doc.get("calibration"), p)
    normal = str(gate.get("normal_label", "normal"))
    return CascadeConfig(dirs[0], dirs[1], threshold, rule, normal, p.resolve(), calibration)


def save_gate(path: str | os.PathLike, threshold: float, rule: GateRule | str | None = None) -> None:
    """Write the gate threshold (and rule) into an existing config, keeping the rest of the file as it is."""
    p = Path(path)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ConfigError(f"gate threshold must lie in [0, 1], got {threshold}")
    try:
        doc = tomlkit.parse(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file '{p}' does not exist") from exc
    if "gate" not in doc:
        doc["gate"] = tomlkit.table()
    doc["gate"]["threshold"] = round(float(threshold), 4)
    if rule is not None:
        doc["gate"]["rule"] = GateRule.parse(rule).value
    write_atomic(p, tomlkit.dumps(doc))
