import os
import stat

import pytest

from cascade.fileio import atomic_path, write_atomic


def test_write_replaces_whole_file_with_usual_permissions(tmp_path):
    target = tmp_path / "a.toml"
    write_atomic(target, "old")
    write_atomic(target, b"new")
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.toml"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("good")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("export failed")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_fifo_or_a_link_to_a_device_is_never_replaced_by_a_file(tmp_path):
    # os.replace onto `--out /dev/full` turned the device node into a regular file (as root: for the whole machine)
    from cascade.errors import CascadeError

    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)
    link = tmp_path / "link.csv"
    link.symlink_to("/dev/null")
    for target in (fifo, link):
        with pytest.raises(CascadeError, match="not a regular file"):
            write_atomic(target, "rows")
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "out.csv"]


def test_check_output_path_refuses_before_work_and_creates_the_folder(tmp_path):
    from cascade.errors import CascadeError
    from cascade.fileio import check_output_path

    with pytest.raises(CascadeError, match="is a folder; name the CSV file"):
        check_output_path(tmp_path, "the CSV file")
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(CascadeError, match="not a regular file"):
        check_output_path(tmp_path / "fifo.json")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CascadeError, match="cannot write in"):
        check_output_path(blocker / "sub" / "r.json")
    assert check_output_path(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.json", "file", "new"]
    assert list((tmp_path / "new").iterdir()) == []  # the probe is gone
