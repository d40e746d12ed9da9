"""Metadata tables joined to datasets by relative path, and bad tables turned into warnings with the rest kept."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cascade.dataset import index_dataset
from cascade.metadata import find_manifest, load_metadata, metadata_lines, metadata_summary
from tests.conftest import ROOT


@pytest.fixture()
def data(tmp_path):
    """train/val/test × normal/osteoporosis, two images each, names unique across splits."""
    root = tmp_path / "knees"
    for split in ("train", "val", "test"):
        for label in ("normal", "osteoporosis"):
            d = root / split / label
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(d / f"{label}_{split}_{i}.png")
    return root


def write(path, text: str):
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


def rels(index, split=None):
    return [it.rel for it in index.select(split)]


def test_the_committed_phantom_manifest_joins_every_image():
    index = index_dataset(ROOT / "sample_images")
    meta = load_metadata(index)
    assert meta.source == ROOT / "sample_images" / "manifest.csv"
    assert meta.warnings == () and len(meta) == len(index.items) == 360
    assert "density" in meta.numeric and "label" in meta.categorical
    assert meta.table["density"].dtype == float
    row = meta.row("test/normal/normal_test_0096.png")
    assert row["label"] == "normal" and 0.0 < row["density"] < 2.0


def test_a_split_folder_opened_alone_uses_its_parents_manifest():
    index = index_dataset(ROOT / "sample_images" / "test")
    meta = load_metadata(index)
    assert find_manifest(index.root) == ROOT / "sample_images" / "manifest.csv"
    assert len(meta) == len(index.items) and meta.warnings == ()
    assert meta.notes and "outside 'test/'" in meta.notes[0]  # the other splits' rows: a note, not a problem
    assert (
        meta.row("normal/normal_test_0096.png")["density"]
        == load_metadata(index_dataset(ROOT / "sample_images")).row("test/normal/normal_test_0096.png")["density"]
    )


def test_root_relative_split_relative_and_bare_names_all_join(data):
    index = index_dataset(data)
    a, b, c = rels(index)[:3]
    split_relative = b.split("/", 1)[1]
    bare = c.rsplit("/", 1)[1]
    csv = write(
        data / "meta.csv",
        f"""
path,age,sex
{a},61,F
{split_relative},70,M
./{bare},55,F
""",
    )
    meta = load_metadata(index, csv)
    assert meta.row(a) == {"age": 61.0, "sex": "F"}
    assert meta.row(b)["age"] == 70.0 and meta.row(c)["sex"] == "F"
    assert meta.numeric == ("age",) and meta.categorical == ("sex",)
    assert (
        len(meta.warnings) == 1 and f"{len(index.items) - 3} of {len(index.items)} images have no" in meta.warnings[0]
    )


def test_no_manifest_is_no_metadata_and_no_warning(data):
    meta = load_metadata(index_dataset(data))
    assert len(meta) == 0 and meta.warnings == () and meta.source is None


def test_bad_rows_become_warnings_and_good_rows_are_kept(data):
    index = index_dataset(data)
    first, second = rels(index)[:2]
    write(
        data / "manifest.csv",
        f"""
file,density,label
{first},0.9,normal
{first},0.1,normal
,0.5,normal
train/normal/not_there.png,0.7,normal
{second},abc,osteoporosis
""",
    )
    meta = load_metadata(index)
    text = "\n".join(meta.warnings)
    assert "1 row(s) have no path" in text
    assert "1 row(s) name no image" in text and "not_there.png" in text
    assert "more than one row" in text and first in text
    assert "column 'density': 1 value(s) are not numbers ('abc')" in text
    assert "differs from their class folder" in text  # second is a normal knee labelled osteoporosis
    assert meta.row(first)["density"] == 0.9  # the first of the duplicates
    assert "density" not in meta.row(second) and meta.row(second)["label"] == "osteoporosis"
    assert meta.numeric == ("density",)


def test_mostly_text_columns_are_categorical(data):
    index = index_dataset(data)
    lines = "\n".join(f"{r},{'x' if i % 2 else i}" for i, r in enumerate(rels(index)))
    meta = load_metadata(index, write(data / "m.csv", f"rel,site\n{lines}"))
    assert meta.categorical == ("site",) and meta.warnings == ()


@pytest.mark.parametrize(
    "content, message",
    [
        ("name,density\na.png,1\n", "no path column"),
        (b"\xff\xfe\x00\x01garbage\x00", "cannot be read as CSV"),
        ('path,x\n"unterminated,1\n', "cannot be read as CSV"),
        ("", "cannot be read as CSV"),
        ("path,a\nx,1,2,3\n", "cannot be read as CSV"),
    ],
)
def test_unusable_tables_give_one_message(data, content, message):
    csv = data / "bad.csv"
    if isinstance(content, bytes):
        csv.write_bytes(content)
    else:
        csv.write_text(content)
    meta = load_metadata(index_dataset(data), csv)
    assert len(meta) == 0 and len(meta.warnings) == 1 and message in meta.warnings[0], meta.warnings


def test_a_named_table_that_does_not_exist_is_a_warning(data):
    meta = load_metadata(index_dataset(data), data / "nope.csv")
    assert len(meta) == 0 and "does not exist" in meta.warnings[0]


def test_summary_gives_class_ranges_and_accuracy_along_a_column(data):
    index = index_dataset(data)
    rows = "\n".join(f"{r},{i}" for i, r in enumerate(rels(index)))
    meta = load_metadata(index, write(data / "m.csv", f"rel,age\n{rows}"))
    chosen = rels(index, "test")  # ages 0..3: normal 0, 1; osteoporosis 2, 3 (sorted paths)
    labels = np.array([0, 0, 1, 1])
    correct = np.array([True, False, True, True])
    s = metadata_summary(meta, chosen, labels, correct, ("normal", "osteoporosis"), n_bins=2)
    ages = meta.table["age"].reindex(chosen).to_numpy()
    assert s["images_with_a_row"] == 4 and s["warnings"] == []
    assert s["numeric"]["age"]["by_true_class"]["normal"]["mean"] == pytest.approx(ages[:2].mean())
    assert [b["accuracy"] for b in s["numeric"]["age"]["accuracy_by_bin"]] == [0.5, 1.0]
    assert [b["n"] for b in s["numeric"]["age"]["accuracy_by_bin"]] == [2, 2]
    assert "age: by true class normal" in metadata_lines(s)
