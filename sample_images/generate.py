"""Generate synthetic AP knee radiograph phantoms whose bone density is known.

Each image gets a continuous bone-mineral ``density`` drawn from overlapping class distributions
(:data:`DENSITY_DISTRIBUTIONS`). Density drives the bone in ways that survive down-sampling to 128 px
(cortical thickness, trabecular density and texture contrast, bone/soft-tissue contrast), while
exposure, contrast, noise, blur, pose and laterality vary as nuisance. Because the class overlap is
known, so is the best accuracy any classifier can reach (:func:`bayes_optimal_accuracy`).

Usage::

    python -m sample_images.generate --out DIR --per-class N --seed S [--size 256] [--split 0.6 0.2 0.2]
    python -m sample_images.generate --preview sheet.png --seed 0

Every image's random stream comes from ``np.random.SeedSequence([seed, class_index, index])`` where
``index`` is the image's number within its class (the 4-digit number in its file name), so the same
seed gives byte-identical PNGs whatever the worker count.
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CLASSES: tuple[str, ...] = ("normal", "osteopenia", "osteoporosis")
# Class-conditional bone-mineral density: (mean, standard deviation) of a normal distribution.
DENSITY_DISTRIBUTIONS: dict[str, tuple[float, float]] = {
    "normal": (1.00, 0.10),
    "osteopenia": (0.75, 0.10),
    "osteoporosis": (0.50, 0.10),
}
# Densities are clipped to this range before rendering (only > 3.5 sigma tails are affected) so the
# renderer never sees a negative or absurd value; the manifest stores the clipped value.
DENSITY_RANGE: tuple[float, float] = (0.10, 1.60)
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_SPLIT: tuple[float, float, float] = (0.6, 0.2, 0.2)
MANIFEST_COLUMNS: tuple[str, ...] = ("file", "split", "label", "density", "seed")
MIN_SIZE = 64
BILATERAL_PROBABILITY = 0.3
# Bone brightness above soft tissue, per unit density, in units of the soft-tissue signal.
BONE_CONTRAST = 1.05
# Nuisance ranges (uniform). They vary how an image looks but carry no information about density;
# the bone/soft-tissue contrast is built to be invariant to gain and offset, and the rest are kept
# small enough that density stays readable at 128 px.
NUISANCE: dict[str, tuple[float, float]] = {
    "scale": (0.90, 1.10),  # knee size factor
    "rotation_deg": (-8.0, 8.0),
    "shift": (-0.05, 0.05),  # fraction of the image side, x and y
    "leg_build": (0.92, 1.18),  # soft-tissue width factor
    "background": (0.02, 0.10),  # unattenuated film level
    "tissue_gain": (0.24, 0.34),  # exposure x contrast, applied to soft tissue and bone alike
    "heel": (-0.06, 0.06),  # anode heel effect: top-to-bottom exposure gradient
    "blur_px": (0.2, 0.9),  # at 256 px
    "gamma": (0.95, 1.05),  # film / display curve
    "quantum_noise": (0.010, 0.030),
    "read_noise": (0.002, 0.008),
    "marker_level": (0.85, 0.98),
}


# --------------------------------------------------------------------------------------------------
# Density model and the Bayes-optimal rule
# --------------------------------------------------------------------------------------------------


def _class_log_pdfs(density: np.ndarray) -> np.ndarray:
    """Log class-conditional densities, shape ``density.shape + (n_classes,)``."""
    x = np.asarray(density, dtype=np.float64)[..., None]
    mu = np.array([DENSITY_DISTRIBUTIONS[c][0] for c in CLASSES])
    sd = np.array([DENSITY_DISTRIBUTIONS[c][1] for c in CLASSES])
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd * math.sqrt(2.0 * math.pi))


def bayes_label(density: float | np.ndarray) -> int | np.ndarray:
    """Class index chosen by the Bayes-optimal rule (equal priors: argmax of class-conditional pdf)."""
    labels = np.argmax(_class_log_pdfs(np.asarray(density)), axis=-1)
    return int(labels) if labels.ndim == 0 else labels


def bayes_optimal_accuracy(step: float = 1e-4) -> float:
    """Accuracy of the Bayes-optimal rule under equal class priors, by numeric integration.

    This is the ceiling for any classifier that sees only the image, since the image is a function
    of density plus nuisance; trained models are judged against it.
    """
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step}")
    mus = [m for m, _ in DENSITY_DISTRIBUTIONS.values()]
    sds = [s for _, s in DENSITY_DISTRIBUTIONS.values()]
    lo, hi = min(mus) - 10 * max(sds), max(mus) + 10 * max(sds)
    x = np.arange(lo, hi + step, step)
    best = np.exp(_class_log_pdfs(x)).max(axis=-1)
    return float(best.sum() * step / len(CLASSES))


def sample_density(rng: np.random.Generator, class_index: int) -> float:
    """Draw one density from its class distribution, clipped to :data:`DENSITY_RANGE`."""
    mean, sd = DENSITY_DISTRIBUTIONS[CLASSES[class_index]]
    return float(np.clip(rng.normal(mean, sd), *DENSITY_RANGE))


def image_rng(seed: int, class_index: int, index: int) -> np.random.Generator:
    """Independent random stream per image, so output does not depend on order or worker count."""
    return np.random.default_rng(np.random.SeedSequence([seed, class_index, index]))


# --------------------------------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------------------------------

_AA_SHIFT = 4  # cv2 fixed-point bits: sub-pixel vertex positions for smooth anti-aliased outlines
_AA_SCALE = 1 << _AA_SHIFT


@dataclass
class KneeRender:
    """A rendered phantom and the region masks the renderer knows (for tests and sanity checks)."""

    image: np.ndarray  # uint8 (size, size)
    bone_mask: np.ndarray  # bool: femur, tibia, fibula
    soft_mask: np.ndarray  # bool: soft tissue away from bone
    background_mask: np.ndarray  # bool: outside the leg(s), away from the marker


@dataclass
class _Canvas:
    """Pixel grid of one knee: x in [0, 1] and y in [y0, y1] anatomical units, ``scale`` px per unit."""

    scale: float
    y0: float
    height: int
    width: int

    def px(self, xy: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """Anatomical (x, y) points to cv2 fixed-point pixel coordinates."""
        pts = np.asarray(xy, dtype=np.float64)
        out = np.empty_like(pts)
        out[:, 0] = pts[:, 0] * self.scale
        out[:, 1] = (pts[:, 1] - self.y0) * self.scale
        return np.round(out * _AA_SCALE).astype(np.int32)

    def rows(self) -> np.ndarray:
        """Anatomical y of every pixel row, shape (height, 1)."""
        return (np.arange(self.height, dtype=np.float32)[:, None] + 0.5) / self.scale + self.y0

    def cols(self) -> np.ndarray:
        """Anatomical x of every pixel column, shape (1, width)."""
        return (np.arange(self.width, dtype=np.float32)[None, :] + 0.5) / self.scale

    def blank(self) -> np.ndarray:
        return np.zeros((self.height, self.width), np.uint8)

    def polygon(self, img: np.ndarray, pts: np.ndarray, value: int = 255) -> None:
        cv2.fillPoly(img, [self.px(pts)], value, lineType=cv2.LINE_AA, shift=_AA_SHIFT)

    def ellipse(
        self, img: np.ndarray, center: tuple[float, float], axes: tuple[float, float], angle: float = 0.0
    ) -> None:
        c = self.px([center])[0]
        a = np.round(np.asarray(axes) * self.scale * _AA_SCALE).astype(int)
        cv2.ellipse(img, (int(c[0]), int(c[1])), (int(a[0]), int(a[1])), angle, 0, 360, 255, -1, cv2.LINE_AA, _AA_SHIFT)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _chaikin(points: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Corner-cutting subdivision of a closed outline: turns a coarse template into a smooth contour."""
    pts = np.asarray(points, dtype=np.float64)
    for _ in range(iterations):
        nxt = np.roll(pts, -1, axis=0)
        pts = np.stack([0.75 * pts + 0.25 * nxt, 0.25 * pts + 0.75 * nxt], axis=1).reshape(-1, 2)
    return pts


# Outline templates of a right knee (lateral side on the viewer's left), x relative to the bone's
# axis, y in anatomical units (joint line near 0.55). Shaped after the typical adult AP radiograph.
# fmt: off
_FEMUR_DISTAL = np.array(
    [
        (-0.082, 0.100), (-0.086, 0.180), (-0.096, 0.240), (-0.114, 0.290), (-0.140, 0.335), (-0.166, 0.375),
        (-0.184, 0.410), (-0.192, 0.445), (-0.193, 0.475), (-0.188, 0.498), (-0.176, 0.515), (-0.156, 0.526),
        (-0.124, 0.532), (-0.088, 0.533), (-0.060, 0.528), (-0.042, 0.516), (-0.032, 0.497), (-0.026, 0.480),
        (-0.014, 0.470), (0.000, 0.467), (0.014, 0.469), (0.028, 0.480), (0.034, 0.500), (0.044, 0.522),
        (0.064, 0.535), (0.094, 0.540), (0.128, 0.539), (0.160, 0.532), (0.182, 0.519), (0.195, 0.500),
        (0.200, 0.475), (0.200, 0.445), (0.192, 0.410), (0.174, 0.373), (0.148, 0.333), (0.120, 0.288),
        (0.100, 0.240), (0.089, 0.180), (0.082, 0.100),
    ]
)
# fmt: on
_FEMUR_NOTCH_ROWS = slice(17, 22)  # template points of the intercondylar notch roof
# fmt: off
_TIBIA_PROXIMAL = np.array(
    [
        (-0.200, 0.592), (-0.203, 0.578), (-0.196, 0.568), (-0.175, 0.563), (-0.120, 0.563), (-0.070, 0.561),
        (-0.040, 0.557), (-0.026, 0.546), (-0.016, 0.529), (-0.008, 0.544), (0.000, 0.548), (0.008, 0.546),
        (0.016, 0.527), (0.026, 0.546), (0.040, 0.558), (0.080, 0.564), (0.140, 0.566), (0.180, 0.567),
        (0.198, 0.572), (0.205, 0.585), (0.200, 0.600), (0.195, 0.625), (0.182, 0.655), (0.162, 0.690),
        (0.140, 0.730), (0.118, 0.780), (0.100, 0.840), (0.088, 0.910),
    ]
)
# fmt: on


@dataclass
class _Anatomy:
    """Per-image anatomical jitter, so no two knees share an outline."""

    femur_shaft: float  # width factors relative to the templates
    femur_condyles: float
    femur_tilt: float  # lateral lean of the femoral shaft above the metaphysis
    notch_depth: float
    joint_gap: float
    tibia_plateau: float
    tibia_shaft: float
    fibula_dx: float
    patella: tuple[float, float, float, float]  # cx, cy, ax, ay
    leg_build: float

    @staticmethod
    def sample(rng: np.random.Generator) -> _Anatomy:
        j = lambda s: 1.0 + rng.uniform(-s, s)  # noqa: E731 - tiny local helper
        return _Anatomy(
            femur_shaft=j(0.08),
            femur_condyles=j(0.05),
            femur_tilt=-0.10 * j(0.4),
            notch_depth=rng.uniform(-0.012, 0.008),
            joint_gap=rng.uniform(0.018, 0.030),
            tibia_plateau=j(0.04),
            tibia_shaft=j(0.08),
            fibula_dx=rng.uniform(-0.008, 0.008),
            patella=(
                0.505 + rng.uniform(-0.015, 0.015),
                0.40 + rng.uniform(-0.02, 0.02),
                0.068 * j(0.08),
                0.082 * j(0.08),
            ),
            leg_build=rng.uniform(*NUISANCE["leg_build"]),
        )


def _femur_mask(cv: _Canvas, a: _Anatomy) -> np.ndarray:
    distal = _FEMUR_DISTAL.copy()
    distal[_FEMUR_NOTCH_ROWS, 1] += a.notch_depth
    t = _smoothstep(0.10, 0.38, distal[:, 1])
    distal[:, 0] *= a.femur_shaft + (a.femur_condyles - a.femur_shaft) * t
    hw = 0.082 * a.femur_shaft
    ys = np.linspace(cv.y0 - 0.05, 0.10, 12)[:-1]
    upper_left = np.stack([-hw + a.femur_tilt * (0.30 - ys), ys], axis=1)
    upper_right = np.stack([hw + a.femur_tilt * (0.30 - ys), ys], axis=1)[::-1]
    distal[:, 0] += a.femur_tilt * np.clip(0.30 - distal[:, 1], 0.0, None)
    outline = np.concatenate([upper_left, distal, upper_right])
    smooth = _chaikin(outline)
    smooth[:, 0] += 0.5
    img = cv.blank()
    cv.polygon(img, smooth)
    return img


def _tibia_mask(cv: _Canvas, a: _Anatomy) -> np.ndarray:
    right = _TIBIA_PROXIMAL.copy()
    y_end = cv.y0 + cv.height / cv.scale + 0.05
    right = np.concatenate([right, [(0.080, y_end)]])
    left = right[21:][::-1] * np.array([-1.0, 1.0])  # lateral side mirrors the medial shaft template
    outline = np.concatenate([right, left])
    t = _smoothstep(0.60, 0.85, outline[:, 1])
    outline[:, 0] *= a.tibia_plateau + (a.tibia_shaft - a.tibia_plateau) * t
    outline[:, 0] += 0.502
    outline[:, 1] += a.joint_gap - 0.024
    img = cv.blank()
    cv.polygon(img, _chaikin(outline))
    return img


def _fibula_mask(cv: _Canvas, a: _Anatomy) -> np.ndarray:
    y_end = cv.y0 + cv.height / cv.scale + 0.05
    # fmt: off
    outline = np.array(
        [
            (-0.016, 0.604), (-0.034, 0.618), (-0.043, 0.642), (-0.040, 0.668), (-0.026, 0.690), (-0.020, 0.720),
            (-0.018, 0.780), (-0.018, y_end), (0.018, y_end), (0.018, 0.780), (0.020, 0.720), (0.030, 0.692),
            (0.040, 0.668), (0.043, 0.643), (0.034, 0.620), (0.012, 0.608),
        ]
    )
    # fmt: on
    outline[:, 0] += 0.318 + a.fibula_dx + 0.03 * _smoothstep(0.65, 1.5, outline[:, 1])
    outline[:, 1] += a.joint_gap - 0.024
    img = cv.blank()
    cv.polygon(img, _chaikin(outline))
    return img


def _patella_mask(cv: _Canvas, a: _Anatomy) -> np.ndarray:
    img = cv.blank()
    cx, cy, ax, ay = a.patella
    cv.ellipse(img, (cx, cy), (ax, ay), angle=8)
    return img


def _physeal_scars(cv: _Canvas, a: _Anatomy, femur: np.ndarray, tibia: np.ndarray) -> np.ndarray:
    """Faint sclerotic lines where the growth plates closed, a hallmark of adult knee radiographs."""
    xs = np.linspace(-0.25, 0.25, 24)
    femur_line = np.stack([0.5 + xs, 0.415 - 0.02 * np.cos(np.pi * xs / 0.25) ** 2], axis=1)
    tibia_line = np.stack([0.502 + xs, 0.622 + a.joint_gap - 0.024 + 0.008 * np.cos(np.pi * xs / 0.25) ** 2], axis=1)
    lines = cv.blank()
    thickness = max(1, round(0.006 * cv.scale))
    cv2.polylines(lines, [cv.px(femur_line), cv.px(tibia_line)], False, 255, thickness, cv2.LINE_AA, _AA_SHIFT)
    inside = np.maximum(cv2.erode(femur, np.ones((3, 3), np.uint8)), cv2.erode(tibia, np.ones((3, 3), np.uint8)))
    return lines.astype(np.float32) * inside.astype(np.float32) / (255.0 * 255.0)


def _trabecular_network(
    rng: np.random.Generator, shape: tuple[int, int], px_per_unit: float, density: float
) -> np.ndarray:
    """Trabecular network in [0, 1]: the zero-crossings of oriented band-passed noise drawn as thin lines.

    The lines run mostly vertically (along the load lines). Lower density makes them thinner and
    drops more of them (gated by a second smooth noise field), so the texture gets sparser and
    fainter, as in osteoporotic cancellous bone.
    """
    s = px_per_unit / 256.0
    noise = rng.standard_normal(shape, dtype=np.float32)
    band = cv2.GaussianBlur(noise, (0, 0), sigmaX=1.3 * s, sigmaY=2.8 * s) - cv2.GaussianBlur(noise, (0, 0), 4.5 * s)
    band /= band.std() + 1e-6
    lines = np.exp(-((band / (0.40 * density)) ** 2))
    gate_noise = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), 2.2 * s)
    gate_noise /= gate_noise.std() + 1e-6
    keep = float(np.clip(0.15 + 0.75 * density, 0.05, 1.0))
    sub = np.sort(gate_noise[::4, ::4].ravel())
    threshold = sub[min(sub.size - 1, int((1.0 - keep) * sub.size))]
    gate = np.clip((gate_noise - threshold) / 0.6 + 0.5, 0.0, 1.0)
    return lines * gate


def _bone_layer(
    mask: np.ndarray, cortex_px: np.ndarray, trabecular: np.ndarray, trab_weight: np.ndarray, chord_px: float
) -> np.ndarray:
    """Projected bone brightness: a bright cortex of given thickness around a trabecular interior."""
    alpha = mask.astype(np.float32) / 255.0
    dist = cv2.distanceTransform((mask >= 128).astype(np.uint8), cv2.DIST_L2, 3)
    cortex = np.clip(cortex_px - dist + 0.5, 0.0, 1.0)
    chord = np.sqrt(np.clip(dist / chord_px, 0.0, 1.0))
    interior = 0.20 + 0.30 * chord + trab_weight * trabecular
    return alpha * (cortex + (1.0 - cortex) * interior)


def _render_knee_layers(
    rng: np.random.Generator, density: float, cv: _Canvas
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One right knee on its own canvas: soft-tissue layer, bone layer, bone mask and leg mask."""
    a = _Anatomy.sample(rng)
    yy, xx = cv.rows(), cv.cols()
    k = cv.scale

    # Soft tissue: a cylinder-like leg whose brightness follows its chord length, with a darker
    # subcutaneous fat rim.
    hw = (
        np.interp(
            yy, [-1.0, 0.15, 0.40, 0.55, 0.70, 0.85, 1.10, 2.0], [0.37, 0.33, 0.29, 0.28, 0.29, 0.30, 0.26, 0.21]
        ).astype(np.float32)
        * a.leg_build
    )
    center = 0.5 + 0.5 * a.femur_tilt * np.clip(0.30 - yy, 0.0, None)
    dx = np.abs(xx - center)
    edge = np.clip((hw - dx) * k + 0.5, 0.0, 1.0)
    chord = np.sqrt(np.clip(1.0 - (dx / hw) ** 2, 0.0, 1.0))
    muscle_hw = hw - 0.035 * a.leg_build
    muscle = np.sqrt(np.clip(1.0 - (dx / muscle_hw) ** 2, 0.0, 1.0))
    soft = edge * (0.50 + 0.20 * chord + 0.30 * muscle)

    # Bones. Density scales cortical thickness, trabecular fraction and trabecular contrast here;
    # the bone/soft-tissue contrast is scaled by density again when the layers are composed.
    trab = _trabecular_network(rng, (cv.height, cv.width), k, density)
    trab_amp = 0.40 * density

    t_epi, t_dia = 0.010 * k * density, 0.026 * k * density
    femur_shaft = _smoothstep(0.30, 0.12, yy)
    tibia_shaft = _smoothstep(0.70, 0.90, yy)
    fib_shaft = _smoothstep(0.68, 0.80, yy)

    femur = _femur_mask(cv, a)
    tibia = _tibia_mask(cv, a)
    fibula = _fibula_mask(cv, a)
    patella = _patella_mask(cv, a)
    bone = _bone_layer(
        femur, t_epi + (t_dia - t_epi) * femur_shaft, trab, trab_amp * (1.0 - 0.7 * femur_shaft), 0.09 * k
    )
    bone += _bone_layer(
        tibia, t_epi + (t_dia - t_epi) * tibia_shaft, trab, trab_amp * (1.0 - 0.7 * tibia_shaft), 0.08 * k
    )
    bone += 0.8 * _bone_layer(
        fibula, t_epi + (0.6 * t_dia - t_epi) * fib_shaft, trab, trab_amp * (1.0 - 0.7 * fib_shaft), 0.03 * k
    )
    bone += 0.35 * _bone_layer(patella, np.full_like(yy, t_epi), trab, np.full_like(yy, trab_amp), 0.05 * k)
    bone += 0.30 * density * _physeal_scars(cv, a, femur, tibia)
    bone_mask = np.maximum(np.maximum(femur, tibia), fibula)
    leg_mask = (edge * 255).astype(np.uint8)
    return soft, bone, bone_mask, leg_mask


def _marker(img: np.ndarray, letter: str, corner: int, size: int, value: float) -> np.ndarray:
    """Burn a lead laterality marker ("L"/"R") into a corner; returns the marker's footprint."""
    mark = np.zeros(img.shape, np.uint8)
    scale = 0.55 * size / 256.0
    thick = max(1, round(2 * size / 256.0))
    (tw, th), _ = cv2.getTextSize(letter, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = round(0.05 * size)
    x = pad if corner in (0, 2) else size - pad - tw
    y = pad + th if corner in (0, 1) else size - pad
    cv2.putText(mark, letter, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
    alpha = mark.astype(np.float32) / 255.0
    img[:] = img * (1.0 - alpha) + value * alpha
    box = np.zeros(img.shape, np.uint8)
    m = round(0.03 * size)
    cv2.rectangle(box, (x - m, y - th - m), (x + tw + m, y + m), 255, -1)
    return box > 0


def render_knee_with_masks(rng: np.random.Generator, density: float, size: int = 256) -> KneeRender:
    """Render one phantom radiograph plus the bone / soft-tissue / background masks behind it."""
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} px, got {size}")
    if not DENSITY_RANGE[0] <= density <= DENSITY_RANGE[1]:
        raise ValueError(f"density must lie in {DENSITY_RANGE}, got {density}")

    bilateral = rng.random() < BILATERAL_PROBABILITY
    right_first = rng.random() < 0.5  # single knee: is it the right knee
    knees: list[tuple[bool, float]]  # (is_right, x centre as fraction of the image width)
    if bilateral:
        # AP convention: the patient's right knee is on the viewer's left.
        knees, knee_px, y0, y1 = [(True, 0.26), (False, 0.74)], 0.50 * size, -0.85, 1.85
    else:
        knees, knee_px, y0, y1 = [(right_first, 0.5)], 0.80 * size, -0.45, 1.45

    soft = np.zeros((size, size), np.float32)
    bone = np.zeros((size, size), np.float32)
    bone_mask = np.zeros((size, size), np.uint8)
    leg_mask = np.zeros((size, size), np.uint8)
    # Pose is shared by both knees of a bilateral view (one patient, one exposure), with a little
    # independent jitter per knee.
    pose_scale = rng.uniform(*NUISANCE["scale"])
    pose_angle = rng.uniform(*NUISANCE["rotation_deg"])
    pose_shift = rng.uniform(*NUISANCE["shift"], size=2) * size
    for is_right, x_frac in knees:
        jitter = 1.0 if bilateral else 0.0
        scale = knee_px * pose_scale * (1.0 + jitter * rng.uniform(-0.03, 0.03))
        angle = float(np.clip(pose_angle + jitter * rng.uniform(-2.0, 2.0), *NUISANCE["rotation_deg"]))
        shift = pose_shift + jitter * rng.uniform(-0.01, 0.01, size=2) * size
        cv = _Canvas(scale=scale, y0=y0, height=int(round((y1 - y0) * scale)), width=int(round(scale)))
        layers = _render_knee_layers(rng, density, cv)
        if not is_right:  # a left knee is the mirror image of a right knee (fibula on the viewer's right)
            layers = tuple(np.ascontiguousarray(layer[:, ::-1]) for layer in layers)
        anchor = (0.5 * scale, (0.52 - y0) * scale)  # joint-line centre on the knee canvas
        target = (x_frac * size + shift[0], 0.5 * size + shift[1])
        m = cv2.getRotationMatrix2D(anchor, angle, 1.0)
        m[:, 2] += np.array(target) - np.array(anchor)
        warped = [cv2.warpAffine(layer, m, (size, size), flags=cv2.INTER_LINEAR) for layer in layers]
        soft += warped[0]
        bone += warped[1]
        bone_mask = np.maximum(bone_mask, warped[2])
        leg_mask = np.maximum(leg_mask, warped[3])

    # Compose: bone adds to soft tissue in proportion to density, so the bone/soft-tissue contrast
    # carries the density whatever the exposure; exposure and contrast act on both together.
    background = rng.uniform(*NUISANCE["background"])
    tissue_gain = rng.uniform(*NUISANCE["tissue_gain"])
    img = background + tissue_gain * (soft + BONE_CONTRAST * density * bone)
    yy = np.linspace(-0.5, 0.5, size, dtype=np.float32)[:, None]
    img *= 1.0 + rng.uniform(*NUISANCE["heel"]) * yy  # heel effect
    blur = rng.uniform(*NUISANCE["blur_px"]) * size / 256.0
    img = cv2.GaussianBlur(img, (0, 0), blur)

    is_right_marker = knees[0][0] if not bilateral else rng.random() < 0.5
    corner = int(rng.integers(4))
    if bilateral:
        corner = (0 if is_right_marker else 1) + 2 * int(rng.integers(2))
    marker_box = _marker(img, "R" if is_right_marker else "L", corner, size, rng.uniform(*NUISANCE["marker_level"]))

    img = np.clip(img, 0.0, 1.0) ** rng.uniform(*NUISANCE["gamma"])  # film / display curve
    # Film-like noise: signal-dependent quantum noise with a little spatial correlation, plus read noise.
    quantum = rng.uniform(*NUISANCE["quantum_noise"])
    grain = rng.standard_normal((size, size), dtype=np.float32)
    grain = cv2.GaussianBlur(grain, (0, 0), 0.6 * size / 256.0)
    grain /= grain.std() + 1e-6
    img = (
        img
        + quantum * np.sqrt(img) * grain
        + rng.uniform(*NUISANCE["read_noise"]) * rng.standard_normal((size, size), dtype=np.float32)
    )
    out = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)

    bone_bin = bone_mask >= 128
    kernel = np.ones((3, 3), np.uint8)
    near_bone = cv2.dilate(bone_bin.astype(np.uint8), kernel, iterations=max(1, size // 64)) > 0
    leg_bin = leg_mask >= 128
    inner_leg = cv2.erode(leg_bin.astype(np.uint8), kernel, iterations=max(1, size // 128)) > 0
    outer = cv2.dilate(leg_bin.astype(np.uint8), kernel, iterations=max(1, size // 128)) > 0
    return KneeRender(
        image=out,
        bone_mask=bone_bin & ~marker_box,
        soft_mask=inner_leg & ~near_bone & ~marker_box,
        background_mask=~outer & ~marker_box,
    )


def render_knee(rng: np.random.Generator, density: float, size: int = 256) -> np.ndarray:
    """Render one phantom AP knee radiograph (uint8, ``size`` x ``size``) for the given density."""
    return render_knee_with_masks(rng, density, size).image


def render_item(seed: int, class_index: int, index: int, size: int) -> tuple[np.ndarray, float]:
    """Density and image of one dataset item, from its own seed sequence."""
    rng = image_rng(seed, class_index, index)
    density = sample_density(rng, class_index)
    return render_knee(rng, density, size), density


# --------------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------------


def split_counts(per_class: int, split: Sequence[float]) -> tuple[int, int, int]:
    """Images per class in train / val / test; rounding leftovers go to test."""
    if len(split) != len(SPLITS):
        raise ValueError(f"split needs {len(SPLITS)} fractions (train val test), got {list(split)}")
    if any(not math.isfinite(f) or f < 0 for f in split):
        raise ValueError(f"split fractions must be finite and >= 0, got {list(split)}")
    if abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {list(split)} (sum {sum(split):.6g})")
    n_train = int(round(per_class * split[0]))
    n_val = min(int(round(per_class * split[1])), per_class - n_train)
    return n_train, n_val, per_class - n_train - n_val


def _validate(per_class: int, seed: int, size: int) -> None:
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")


def _plan(per_class: int, split: Sequence[float]) -> list[tuple[int, int, str]]:
    """(class_index, index, split) of every image, in manifest order."""
    counts = split_counts(per_class, split)
    names = [name for name, n in zip(SPLITS, counts, strict=True) for _ in range(n)]
    return [(c, i, names[i]) for c in range(len(CLASSES)) for i in range(per_class)]


def _render_job(job: tuple[int, int, int, int]) -> tuple[np.ndarray, float]:
    return render_item(*job)


def generate(
    out: str | Path,
    per_class: int,
    seed: int,
    size: int = 256,
    split: Sequence[float] = DEFAULT_SPLIT,
    workers: int = 1,
) -> list[dict]:
    """Write the ImageFolder tree and ``manifest.csv`` under ``out``; return the manifest rows.

    Only this generator's own PNGs (``<class>_<split>_NNNN.png``) are removed first, so ``out`` may
    be a folder holding other files, e.g. this package itself.
    """
    _validate(per_class, seed, size)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    plan = _plan(per_class, split)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    for split_name in SPLITS:
        for cls in CLASSES:
            folder = out / split_name / cls
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(f"{cls}_{split_name}_[0-9][0-9][0-9][0-9].png"):
                stale.unlink()

    jobs = [(seed, c, i, size) for c, i, _ in plan]
    if workers > 1:
        # "spawn" avoids forking a process whose OpenCV thread pool is already running (a known hang);
        # each image has its own seed sequence, so the output does not depend on the worker count.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            results = pool.imap(_render_job, jobs, chunksize=8)
            rows = [_write_one(out, item, res, seed) for item, res in zip(plan, results, strict=True)]
    else:
        rows = [_write_one(out, item, _render_job(job), seed) for item, job in zip(plan, jobs, strict=True)]
    write_manifest(out / "manifest.csv", rows)
    return rows


def _write_one(out: Path, item: tuple[int, int, str], result: tuple[np.ndarray, float], seed: int) -> dict:
    class_index, index, split_name = item
    image, density = result
    cls = CLASSES[class_index]
    rel = f"{split_name}/{cls}/{cls}_{split_name}_{index:04d}.png"
    Image.fromarray(image, mode="L").save(out / rel, format="PNG", optimize=False)
    return {"file": rel, "split": split_name, "label": cls, "density": f"{density:.4f}", "seed": seed}


def write_manifest(path: str | Path, rows: list[dict]) -> None:
    """CSV with one row per image: file (relative, forward slashes), split, label, density, seed."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def empirical_bayes_accuracy(rows: list[dict]) -> float:
    """Accuracy of the Bayes rule applied to the true densities of generated images."""
    if not rows:
        raise ValueError("no manifest rows to score")
    dens = np.array([float(r["density"]) for r in rows])
    labels = np.array([CLASSES.index(r["label"]) for r in rows])
    return float(np.mean(bayes_label(dens) == labels))


def contact_sheet(seed: int, size: int = 256, per_class: int = 4) -> np.ndarray:
    """Grid of phantoms, one row per class (first ``per_class`` images of each), labelled."""
    _validate(per_class, seed, size)
    label_h = max(14, size // 12)
    rows = []
    for c, cls in enumerate(CLASSES):
        tiles = []
        for i in range(per_class):
            img, density = render_item(seed, c, i, size)
            tile = np.zeros((size + label_h, size), np.uint8)
            tile[label_h:] = img
            cv2.putText(
                tile,
                f"{cls} d={density:.2f}",
                (3, label_h - 4),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.35 * label_h / 14,
                255,
                1,
                cv2.LINE_AA,
            )
            tiles.append(np.pad(tile, 2, constant_values=128))
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def write_preview(path: str | Path, seed: int, size: int = 256, per_class: int = 4) -> None:
    """Save a contact sheet PNG for eyeballing the phantoms."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet(seed, size, per_class), mode="L").save(path, format="PNG")


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


class _UsageError(Exception):
    """A command-line argument argparse refused; shown as one ``error: …`` line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the whole usage and exit; one line is enough here
        raise _UsageError(f"{message} (see --help)")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(description="Synthetic knee radiograph phantoms", add_help=add_help)
    parser.add_argument("--out", default=None, type=str, help="output folder (ImageFolder tree + manifest.csv)")
    parser.add_argument("--per-class", default=120, type=int, help="images per class, all splits together")
    parser.add_argument("--seed", default=0, type=int, help="base seed; same seed gives byte-identical output")
    parser.add_argument("--size", default=256, type=int, help="image side in pixels")
    parser.add_argument(
        "--split",
        default=list(DEFAULT_SPLIT),
        type=float,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions per split, summing to 1",
    )
    parser.add_argument("--workers", default=1, type=int, help="render processes (output does not depend on it)")
    parser.add_argument("--preview", default=None, type=str, help="also write a contact-sheet PNG here")
    parser.add_argument("--preview-per-class", default=4, type=int, help="images per class on the contact sheet")
    return parser


def run(args: argparse.Namespace) -> list[dict]:
    """Write the dataset and/or the contact sheet the arguments ask for; return the manifest rows."""
    if args.out is None and args.preview is None:
        raise ValueError("nothing to do: pass --out DIR to write a dataset and/or --preview PATH for a contact sheet")
    print(f"Bayes-optimal accuracy (equal priors): {bayes_optimal_accuracy():.4f}")
    rows: list[dict] = []
    if args.out is not None:
        start = time.perf_counter()
        rows = generate(args.out, args.per_class, args.seed, args.size, args.split, args.workers)
        elapsed = time.perf_counter() - start
        print(f"wrote {len(rows)} images to {args.out} in {elapsed:.1f}s ({1000 * elapsed / len(rows):.1f} ms/image)")
        print(f"Bayes rule on the generated densities: {empirical_bayes_accuracy(rows):.4f}")
    if args.preview is not None:
        write_preview(args.preview, args.seed, args.size, args.preview_per_class)
        print(f"contact sheet: {args.preview}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: 0 on success; bad arguments or an unwritable output give one ``error: …`` line and 2."""
    try:
        run(get_args_parser().parse_args(argv))
    except (_UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" '{exc.filename}'" if exc.filename else ""
        print(f"error: cannot write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
