"""Tests for the synthetic knee phantom generator: determinism, layout, the density model and its learnability."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sample_images import generate as gen

SEED = 123
PER_CLASS = 5
SIZE = 96


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("phantoms")
    return out, gen.generate(out, per_class=PER_CLASS, seed=SEED, size=SIZE)


# --- determinism -------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(dataset, tmp_path):
    out, _ = dataset
    gen.generate(tmp_path, per_class=PER_CLASS, seed=SEED, size=SIZE)
    assert _digests(tmp_path) == _digests(out)


def test_different_seed_gives_different_images(dataset, tmp_path):
    out, _ = dataset
    gen.generate(tmp_path, per_class=PER_CLASS, seed=SEED + 1, size=SIZE)
    a, b = _digests(out), _digests(tmp_path)
    pngs = [k for k in a if k.endswith(".png")]
    assert set(pngs) == {k for k in b if k.endswith(".png")}
    assert all(a[k] != b[k] for k in pngs)


def test_worker_count_does_not_change_output(tmp_path):
    gen.generate(tmp_path / "one", per_class=2, seed=7, size=64, workers=1)
    gen.generate(tmp_path / "two", per_class=2, seed=7, size=64, workers=2)
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")


def test_render_knee_is_a_pure_function_of_the_rng():
    a = gen.render_knee(gen.image_rng(1, 0, 0), 0.9, 128)
    b = gen.render_knee(gen.image_rng(1, 0, 0), 0.9, 128)
    c = gen.render_knee(gen.image_rng(1, 0, 1), 0.9, 128)
    assert a.dtype == np.uint8 and a.shape == (128, 128)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


# --- layout and manifest -----------------------------------------------------------------------------------------


def test_layout_and_manifest(dataset):
    out, rows = dataset
    n_train, n_val, n_test = gen.split_counts(PER_CLASS, gen.DEFAULT_SPLIT)
    assert (n_train, n_val, n_test) == (3, 1, 1)
    with open(out / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == gen.MANIFEST_COLUMNS
        manifest = list(reader)
    assert len(manifest) == len(rows) == PER_CLASS * len(gen.CLASSES)
    assert [r["file"] for r in manifest] == [r["file"] for r in rows]
    for row in manifest:
        split, label, name = row["file"].split("/")
        assert split == row["split"] and label == row["label"]
        assert name.startswith(f"{label}_{split}_") and name.endswith(".png")
        assert row["seed"] == str(SEED)
        assert len(row["density"].split(".")[1]) == 4
        img = Image.open(out / row["file"])
        assert img.mode == "L" and img.size == (SIZE, SIZE)
    for split, n in zip(gen.SPLITS, (n_train, n_val, n_test), strict=True):
        for label in gen.CLASSES:
            assert len(list((out / split / label).glob("*.png"))) == n
            assert sum(r["split"] == split and r["label"] == label for r in manifest) == n


def test_manifest_density_is_the_rendered_density(dataset):
    _, rows = dataset
    row = next(r for r in rows if r["label"] == "osteopenia")
    index = int(row["file"].rsplit("_", 1)[1].removesuffix(".png"))
    rng = gen.image_rng(SEED, gen.CLASSES.index("osteopenia"), index)
    assert f"{gen.sample_density(rng, 1):.4f}" == row["density"]


def test_rerun_into_a_package_folder_keeps_other_files(tmp_path):
    (tmp_path / "__init__.py").write_text('"""pkg"""\n')
    (tmp_path / "generate.py").write_text("# code\n")
    (tmp_path / "train" / "normal").mkdir(parents=True)
    (tmp_path / "train" / "normal" / "keep_me.png").write_bytes(b"not ours")
    gen.generate(tmp_path, per_class=6, seed=0, size=64)
    rows = gen.generate(tmp_path, per_class=3, seed=0, size=64)
    assert (tmp_path / "__init__.py").read_text() == '"""pkg"""\n'
    assert (tmp_path / "generate.py").read_text() == "# code\n"
    assert (tmp_path / "train" / "normal" / "keep_me.png").exists()
    ours = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*_[0-9][0-9][0-9][0-9].png")}
    assert ours == {r["file"] for r in rows}  # stale images from the larger run are gone


# --- density model -----------------------------------------------------------------------------------------------


def test_class_density_ordering():
    means = [
        np.mean([gen.sample_density(gen.image_rng(0, c, i), c) for i in range(300)]) for c in range(len(gen.CLASSES))
    ]
    assert means[0] > means[1] > means[2]
    for mean, cls in zip(means, gen.CLASSES, strict=True):
        assert mean == pytest.approx(gen.DENSITY_DISTRIBUTIONS[cls][0], abs=0.02)


def test_bayes_accuracy_matches_closed_form_and_monte_carlo():
    acc = gen.bayes_optimal_accuracy()
    assert 0.80 < acc < 0.90
    # Equal-variance normals 0.25 apart: each of the 4 one-sided boundary errors is Phi(-1.25).
    phi = 0.5 * (1.0 + math.erf(-1.25 / math.sqrt(2.0)))
    assert acc == pytest.approx(1.0 - 4.0 * phi / 3.0, abs=1e-3)
    rng = np.random.default_rng(0)
    n = 100_000
    labels = np.repeat(np.arange(len(gen.CLASSES)), n)
    dens = np.concatenate([rng.normal(*gen.DENSITY_DISTRIBUTIONS[c], n) for c in gen.CLASSES])
    assert np.mean(gen.bayes_label(dens) == labels) == pytest.approx(acc, abs=0.02)


def test_bayes_label():
    assert gen.bayes_label(1.0) == 0 and gen.bayes_label(0.75) == 1 and gen.bayes_label(0.5) == 2
    assert gen.bayes_label(np.array([0.9, 0.85, 0.6])).tolist() == [0, 1, 2]


def test_hand_feature_tracks_density_at_128px():
    """(median bone - median soft tissue) / image std, measured at 128 px, must follow density closely.

    This is the learnability guard: if nuisance (exposure, gamma, noise, pose) swamped the density
    signal, this crude feature would stop correlating and CNNs could not approach the Bayes accuracy.
    """
    feats, dens = [], []
    for c in range(len(gen.CLASSES)):
        for i in range(20):
            rng = gen.image_rng(99, c, i)
            density = gen.sample_density(rng, c)
            r = gen.render_knee_with_masks(rng, density, 256)
            img = cv2.resize(r.image, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float64)
            bone, soft = (
                cv2.resize(m.astype(np.uint8), (128, 128), interpolation=cv2.INTER_NEAREST) > 0
                for m in (r.bone_mask, r.soft_mask)
            )
            feats.append((np.median(img[bone]) - np.median(img[soft])) / img.std())
            dens.append(density)
    r = np.corrcoef(feats, dens)[0, 1]
    assert r > 0.95, f"hand feature vs density Pearson r = {r:.3f}"


def test_masks_are_sensible():
    r = gen.render_knee_with_masks(gen.image_rng(5, 0, 0), 1.0, 128)
    for mask in (r.bone_mask, r.soft_mask, r.background_mask):
        assert mask.shape == (128, 128) and mask.dtype == bool and mask.sum() > 100
    assert not (r.bone_mask & r.soft_mask).any() and not (r.soft_mask & r.background_mask).any()
    assert np.median(r.image[r.bone_mask]) > np.median(r.image[r.soft_mask]) > np.median(r.image[r.background_mask])


# --- preview and CLI ---------------------------------------------------------------------------------------------


def test_preview_contact_sheet(tmp_path):
    path = tmp_path / "sheet" / "preview.png"
    gen.write_preview(path, seed=0, size=64, per_class=2)
    img = np.asarray(Image.open(path))
    assert img.shape[0] > 3 * 64 and img.shape[1] >= 2 * 64


def test_cli_main(tmp_path, capsys):
    args = gen.get_args_parser().parse_args(
        ["--out", str(tmp_path), "--per-class", "2", "--seed", "1", "--size", "64", "--split", "0.5", "0.5", "0"]
    )
    rows = gen.run(args)
    assert len(rows) == 6 and {r["split"] for r in rows} == {"train", "val"}
    out = capsys.readouterr().out
    assert "Bayes-optimal accuracy" in out and "Bayes rule on the generated densities" in out


@pytest.mark.parametrize(
    "kwargs",
    [
        {"per_class": 0},
        {"per_class": 2.5},
        {"seed": -1},
        {"size": 32},
        {"split": (0.5, 0.5)},
        {"split": (0.6, 0.3, 0.3)},
        {"split": (1.2, -0.1, -0.1)},
        {"workers": 0},
    ],
)
def test_bad_generate_arguments_raise_value_error(tmp_path, kwargs):
    params = {"out": tmp_path, "per_class": 2, "seed": 0, "size": 64} | kwargs
    with pytest.raises(ValueError):
        gen.generate(**params)


def test_other_bad_arguments_raise_value_error(tmp_path):
    rng = gen.image_rng(0, 0, 0)
    with pytest.raises(ValueError):
        gen.render_knee(rng, 0.9, 16)
    with pytest.raises(ValueError):
        gen.render_knee(rng, -0.5, 128)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError):
        gen.generate(tmp_path / "file", 2, 0, 64)
    with pytest.raises(ValueError):
        gen.run(gen.get_args_parser().parse_args([]))
    with pytest.raises(ValueError):
        gen.bayes_optimal_accuracy(step=0)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--per-class", "abc"], "invalid int value"),
        (["--nonsense"], "unrecognized arguments"),
        ([], "nothing to do"),
        (["--per-class", "0", "--out", "{tmp}/o"], "per_class must be a positive integer"),
        (["--out", "{tmp}/file"], "exists and is not a directory"),
        (["--out", "{tmp}/file/below", "--per-class", "1"], "cannot write"),
        (["--preview", "{tmp}/file/sheet.png", "--size", "64"], "cannot write"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, match):
    (tmp_path / "file").write_text("x")
    code = gen.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0]
    assert "Traceback" not in captured.err


def test_cli_run_as_a_module_exits_2_without_traceback(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "sample_images.generate", "--out", str(tmp_path / "x"), "--size", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: size must be") and "Traceback" not in proc.stderr
