import io

import numpy as np
import pytest
from PIL import Image

from cascade import images
from cascade.errors import ImageReadError
from cascade.images import read_image, read_image_bytes
from tests.conftest import REALDATA, make_dicom_bytes


def _ramp(h=40, w=60) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "CMYK"])
def test_colour_modes_become_the_same_gray(mode):
    gray = _ramp()
    img = Image.fromarray(gray).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = read_image_bytes(_encode(img, fmt), f"x.{fmt.lower()}")
    assert out.dtype == np.uint8 and out.shape == gray.shape
    tol = 6 if fmt == "JPEG" else 1
    assert np.abs(out.astype(int) - gray).max() <= tol


def test_jpeg_rgb_holding_gray():
    gray = _ramp()
    out = read_image_bytes(_encode(Image.fromarray(np.dstack([gray] * 3)), "JPEG", quality=95), "x.jpg")
    assert np.abs(out.astype(int) - gray).mean() < 2


def test_sixteen_bit_png_uses_the_full_range():
    arr = (np.linspace(1000, 4000, 60 * 40).reshape(40, 60)).astype(np.uint16)  # a 12-bit detector in 16-bit PNG
    out = read_image_bytes(_encode(Image.fromarray(arr), "PNG"), "x.png")
    assert out.min() == 0 and out.max() == 255 and out.shape == (40, 60)
    assert np.all(np.diff(out.astype(int), axis=1) >= 0)


def test_exif_orientation_is_applied():
    img = Image.fromarray(_ramp(20, 50))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = read_image_bytes(_encode(img, "JPEG", exif=exif.tobytes()), "x.jpg")
    assert out.shape == (50, 20)


def test_dicom_monochrome2_and_monochrome1_inverted():
    arr = np.tile(np.linspace(0, 4000, 32).astype(np.uint16), (16, 1))
    m2 = read_image_bytes(make_dicom_bytes(arr), "a.dcm")
    m1 = read_image_bytes(make_dicom_bytes(arr, "MONOCHROME1"), "b.dcm")
    assert m2[0, 0] == 0 and m2[0, -1] == 255
    np.testing.assert_array_equal(m1, 255 - m2)


def test_dicom_rescale_and_window():
    arr = np.tile(np.linspace(0, 4000, 64).astype(np.uint16), (8, 1))
    # window centred on rescaled value 1000 with width 400: below 800 black, above 1200 white
    out = read_image_bytes(make_dicom_bytes(arr, slope=1, intercept=-1000, window=(1000, 400)), "c.dcm")
    rescaled = arr[0].astype(float) - 1000
    assert np.all(out[:, rescaled < 790] == 0) and np.all(out[:, rescaled > 1210] == 255)
    mid = (rescaled > 850) & (rescaled < 1150)
    assert np.all((out[0, mid] > 0) & (out[0, mid] < 255))


def test_dicom_without_pixels():
    with pytest.raises(ImageReadError, match="without pixel data"):
        read_image_bytes(make_dicom_bytes(np.zeros((4, 4)), pixels=False), "report.dcm")


@pytest.mark.parametrize(
    ("data", "name", "match"),
    [
        (b"", "empty.png", "empty"),
        (b"this is a text file, not an image", "notes.txt", "not a PNG, JPEG or DICOM"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "trunc.png", "corrupt|truncated|not a PNG"),
    ],
)
def test_bad_bytes(data, name, match):
    with pytest.raises(ImageReadError, match=match):
        read_image_bytes(data, name)


def test_truncated_jpeg():
    data = _encode(Image.fromarray(_ramp(200, 200)), "JPEG")
    with pytest.raises(ImageReadError, match="corrupt or truncated"):
        read_image_bytes(data[: len(data) // 2], "half.jpg")


def test_pixel_limit(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageReadError, match="Mpx limit"):
        read_image_bytes(_encode(Image.fromarray(_ramp(40, 60)), "PNG"), "big.png")


def test_paths(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata-dev is absent")
def test_every_real_radiograph_reads_as_gray():
    files = sorted(p for p in REALDATA.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    assert len(files) >= 3
    for f in files:
        img = read_image(f)
        assert img.ndim == 2 and img.dtype == np.uint8 and min(img.shape) >= 512
        assert img.std() > 10  # real content, not a blank decode
