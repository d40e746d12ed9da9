"""Hostile and unlucky inputs (issue 8): each kind is built here and its clear outcome asserted.

Covered kinds (add a row and a case when you add a guard; README "Reliability" names the same list):

=============================  ==============================================  =====================================
kind                           built by                                        outcome
=============================  ==============================================  =====================================
dicom-deflate-bomb             2 MB deflated DICOM inflating to 2 GB           refused; a process grows < 200 MiB
dicom-header-bomb              Rows×Columns far above the pixel limit          refused before decoding
dicom-frames-bomb              20 RLE frames of 2048² (4 Mpx each)             refused: frames × pixels counted
dicom-samples-bomb             RGB, Rows×Columns×3 above the limit             refused: samples counted
dicom-rle-segment-bomb         RLE segment decoding to 128 MB for 64×64        refused before decoding
dicom-multiframe               3-frame native and RLE files                    the first frame, exactly
dicom-deflated                 a normal deflated DICOM                         read
dicom-window-width-0           WindowWidth 0                                   read with the full range (no window)
dicom-unknown-voi-function     VOILUTFunction "FANCY"                          read with the full range
dicom-bad-integer              NumberOfFrames "abc"                            refused with a reason
tiff-float / I;16 / LAB / HSV  Pillow images of these modes                    read as gray
tiff-float-nan                 float TIFF holding NaN                          refused: non-finite
fifo / socket / device         os.mkfifo, a bound AF_UNIX socket, /dev/zero    refused without opening, never hangs
symlink-loop / broken-symlink  symlinks in a dataset                           a row with an error
huge-file                      a sparse file above MAX_FILE_BYTES              refused before reading
symlink-swap                   an indexed file replaced by a link out          refused at read time
dataset-special-files          FIFO, socket, loop, broken link in a dataset    error rows; predictions go on
cli-inputs                     the same named on a command line                listed; special_file_reason says why
predict / evaluate             a folder with a FIFO and a socket, /dev/zero    error rows, exit 1, no hang
checkpoint-fields              resolution 8/4096/"224"/224.0, num_classes 2.5  one-line error naming file and fix
labels-txt                     latin-1, duplicates, BOM + CRLF                 error / error / accepted
model-file-fifo                FIFO as labels.txt, checkpoint or config        refused without opening
cache-entry                    NaN, rows not summing to 1, wrong shape,        discarded, recomputed with a notice
                               labels out of range, truncated zip
config-save                    CRLF + BOM + mode 0640, symlink, read-only,     kept / written at target / refused /
                               edited into invalid TOML since loading          StaleConfigError; file untouched
generate-cli                   bad arguments, unwritable outputs               tests/sample_images: one error line, 2
output-path                    --out a folder, FIFO, /dev/full, a link to a    one error line, exit 2, before any
                               device, a file where its folder should be       model runs; the node is never replaced
foreign-onnx-saturated         jetson ONNX of the checkpoint with logits ×1.5  refused (log p differs); tests/engines
onnx-width-auto                jetson ONNX of 2 classes, 3 labels, auto        refused, no PyTorch fallback
config-values                  threshold true / "0.5" / nan, model_dir = 3     one-line ConfigError (tests/cascade)
calibrate-unreadable           FIFO and truncated PNG in the fitted split      named, exit 1, fit on the rest
prediction-table               truncated Parquet, a FIFO as the table          a message on Gate tuning (AppTest)
=============================  ==============================================  =====================================
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cascade import images
from cascade.checkpoint import load_checkpoint, read_labels, stage_spec_from
from cascade.config import StaleConfigError, load_config, save_gate
from cascade.dataset import index_dataset, iter_image_files, read_item
from cascade.errors import CheckpointError, ConfigError, ImageReadError
from cascade.images import read_image, read_image_bytes, special_file_reason
from cascade.predcache import Predictions, inspect_entry, load_predictions, save_predictions

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------------------------


def _dataset(rows: int, cols: int, bits: int = 16, samples: int = 1, ts: str | None = None, **tags):
    """A DX data set without pixel data; ``tags`` set any further attribute (NumberOfFrames, WindowWidth, ...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def _save(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom(arr: np.ndarray, **tags) -> bytes:
    ds = _dataset(*arr.shape[-2:], **tags)
    ds.PixelData = arr.astype(np.uint16).tobytes()
    return _save(ds)


def deflate_bomb(inflated_mib: int = 2000) -> bytes:
    """A 64×64 deflated DICOM whose data set inflates to ``inflated_mib`` MiB of zeros (about 1 KiB per MiB)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _dataset(64, 64, ts=DeflatedExplicitVRLittleEndian)
    meta, body = DicomBytesIO(), DicomBytesIO()
    for buf in (meta, body):
        buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    write_dataset(body, ds)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, inflated_mib << 20)

    def deflated(data: bytes) -> bytes:  # full flush: byte-aligned, non-final blocks that can be concatenated
        c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)

    stream = deflated(body.getvalue() + pixel_header) + deflated(bytes(1 << 20)) * inflated_mib
    stream += zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()  # the final, empty block
    return b"\0" * 128 + b"DICM" + meta.getvalue() + stream


def _rle_zero_segment(n: int) -> bytes:
    """An RLE segment of ``n`` zero bytes (runs of 128: header 0x81, value 0)."""
    runs, rest = divmod(n, 128)
    return b"\x81\x00" * runs + (bytes([257 - rest, 0]) if rest > 1 else b"\x00\x00" if rest else b"")


def _rle_frame(segments: list[bytes]) -> bytes:
    offsets, pos = [], 64
    for seg in segments:
        offsets.append(pos)
        pos += len(seg) + len(seg) % 2
    header = struct.pack("<16I", len(segments), *offsets, *([0] * (15 - len(segments))))
    return header + b"".join(seg + b"\0" * (len(seg) % 2) for seg in segments)


def _rle_dicom(rows: int, cols: int, frames: list[bytes], bits: int = 16) -> bytes:
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    ds = _dataset(rows, cols, bits=bits, ts=RLELossless, NumberOfFrames=len(frames))
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return _save(ds)


def frames_bomb() -> bytes:
    """20 frames of 2048×2048 16-bit zeros, RLE: 84 Mpx in all, about 2.6 MB on disk."""
    seg = _rle_zero_segment(2048 * 2048)
    return _rle_dicom(2048, 2048, [_rle_frame([seg, seg])] * 20)


def rle_segment_bomb() -> bytes:
    """A 64×64 8-bit RLE frame whose one segment decodes to 128 MiB."""
    return _rle_dicom(64, 64, [_rle_frame([_rle_zero_segment(128 << 20)])], bits=8)


def _bad_frames_value() -> bytes:
    ds = _dataset(16, 32)
    ds.add_new(0x00280008, "LO", "abc")  # NumberOfFrames written with a text VR so that pydicom keeps the bad value
    ds.PixelData = bytes(16 * 32 * 2)
    return _save(ds)


def _ramp(h: int = 16, w: int = 32) -> np.ndarray:
    return np.tile(np.arange(w, dtype=np.uint16) * 100, (h, 1))


def _ramp8() -> np.ndarray:
    return np.tile(np.linspace(0, 255, 32).astype(np.uint8), (16, 1))


def _tiff(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="TIFF")
    return buf.getvalue()


def _within(seconds: float, fn: Callable[[], object]) -> object:
    """Run ``fn`` in a daemon thread; fail (instead of hanging the suite) when it does not return in time."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s (a special file was opened?)"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket_file(path: Path) -> Path:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the socket file stays
    return path


# ------------------------------------------------------------------------------------------------------------------
# The reader: one parametrized table of bad files
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadFile:
    kind: str
    build: Callable[[Path], Path]  # writes the bad input under the given folder, returns the path to read
    refused: str | None  # regex of the ImageReadError; None: it must read, giving a 2-D uint8 array


def _write(name: str, data: Callable[[], bytes]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data())
        return path

    return build


def _sparse(folder: Path) -> Path:
    path = folder / "huge.png"
    with open(path, "wb") as fh:
        fh.truncate(images.MAX_FILE_BYTES + 1)
    return path


def _loop(folder: Path) -> Path:
    (folder / "loop.png").symlink_to(folder / "loop.png")
    return folder / "loop.png"


def _broken(folder: Path) -> Path:
    (folder / "broken.png").symlink_to(folder / "gone.png")
    return folder / "broken.png"


READER_CASES = [
    BadFile("dicom-deflate-bomb", _write("bomb.dcm", deflate_bomb), "inflates beyond"),
    BadFile("dicom-header-bomb", _write("h.dcm", lambda: _dicom(np.zeros((4, 4)), Rows=60000, Columns=60000)), "limit"),
    BadFile("dicom-frames-bomb", _write("f.dcm", frames_bomb), r"20 frame\(s\).*above the 64 Mpx limit"),
    BadFile(
        "dicom-samples-bomb",
        _write("s.dcm", lambda: _save(_dataset(6000, 6000, bits=8, samples=3, PixelData=b"\0" * 16))),
        r"3 sample\(s\).*limit",
    ),
    BadFile("dicom-rle-segment-bomb", _write("r.dcm", rle_segment_bomb), "decodes to more than"),
    BadFile("dicom-bad-integer", _write("i.dcm", _bad_frames_value), "NumberOfFrames value 'abc' is not an integer"),
    BadFile("dicom-window-width-0", _write("w.dcm", lambda: _dicom(_ramp(), WindowCenter=1000, WindowWidth=0)), None),
    BadFile(
        "dicom-unknown-voi-function",
        _write("v.dcm", lambda: _dicom(_ramp(), WindowCenter=500, WindowWidth=200, VOILUTFunction="FANCY")),
        None,
    ),
    BadFile("tiff-float", _write("f.tif", lambda: _tiff(Image.fromarray(_ramp().astype(np.float32) / 7))), None),
    BadFile("tiff-I;16", _write("i16.tif", lambda: _tiff(Image.fromarray(_ramp()))), None),
    BadFile("tiff-LAB", _write("lab.tif", lambda: _tiff(Image.fromarray(_ramp8()).convert("LAB"))), None),
    BadFile(
        "tiff-float-nan",
        _write("nan.tif", lambda: _tiff(Image.fromarray(np.full((8, 8), np.nan, np.float32)))),
        "non-finite",
    ),
    BadFile("fifo", lambda d: _fifo(d / "pipe.png"), "FIFO"),
    BadFile("socket", lambda d: _socket_file(d / "s.png"), "socket"),
    BadFile("device", lambda d: Path("/dev/zero"), "character device"),
    BadFile("folder", lambda d: d, "folder"),
    BadFile("symlink-loop", _loop, "symlink loop"),
    BadFile("broken-symlink", _broken, "broken symlink"),
    BadFile("huge-file", _sparse, "MiB limit"),
]


@pytest.mark.parametrize("case", READER_CASES, ids=lambda c: c.kind)
def test_reader_refuses_or_reads(case: BadFile, tmp_path):
    path = case.build(tmp_path)
    if case.refused is None:
        out = _within(30, lambda: read_image(path))
        assert isinstance(out, np.ndarray) and out.ndim == 2 and out.dtype == np.uint8 and out.max() == 255
    else:
        with pytest.raises(ImageReadError, match=case.refused):
            _within(30, lambda: read_image(path))


def test_window_width_0_and_unknown_function_show_the_full_range():
    plain = read_image_bytes(_dicom(_ramp()), "p.dcm")
    for tags in (
        {"WindowCenter": 1000, "WindowWidth": 0},
        {"WindowCenter": 1, "WindowWidth": 2, "VOILUTFunction": "X"},
    ):
        np.testing.assert_array_equal(read_image_bytes(_dicom(_ramp(), **tags), "w.dcm"), plain)


def test_hsv_and_lab_images_become_their_lightness():
    gray = _ramp8()
    hsv = Image.fromarray(np.dstack([gray] * 3)).convert("HSV")
    np.testing.assert_array_equal(images._pil_to_gray(hsv, "'x'"), gray)  # gray RGB → HSV → RGB is exact
    lab = read_image_bytes(_tiff(Image.fromarray(gray).convert("LAB")), "x.tif")
    assert np.all(np.diff(lab.astype(int), axis=1) >= 0) and lab[0, -1] > lab[0, 0]


def test_multiframe_files_give_their_first_frame():
    from pydicom.uid import RLELossless

    first, second = _ramp(), _ramp()[:, ::-1].copy()
    stack = np.stack([first, second, second])
    native = _dataset(16, 32, NumberOfFrames=3)
    native.PixelData = stack.tobytes()
    expected = read_image_bytes(_dicom(first), "one.dcm")
    np.testing.assert_array_equal(read_image_bytes(_save(native), "n.dcm"), expected)
    native.compress(RLELossless, stack)
    np.testing.assert_array_equal(read_image_bytes(_save(native), "r.dcm"), expected)


def test_deflated_dicom_reads():
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _dataset(16, 32, ts=DeflatedExplicitVRLittleEndian)
    ds.PixelData = _ramp().tobytes()
    np.testing.assert_array_equal(read_image_bytes(_save(ds), "d.dcm"), read_image_bytes(_dicom(_ramp()), "e.dcm"))


_RSS_PROBE = """
import json, resource, sys
sys.path.insert(0, {repo!r})
from cascade.images import read_image
from cascade.errors import ImageReadError
import pydicom.pixels, PIL.Image  # imported before the baseline, as they are in a running app
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_image({path!r})
    outcome = "read"
except ImageReadError as exc:
    outcome = str(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"outcome": outcome, "growth_mib": (after - before) / 1024}}))
"""


@pytest.mark.parametrize("build", [deflate_bomb, frames_bomb, rle_segment_bomb], ids=lambda f: f.__name__)
def test_bombs_do_not_grow_a_process(build, tmp_path):
    """The peak RSS of a fresh process reading the bomb (Linux reports ru_maxrss in KiB)."""
    path = tmp_path / "bomb.dcm"
    path.write_bytes(build())
    assert path.stat().st_size < 3 << 20
    probe = _RSS_PROBE.format(repo=str(REPO), path=str(path))
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert any(word in result["outcome"] for word in ("limit", "beyond", "more than")), result
    assert result["growth_mib"] < 200, result


# ------------------------------------------------------------------------------------------------------------------
# Datasets and command-line inputs: special files, symlinks, swaps
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def hostile_dataset(tmp_path) -> Path:
    """One good PNG per class plus a FIFO, a socket, a symlink loop, a broken link and a link out of the root."""
    root = tmp_path / "ds"
    for cls in ("normal", "osteopenia"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(_ramp8()).save(root / cls / "ok.png")
    n = root / "normal"
    _fifo(n / "p.png")
    _socket_file(n / "s.png")
    _loop(n)
    _broken(n)
    (tmp_path / "secret.png").write_bytes((root / cls / "ok.png").read_bytes())
    (n / "out.png").symlink_to(tmp_path / "secret.png")
    (n / "zero.png").symlink_to("/dev/zero")
    return root


def test_dataset_index_gives_error_rows_and_never_blocks(hostile_dataset):
    index = _within(30, lambda: index_dataset(hostile_dataset))
    by_name = {it.path.name: it for it in index.items}
    assert "out.png" not in by_name and "zero.png" not in by_name  # links out of the root are never indexed
    assert by_name["ok.png"].error == ""
    assert "FIFO" in by_name["p.png"].error and "socket" in by_name["s.png"].error
    assert "symlink loop" in by_name["loop.png"].error and "broken symlink" in by_name["broken.png"].error
    assert len(index.fingerprint()) == 16  # stat of broken entries does not raise
    for name in ("p.png", "s.png", "loop.png", "broken.png"):
        with pytest.raises(ImageReadError):
            _within(30, lambda n=name: read_item(by_name[n]))
    assert read_item(by_name["ok.png"]).shape == (16, 32)


def test_predictions_list_special_files_as_failed_rows(hostile_dataset):
    from cascade.predcache import compute_predictions

    class Uniform:  # a stand-in cascade: what matters here is which files reach it
        classes = ("normal", "osteopenia")
        seen = 0

        def predict(self, imgs, stage2_always=True, calibrated=True):
            Uniform.seen += len(imgs)
            p = np.full((len(imgs), 2), 0.5, np.float32)
            return p, p

    index = index_dataset(hostile_dataset)
    preds = _within(60, lambda: compute_predictions(Uniform(), index.select(), "all"))
    assert Uniform.seen == 2 and len(preds) == 2
    assert {Path(rel).name for rel, _ in preds.failed} == {"p.png", "s.png", "loop.png", "broken.png"}


def test_a_file_swapped_for_a_link_out_of_the_root_is_refused_at_read_time(hostile_dataset, tmp_path):
    index = index_dataset(hostile_dataset)
    item = next(it for it in index.items if it.rel == "osteopenia/ok.png")
    assert read_item(item).shape == (16, 32)
    item.path.unlink()
    item.path.symlink_to(tmp_path / "secret.png")  # same name, now pointing outside the dataset
    with pytest.raises(ImageReadError, match="outside the dataset root"):
        read_item(item)
    with pytest.raises(ImageReadError, match="outside"):
        index.read("osteopenia/ok.png")
    with pytest.raises(ImageReadError, match="outside"):
        index.read("../secret.png")


def test_command_line_inputs_are_listed_with_their_errors(hostile_dataset):
    given = [hostile_dataset, "/dev/zero", hostile_dataset / "missing.png"]
    listed = _within(30, lambda: list(iter_image_files(given)))
    errors = {Path(p).name: special_file_reason(p) for p in listed}
    assert errors["ok.png"] is None and "FIFO" in errors["p.png"] and "socket" in errors["s.png"]
    assert "character device" in errors["zero"] and "does not exist" in errors["missing.png"]
    assert "symlink loop" in errors["loop.png"] and "broken symlink" in errors["broken.png"]


def test_predict_and_evaluate_finish_over_special_files(tiny_config, tiny_dataset, tmp_path, capsys):
    """End to end: the commands that hung on a FIFO write its row with the reason and exit 1."""
    import csv as csv_module
    import shutil

    from engines.cli import main

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset / "test", data)
    _fifo(data / "normal" / "pipe.png")
    _socket_file(data / "normal" / "s.png")
    out = tmp_path / "preds.csv"
    argv = ["predict", str(data), "/dev/zero", "--out", str(out), "--config", str(tiny_config), "--backend", "torch"]
    assert _within(120, lambda: main([*argv, "--quiet"])) == 1
    rows = {Path(r["path"]).name: r["error"] for r in csv_module.DictReader(out.open())}
    assert "FIFO" in rows["pipe.png"] and "socket" in rows["s.png"] and "character device" in rows["zero"]
    assert sum(1 for e in rows.values() if not e) == 12
    report = tmp_path / "report.json"
    argv = ["evaluate", str(data), "--out", str(report), "--config", str(tiny_config), "--backend", "torch", "--quiet"]
    _within(120, lambda: main(argv))
    unreadable = {Path(u["path"]).name for u in json.loads(report.read_text())["unreadable"]}
    assert unreadable == {"pipe.png", "s.png"}


# ------------------------------------------------------------------------------------------------------------------
# Checkpoint fields and labels.txt
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"resolution": 8}, r"'resolution' is 8, outside 16\.\.2048"),
        ({"resolution": 4096}, "outside 16..2048"),
        ({"resolution": "224"}, "'resolution' must be an integer, got '224'"),
        ({"resolution": 224.0}, "must be an integer"),
        ({"resolution": True}, "must be an integer"),
        ({"num_classes": 2.5}, "'num_classes' must be an integer"),
        ({"num_classes": 3}, "labels.txt has 2 labels but the checkpoint 3"),
    ],
)
def test_bad_checkpoint_fields_are_one_line_errors(tmp_path, fields, match):
    (tmp_path / "labels.txt").write_text("normal\nosteopenia\n")
    ckpt = {"arch": "resnet18", "state_dict": {}, "num_classes": 2, "resolution": 224} | fields
    with pytest.raises(CheckpointError, match=match) as info:
        stage_spec_from(tmp_path, ckpt)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and ("re-save" in message or "make labels.txt" in message)


@pytest.mark.parametrize(
    ("raw", "outcome"),
    [
        (b"\xef\xbb\xbfnormal\r\nosteopenia\r\n", ("normal", "osteopenia")),
        (b"normal\r\nost\xc3\xa9openia\n\n", ("normal", "ostéopenia")),
        ("normal\nostéopenia\n".encode("latin-1"), "not UTF-8 text.*save it as UTF-8"),
        (b"normal\nNormal\n", "twice"),
        (b"normal\n", "at least 2"),
    ],
)
def test_labels_txt_encodings(tmp_path, raw, outcome):
    path = tmp_path / "labels.txt"
    path.write_bytes(raw)
    if isinstance(outcome, tuple):
        assert read_labels(path) == outcome
    else:
        with pytest.raises(CheckpointError, match=outcome):
            read_labels(path)


def test_model_files_and_configs_that_are_fifos_are_refused(tmp_path):
    _fifo(tmp_path / "labels.txt")
    with pytest.raises(CheckpointError, match="not a regular file"):
        _within(30, lambda: stage_spec_from(tmp_path, {"arch": "resnet18", "state_dict": {}}))
    _fifo(tmp_path / "model_best.pth.tar")
    with pytest.raises(CheckpointError, match="not a regular file"):
        _within(30, lambda: load_checkpoint(tmp_path / "model_best.pth.tar"))
    _fifo(tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="not a regular file"):
        _within(30, lambda: load_config(tmp_path / "c.toml"))


# ------------------------------------------------------------------------------------------------------------------
# Prediction cache entries
# ------------------------------------------------------------------------------------------------------------------


def _preds(**change) -> Predictions:
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], np.float32)
    fields = {
        "p1": p,
        "p2": p[::-1].copy(),
        "labels": np.array([0, 1, 1]),
        "rels": ("a.png", "b.png", "c.png"),
        "classes": ("normal", "osteopenia"),
        "split": "test",
        "key": "k",
    } | change
    return Predictions(**fields)


_NAN = np.array([[np.nan, 0.1], [0.2, 0.8], [0.5, 0.5]], np.float32)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"p1": _NAN}, "non-finite"),
        ({"p2": np.full((3, 2), 0.2, np.float32)}, "do not sum to 1"),
        ({"p1": np.full((3, 3), 1 / 3, np.float32)}, r"shape \(3, 3\)"),
        ({"p1": np.array([[1.5, -0.5], [0.2, 0.8], [0.5, 0.5]], np.float32)}, r"outside \[0, 1\]"),
        ({"labels": np.array([0, 1, 2])}, r"outside 0\.\.1"),
        ({"labels": np.array([0, 1])}, "expected 3 integers"),
    ],
)
def test_invalid_cache_entries_are_discarded(tmp_path, change, reason):
    path = tmp_path / "e.npz"
    save_predictions(_preds(**change), path)
    found, why = inspect_entry(path)
    assert found is None and re.search(reason, why), why
    assert load_predictions(path) is None


def test_truncated_and_valid_cache_entries(tmp_path):
    path = tmp_path / "e.npz"
    save_predictions(_preds(), path)
    assert inspect_entry(path)[0] is not None and inspect_entry(tmp_path / "none.npz") == (None, "")
    path.write_bytes(path.read_bytes()[:100])
    found, why = inspect_entry(path)
    assert found is None and "cannot be read" in why


def test_a_corrupted_entry_is_recomputed_with_a_notice(tiny_config, tiny_dataset, tmp_path):
    from cascade.predcache import cache_key, cache_path, cached_predictions
    from engines.select import open_cascade

    cascade = open_cascade(tiny_config, "torch")
    index = index_dataset(tiny_dataset)
    first = cached_predictions(cascade, index, "val", tmp_path)
    assert first.notice == ""
    path = cache_path(cache_key(cascade, index, "val"), tmp_path)
    bad = Predictions(first.p1 * np.float32(np.nan), first.p2, first.labels, first.rels, first.classes, "val",
                      first.failed, first.key)  # fmt: skip
    save_predictions(bad, path)
    again = cached_predictions(cascade, index, "val", tmp_path)
    assert "discarded and recomputed" in again.notice and "non-finite" in again.notice
    np.testing.assert_allclose(again.p1, first.p1, atol=1e-6)
    assert cached_predictions(cascade, index, "val", tmp_path).notice == ""  # the rewritten entry is valid


# ------------------------------------------------------------------------------------------------------------------
# Saving the gate into the config
# ------------------------------------------------------------------------------------------------------------------

_CONFIG = '# gate config\n[stage1]\nmodel_dir = "a"\n[stage2]\nmodel_dir = "b"\n[gate]\nthreshold = 0.6\n'


def test_save_gate_keeps_mode_line_endings_and_bom(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xef\xbb\xbf" + _CONFIG.replace("\n", "\r\n").encode())
    path.chmod(0o640)
    save_gate(path, 0.35)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and raw.count(b"\r\n") == raw.count(b"\n")
    assert b"# gate config" in raw and (path.stat().st_mode & 0o777) == 0o640
    assert load_config(path).threshold == pytest.approx(0.35)


def test_save_gate_writes_through_a_symlink(tmp_path):
    target = tmp_path / "real" / "c.toml"
    target.parent.mkdir()
    target.write_text(_CONFIG)
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    save_gate(link, 0.25)
    assert link.is_symlink() and load_config(target).threshold == pytest.approx(0.25)


def test_save_gate_refuses_a_read_only_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(_CONFIG)
    path.chmod(0o444)
    with pytest.raises(ConfigError, match="read-only.*make it writable"):
        save_gate(path, 0.3)
    assert path.read_text() == _CONFIG


@pytest.mark.parametrize(
    "edited", ["[stage1\nbroken", _CONFIG.replace('model_dir = "b"', ""), _CONFIG.replace("0.6", '"high"')]
)
def test_save_gate_on_a_config_that_became_invalid(tmp_path, edited):
    path = tmp_path / "c.toml"
    path.write_text(_CONFIG)
    load_config(path)
    path.write_text(edited)  # edited by hand while the dashboard ran
    with pytest.raises(StaleConfigError, match="no longer valid.*not saved"):
        save_gate(path, 0.3)
    assert path.read_text() == edited


def test_output_paths_that_are_not_files_are_refused_and_left_alone(tmp_path):
    from cascade.errors import CascadeError
    from cascade.fileio import check_output_path, write_atomic

    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    link = tmp_path / "null.csv"
    link.symlink_to("/dev/null")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out, says in (
        (tmp_path, "is a folder"),
        (fifo, "not a regular file"),
        (link, "not a regular file"),
        (Path("/dev/full"), "not a regular file"),
        (blocker / "x.csv", "cannot write in"),
    ):
        with pytest.raises(CascadeError, match=says):
            check_output_path(out)
        if out.exists() and not out.is_dir():
            with pytest.raises(CascadeError):
                write_atomic(out, "rows")
    assert os.stat("/dev/full").st_rdev != 0 and link.is_symlink() and fifo.is_fifo()
