import os

import pytest

from cascade.dataset import index_dataset, safe_join
from cascade.errors import ConfigError


def test_index_with_splits(tiny_dataset):
    idx = index_dataset(tiny_dataset)
    assert idx.classes == ("normal", "osteopenia", "osteoporosis")
    assert idx.splits == ("train", "val", "test")
    assert idx.counts()["val"] == {"normal": 4, "osteopenia": 4, "osteoporosis": 4}
    assert len(idx.select("test")) == 12 and len(idx.select()) == 36
    assert idx.select("test")[0].rel.startswith("test/")


def test_index_without_splits_and_fingerprint_changes(tmp_path, tiny_dataset):
    idx = index_dataset(tiny_dataset / "test")
    assert idx.splits == ("all",) and len(idx.items) == 12
    before = idx.fingerprint()
    (tiny_dataset / "test" / "normal" / "normal_0.png").touch()
    os.utime(tiny_dataset / "test" / "normal" / "normal_0.png", ns=(1, 1))
    assert index_dataset(tiny_dataset / "test").fingerprint() != before


def test_paths_outside_the_root_are_refused(tiny_dataset, tmp_path):
    idx = index_dataset(tiny_dataset)
    assert idx.resolve("test/normal/normal_0.png").is_file()
    for bad in ("../outside.png", "/etc/passwd", "test/../../x"):
        with pytest.raises(ConfigError, match="outside"):
            idx.resolve(bad)
    link = tiny_dataset / "test" / "normal" / "link.png"
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"x")
    link.symlink_to(secret)
    try:
        assert all(it.path.name != "link.png" for it in index_dataset(tiny_dataset).items)
        with pytest.raises(ConfigError):
            safe_join(tiny_dataset, "test/normal/link.png")
    finally:
        link.unlink()


def test_missing_or_empty(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        index_dataset(tmp_path / "nope")
    (tmp_path / "empty" / "normal").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no images"):
        index_dataset(tmp_path / "empty")
