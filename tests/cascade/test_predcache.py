"""The prediction cache: computed once, read back without a model, invalidated by any change of models or files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cascade.dataset import index_dataset
from cascade.predcache import (
    ClassMismatchError,
    cache_key,
    cache_path,
    cached_predictions,
    load_predictions,
)
from engines.select import open_cascade


@pytest.fixture(scope="module")
def tiny_cascade(tiny_config):
    return open_cascade(tiny_config, "torch")


@pytest.fixture()
def dataset(tmp_path, tiny_dataset):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    return root


def _calls(cascade) -> int:
    return cascade.backend1.calls + cascade.backend2.calls


def test_computed_once_then_read_without_a_model(tiny_cascade, dataset, tmp_path):
    index = index_dataset(dataset)
    cache = tmp_path / "cache"
    assert not cache.exists()
    seen = []
    first = cached_predictions(tiny_cascade, index, "val", cache, batch_size=5, progress=lambda d, t: seen.append(d))
    assert seen[-1] == 12 and seen == sorted(seen)
    assert len(first) == 12 and first.p1.shape == first.p2.shape == (12, 3)
    assert np.isfinite(first.p2).all()  # stage 2 ran on every image
    np.testing.assert_allclose(first.p1.sum(axis=1), 1.0, atol=1e-5)
    assert [index.resolve(r).parent.name for r in first.rels] == [first.classes[i] for i in first.labels]
    calls = _calls(tiny_cascade)
    again = cached_predictions(tiny_cascade, index, "val", cache)
    assert _calls(tiny_cascade) == calls
    np.testing.assert_array_equal(again.p1, first.p1)
    np.testing.assert_array_equal(again.p2, first.p2)
    assert again.rels == first.rels and again.key == first.key
    assert load_predictions(cache_path(first.key, cache)).key == first.key
    assert [p.name for p in cache.iterdir()] == [f"{first.key}.npz"]  # no temporary file left behind


def test_key_changes_with_the_file_list_and_the_split(tiny_cascade, dataset):
    before = cache_key(tiny_cascade, index_dataset(dataset), "test")
    assert before != cache_key(tiny_cascade, index_dataset(dataset), "val")
    shutil.copy(dataset / "test" / "normal" / "normal_0.png", dataset / "test" / "normal" / "extra.png")
    assert cache_key(tiny_cascade, index_dataset(dataset), "test") != before


def test_key_changes_with_the_models(tiny_config, tiny_cascade, dataset, tmp_path, tiny_models):
    from tests.conftest import make_model_dir

    other = make_model_dir(tmp_path / "s1", "resnet18", seed=99)
    cfg = tmp_path / "cascade.toml"
    cfg.write_text(f'[stage1]\nmodel_dir = "{other}"\n[stage2]\nmodel_dir = "{tiny_models[1]}"\n[gate]\n')
    index = index_dataset(dataset)
    assert cache_key(open_cascade(cfg, "torch"), index, "val") != cache_key(tiny_cascade, index, "val")


def test_corrupt_entry_is_recomputed(tiny_cascade, dataset, tmp_path):
    index = index_dataset(dataset)
    path = cache_path(cache_key(tiny_cascade, index, "train"), tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a zip")
    assert load_predictions(path) is None
    calls = _calls(tiny_cascade)
    preds = cached_predictions(tiny_cascade, index, "train", tmp_path)
    assert _calls(tiny_cascade) > calls and len(preds) == 12
    assert load_predictions(path) is not None


def test_unreadable_images_are_listed_not_fatal(tiny_cascade, dataset, tmp_path):
    (dataset / "val" / "osteopenia" / "broken.png").write_bytes(b"\x89PNG garbage")
    preds = cached_predictions(tiny_cascade, index_dataset(dataset), "val", tmp_path)
    assert len(preds) == 12
    assert [rel for rel, _ in preds.failed] == ["val/osteopenia/broken.png"]
    assert "corrupt" in preds.failed[0][1] or "not a PNG" in preds.failed[0][1]
    reread = cached_predictions(tiny_cascade, index_dataset(dataset), "val", tmp_path)
    assert reread.failed == preds.failed


def test_foreign_class_folders_are_refused(tiny_cascade, dataset, tmp_path):
    shutil.move(dataset / "val" / "osteopenia", dataset / "val" / "fracture")
    with pytest.raises(ClassMismatchError, match="fracture"):
        cached_predictions(tiny_cascade, index_dataset(dataset), "val", tmp_path)
