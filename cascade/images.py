"""Reading radiographs: PNG, JPEG and DICOM into one form, a 2-D uint8 grayscale array.

Real knee sets mix 8-bit gray, RGB holding gray, 16-bit PNG and DICOM. Everything is reduced to grayscale here, once,
so that colour mode or bit depth can never become a shortcut for a model, and every failure is one exception type
(:class:`~cascade.errors.ImageReadError`) whose message says what is wrong with the file.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cascade.errors import ImageReadError

#: Files larger than this many pixels are refused (a decompression bomb guard; a 4k×4k radiograph is 16 Mpx).
MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")
_DICOM_MAGIC_OFFSET = 128


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the suffix is one this project reads (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _is_dicom(data: bytes, name: str) -> bool:
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def _to_uint8(arr: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Window a numeric array to [low, high] (default: its min and max) and scale to 0..255."""
    arr = arr.astype(np.float64, copy=False)
    lo = float(np.min(arr)) if low is None else low
    hi = float(np.max(arr)) if high is None else high
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ImageReadError("the pixel data holds non-finite values")
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.clip(np.rint((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _check_size(width: int, height: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{what} has no pixels ({width}×{height})")
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            f"{what} is {width}×{height} = {width * height / 1e6:.0f} Mpx, above the {MAX_PIXELS / 1e6:.0f} Mpx limit "
            "(a guard against decompression bombs); downscale it first"
        )


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)
        return _to_uint8(arr)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "RGBA", "PA"):
        # Transparent pixels carry no X-ray signal: show them as background (black), as a viewer on dark film would.
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    if img.mode == "CMYK":
        img = img.convert("RGB")
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _read_pil(data: bytes, what: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(img.width, img.height, what)
            img.load()
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"{what} is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{what} is not a PNG, JPEG or DICOM image (unrecognised content)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{what} is corrupt or truncated: {exc}") from exc
    return _pil_to_gray(img)


def _read_dicom(data: bytes, what: str) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as exc:  # pragma: no cover - pydicom is in requirements.txt
        raise ImageReadError("reading DICOM needs pydicom: pip install pydicom") from exc
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types for broken files
        raise ImageReadError(f"{what} is not a readable DICOM file: {exc}") from exc
    if "PixelData" not in ds:
        raise ImageReadError(f"{what} is a DICOM file without pixel data (a report or structured object?)")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    _check_size(cols, rows, what)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(f"{what}: cannot decode the DICOM pixel data: {exc}") from exc
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and ds.get("SamplesPerPixel", 1) > 1:
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    elif arr.ndim == 3:  # multi-frame: the first frame
        arr = arr[0]
    if arr.ndim != 2:
        raise ImageReadError(f"{what}: unsupported DICOM pixel array shape {arr.shape}")
    arr = apply_modality_lut(arr, ds)  # rescale slope / intercept
    windowed = "WindowCenter" in ds or "VOILUTSequence" in ds
    if windowed:
        arr = apply_voi_lut(arr, ds, index=0)
    out = _to_uint8(np.asarray(arr))
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: high values are dark; bring it to the usual bone-is-bright form
    return out


def read_image_bytes(data: bytes, name: str = "image") -> np.ndarray:
    """Decode PNG/JPEG/TIFF/BMP (8- or 16-bit, any colour mode, EXIF orientation) or DICOM to 2-D uint8 grayscale."""
    what = f"'{name}'"
    if not data:
        raise ImageReadError(f"{what} is empty (0 bytes)")
    if _is_dicom(data, name):
        return _read_dicom(data, what)
    return _read_pil(data, what)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a radiograph file to 2-D uint8 grayscale; raises ImageReadError with a reason."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise ImageReadError(f"'{p}' does not exist") from exc
    except IsADirectoryError as exc:
        raise ImageReadError(f"'{p}' is a folder, not an image") from exc
    except OSError as exc:
        raise ImageReadError(f"'{p}' cannot be read: {exc.strerror or exc}") from exc
    return read_image_bytes(data, str(p))
