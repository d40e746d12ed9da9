"""The cascade at run time: two stage backends and a gate, over images of any size.

Backends are passed in (``engines.select.open_cascade`` opens them), so this module knows the cascade's logic, not how
a stage is executed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cascade.backend import Backend
from cascade.calibration import apply_temperature
from cascade.errors import ConfigError
from cascade.gate import DEFAULT_THRESHOLD, Decision, GateRule, decide, passes_gate
from cascade.preprocess import preprocess_batch

if TYPE_CHECKING:
    from cascade.checkpoint import StageSpec


@dataclass
class StageRun:
    probs: np.ndarray  # N×C
    cams: np.ndarray | None  # N×C×h×w or None
    seconds: float


@dataclass
class Cascade:
    """Stage 1 + gate + stage 2, each stage run by a :class:`cascade.backend.Backend`."""

    backend1: Backend
    backend2: Backend
    threshold: float = DEFAULT_THRESHOLD
    rule: GateRule = GateRule.P_NORMAL
    normal_label: str = "normal"
    reasons: dict[int, str] = field(default_factory=dict)  # why each stage's backend was chosen
    temperatures: tuple[float, float] = (1.0, 1.0)  # per stage, applied to its probabilities (cascade.calibration)

    def __post_init__(self) -> None:
        s1, s2 = self.spec1, self.spec2
        if [c.lower() for c in s1.classes] != [c.lower() for c in s2.classes]:
            raise ConfigError(
                f"the stages disagree on classes: stage 1 {list(s1.classes)} vs stage 2 {list(s2.classes)}; "
                "both must be trained on the same class folders"
            )
        self.normal_index = s1.class_index(self.normal_label)
        self.rule = GateRule.parse(self.rule)
        self.temperatures = (float(self.temperatures[0]), float(self.temperatures[1]))

    def backend(self, stage: int) -> Backend:
        """The backend of stage 1 or 2."""
        if stage == 1:
            return self.backend1
        if stage == 2:
            return self.backend2
        raise ValueError(f"a cascade has stages 1 and 2, not {stage}")

    @property
    def spec1(self) -> StageSpec:
        return self.backend1.spec

    @property
    def spec2(self) -> StageSpec:
        return self.backend2.spec

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec1.classes

    def calibrate(self, stage: int, probs: np.ndarray) -> np.ndarray:
        """A stage's raw probabilities with its temperature applied (unchanged at T = 1)."""
        t = self.temperatures[stage - 1]
        return probs if t == 1.0 else apply_temperature(probs, t).astype(np.asarray(probs).dtype)

    def run_stage(
        self, stage: int, images: Sequence[np.ndarray], with_cams: bool = False, calibrated: bool = True
    ) -> StageRun:
        """Preprocess grayscale images for one stage and run it; ``calibrated=False`` gives the raw probabilities."""
        backend = self.backend(stage)
        start = time.perf_counter()
        batch = preprocess_batch(images, backend.spec.resolution, backend.spec.preprocess)
        if with_cams:
            probs, cams = backend.predict_with_cams(batch)
        else:
            probs, cams = backend.predict(batch), None
        if calibrated:
            probs = self.calibrate(stage, probs)
        return StageRun(probs, cams, time.perf_counter() - start)

    def passes(self, p1: np.ndarray, threshold: float | None = None) -> np.ndarray:
        t = self.threshold if threshold is None else threshold
        return passes_gate(p1, self.normal_index, t, self.rule)

    def predict(
        self, images: Sequence[np.ndarray], stage2_always: bool = False, calibrated: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stage-1 probabilities for all images, stage-2 ones where the gate routes them (NaN rows elsewhere).

        ``stage2_always`` runs stage 2 on every image, so the gate can later be moved without running a model.
        ``calibrated=False`` returns raw probabilities (the gate still routes on the calibrated ones).
        """
        raw1 = self.run_stage(1, images, calibrated=False).probs
        p1 = self.calibrate(1, raw1)
        p2 = np.full_like(p1, np.nan)
        todo = np.arange(len(images)) if stage2_always else np.flatnonzero(~self.passes(p1))
        if len(todo):
            p2[todo] = self.run_stage(2, [images[i] for i in todo], calibrated=calibrated).probs
        return (p1 if calibrated else raw1), p2

    def decide(self, p1: np.ndarray, p2: np.ndarray | None, threshold: float | None = None) -> Decision:
        """One image's decision record at ``threshold`` (default: the configured gate)."""
        t = self.threshold if threshold is None else threshold
        p2 = None if p2 is None or np.isnan(p2).any() else p2
        return decide(p1, p2, self.classes, self.normal_index, t, self.rule)
