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


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_listing_order_nesting_hidden_and_links_inside_the_root(tmp_path):
    root = tmp_path / "data"
    for rel in (
        "normal/b.png",
        "normal/a.PNG",
        "normal/sub/z/c.jpg",
        "normal/sub/d.png",
        "normal/notes.txt",
        "normal/.hidden.png",
        "normal/.cache/e.png",
        "other/f.png",
    ):
        _touch(root / rel)
    (root / "normal" / "link.png").symlink_to(root / "other" / "f.png")  # a file link that stays inside: indexed
    (root / "normal" / "linked_dir").symlink_to(root / "other")  # folder links below a class folder: not followed
    idx = index_dataset(root)
    rels = [it.rel for it in idx.select("all") if it.label == "normal"]
    assert rels == ["normal/a.PNG", "normal/b.png", "normal/link.png", "normal/sub/d.png", "normal/sub/z/c.jpg"]
    link = next(it for it in idx.items if it.rel == "normal/link.png")
    assert link.error == "" and link.path == root / "normal" / "link.png" and link.path.is_symlink()
    assert all(it.path == root / it.rel and it.root == root.resolve() for it in idx.items)


def test_split_or_class_folders_linking_out_of_the_root_are_not_indexed(tmp_path):
    outside = tmp_path / "outside"
    _touch(outside / "secret.png")
    _touch(outside / "normal" / "secret.png")
    root = tmp_path / "data"
    _touch(root / "train" / "normal" / "ok.png")
    (root / "train" / "osteopenia").symlink_to(outside)  # a class folder that leaves the root
    (root / "test").symlink_to(outside)  # a split folder that leaves the root
    _touch(root / "val" / "normal" / "v.png")
    (root / "val" / "osteopenia").symlink_to(root / "train" / "normal")  # a class folder link that stays inside
    idx = index_dataset(root)
    assert sorted(it.rel for it in idx.items) == ["train/normal/ok.png", "val/normal/v.png", "val/osteopenia/ok.png"]
    assert idx.classes == ("normal", "osteopenia")
