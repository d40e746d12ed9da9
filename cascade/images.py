"""Reading radiographs: PNG, JPEG and DICOM into one form, a 2-D uint8 grayscale array.

Real knee sets mix 8-bit gray, RGB holding gray, 16-bit PNG and DICOM. Everything is reduced to grayscale here, once,
so that colour mode or bit depth can never become a shortcut for a model, and every failure is one exception type
(:class:`~cascade.errors.ImageReadError`) whose message says what is wrong with the file.

This is the one reader, so the guards against hostile files live here: only regular files are opened (a FIFO, socket
or device would block or never end), files are read with a byte limit, and image sizes are checked against
:data:`MAX_PIXELS` from the header before any pixel is decoded (PNG/JPEG through Pillow's header, DICOM through
Rows × Columns × NumberOfFrames × SamplesPerPixel, a deflated DICOM's inflated size and an RLE frame's decoded size).
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cascade.errors import ImageReadError

#: Files larger than this many pixels are refused (a decompression bomb guard; a 4k×4k radiograph is 16 Mpx).
#: For DICOM it bounds Rows × Columns × NumberOfFrames × SamplesPerPixel.
MAX_PIXELS = 64_000_000
#: Files larger than this are refused before they are read (a 64 Mpx 16-bit DICOM is 128 MB).
MAX_FILE_BYTES = 256 * 1024 * 1024
#: A deflated DICOM data set may inflate to at most this (64 Mpx of 16-bit samples plus 8 MiB of header).
MAX_INFLATED_BYTES = MAX_PIXELS * 2 + 8 * 1024 * 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")
_DICOM_MAGIC_OFFSET = 128
_DEFLATED = "1.2.840.10008.1.2.1.99"
_RLE = "1.2.840.10008.1.2.5"
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_KIND = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the suffix is one this project reads (case-insensitive); builds no Path (called per file indexed)."""
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def special_file_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as an image file without opening it, or None for a regular file.

    Follows symlinks; a broken symlink, a symlink loop, a FIFO, a socket, a device or a folder each get a reason.
    """
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        return "is a broken symlink (its target does not exist)" if os.path.islink(p) else "does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop"
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    return f"is {_KIND.get(stat.S_IFMT(mode), 'not a regular file')}, not an image file"


def read_file_bytes(path: str | os.PathLike, limit: int = MAX_FILE_BYTES, no_follow: bool = False) -> bytes:
    """The bytes of a regular file, at most ``limit`` of them; anything else is refused without blocking.

    The file is opened non-blocking and checked again on the open descriptor (``fstat``), so a file swapped for a FIFO
    between the check and the open still cannot hang the caller. ``no_follow`` refuses a final symlink (used after
    the path was resolved and confined).
    """
    p = Path(path)
    reason = special_file_reason(p)
    if reason is not None:
        raise ImageReadError(f"'{p}' {reason}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if no_follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageReadError(f"'{p}' became a symlink after it was checked; refused") from exc
        raise ImageReadError(f"'{p}' cannot be read: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ImageReadError(f"'{p}' is {_KIND.get(stat.S_IFMT(st.st_mode), 'not a regular file')}, not an image")
        if st.st_size > limit:
            raise ImageReadError(
                f"'{p}' is {st.st_size / 2**20:.0f} MiB, above the {limit / 2**20:.0f} MiB limit for one image"
            )
        data = fh.read(limit + 1)
    if len(data) > limit:  # grew while being read
        raise ImageReadError(f"'{p}' is larger than the {limit / 2**20:.0f} MiB limit for one image")
    return data


def _is_dicom(data: bytes, name: str) -> bool:
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def _to_uint8(arr: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Window a numeric array to [low, high] (default: its min and max) and scale to 0..255."""
    arr = np.asarray(arr)
    lo = float(np.min(arr)) if low is None else low
    hi = float(np.max(arr)) if high is None else high
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ImageReadError("the pixel data holds non-finite values (NaN or infinity)")
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    work = arr.astype(np.float64)  # float64: 32-bit integers and wide ranges keep their order exactly
    work -= lo
    work *= 255.0 / (hi - lo)
    np.rint(work, out=work)
    np.clip(work, 0, 255, out=work)
    return work.astype(np.uint8)


def _check_size(width: int, height: int, what: str, frames: int = 1, samples: int = 1) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{what} has no pixels ({width}×{height})")
    total = width * height * max(frames, 1) * max(samples, 1)
    if total > MAX_PIXELS:
        extra = f" × {frames} frame(s) × {samples} sample(s)" if frames > 1 or samples > 1 else ""
        raise ImageReadError(
            f"{what} is {width}×{height}{extra} = {total / 1e6:.0f} Mpx, above the {MAX_PIXELS / 1e6:.0f} Mpx limit "
            "(a guard against decompression bombs); downscale it first"
        )


def _pil_to_gray(img: Image.Image, what: str) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _to_uint8(np.asarray(img))
    if mode == "LAB":  # L* is lightness: exactly the gray an X-ray shows; a and b carry no signal
        return np.asarray(img.getchannel(0), dtype=np.uint8)
    if mode == "HSV":
        img = img.convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "RGBA", "PA"):
        # Transparent pixels carry no X-ray signal: show them as background (black), as a viewer on dark film would.
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    if img.mode == "CMYK":
        img = img.convert("RGB")
    try:
        return np.asarray(img.convert("L"), dtype=np.uint8)
    except ValueError as exc:
        raise ImageReadError(f"{what} has the colour mode {mode}, which cannot be reduced to grayscale") from exc


def _read_pil(data: bytes, what: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(img.width, img.height, what)
            img.load()
            return _pil_to_gray(img, what)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"{what} is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{what} is not a PNG, JPEG or DICOM image (unrecognised content)") from exc
    except (OSError, SyntaxError, ValueError, TypeError, MemoryError) as exc:
        raise ImageReadError(f"{what} is corrupt or truncated (or of an unsupported kind): {exc}") from exc


def _inflated_size(data: bytes, start: int, what: str) -> int:
    """Bytes a deflated data set inflates to, counted in chunks without keeping them; refused above the bound."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, pending = 0, data[start:]
    try:
        while pending:
            total += len(inflater.decompress(pending, 1 << 20))
            pending = inflater.unconsumed_tail
            if total > MAX_INFLATED_BYTES:
                raise ImageReadError(
                    f"{what}: its deflated data set inflates beyond {MAX_INFLATED_BYTES / 2**20:.0f} MiB "
                    "(a decompression bomb?); refused before decoding"
                )
            if inflater.eof:
                break
    except zlib.error as exc:
        raise ImageReadError(f"{what}: its deflated data set is corrupt: {exc}") from exc
    return total


def _rle_segment_length(seg: bytes | memoryview, cap: int) -> int:
    """Decoded length of one RLE segment (PS3.5 G.3.1), stopping as soon as it exceeds ``cap``."""
    pos, out, n = 0, 0, len(seg)
    while pos < n and out <= cap:
        h = seg[pos]
        if h > 128:
            out += 257 - h
            pos += 2
        elif h < 128:
            out += h + 1
            pos += h + 2
        else:
            pos += 1
    return out


def _check_rle_frame(ds, frames: int, what: str) -> None:
    """An RLE frame must decode to no more than its declared size: pydicom's decoder grows without bound."""
    from pydicom.encaps import get_frame

    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
        n_seg = int.from_bytes(frame[:4], "little")
        offsets = [int.from_bytes(frame[4 + 4 * i : 8 + 4 * i], "little") for i in range(min(n_seg, 15))]
    except Exception as exc:  # pydicom raises several types on broken encapsulation
        raise ImageReadError(f"{what}: its RLE pixel data is malformed: {exc}") from exc
    cap = int(ds.Rows) * int(ds.Columns)
    view = memoryview(frame)
    for i, start in enumerate(offsets):
        end = offsets[i + 1] if i + 1 < len(offsets) else len(frame)
        if not 64 <= start <= end <= len(frame):
            raise ImageReadError(f"{what}: its RLE header has an invalid segment offset")
        if _rle_segment_length(view[start:end], cap) > cap:
            raise ImageReadError(
                f"{what}: an RLE segment decodes to more than its {ds.Rows}×{ds.Columns} frame (a decompression bomb?)"
            )


def _dicom_int(ds, keyword: str, default: int, what: str) -> int:
    value = ds.get(keyword, default)
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(f"{what}: the DICOM {keyword} value {value!r} is not an integer") from exc


def _window_usable(ds) -> bool:
    """A VOI window is applied only when pydicom can apply it meaningfully: width > 0 and a known function."""
    if "VOILUTSequence" in ds:
        return True
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return False
    from pydicom.multival import MultiValue

    width = ds.WindowWidth
    first = width[0] if isinstance(width, MultiValue | list | tuple) else width
    try:
        if float(first) <= 0:
            return False  # WindowWidth 0: no window can be applied; the full range is shown instead
    except (TypeError, ValueError):
        return False
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    return function in _VOI_FUNCTIONS


def _read_dicom(data: bytes, what: str) -> np.ndarray:
    try:
        import pydicom
        from pydicom.filereader import _read_file_meta_info, read_preamble  # the meta alone, before any inflating
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
        from pydicom.pixels import pixel_array as decode_pixels
    except ImportError as exc:  # pragma: no cover - pydicom is in requirements.txt
        raise ImageReadError("reading DICOM needs pydicom: pip install pydicom") from exc
    try:
        fp = io.BytesIO(data)
        read_preamble(fp, True)
        meta = _read_file_meta_info(fp) if data[128:132] == b"DICM" else None
        syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        if syntax == _DEFLATED:
            _inflated_size(data, fp.tell(), what)
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except ImageReadError:
        raise
    except Exception as exc:  # pydicom raises many types for broken files
        raise ImageReadError(f"{what} is not a readable DICOM file: {exc}") from exc
    if "PixelData" not in ds:
        raise ImageReadError(f"{what} is a DICOM file without pixel data (a report or structured object?)")
    rows, cols = _dicom_int(ds, "Rows", 0, what), _dicom_int(ds, "Columns", 0, what)
    frames = _dicom_int(ds, "NumberOfFrames", 1, what)
    samples = _dicom_int(ds, "SamplesPerPixel", 1, what)
    _check_size(cols, rows, what, frames, samples)
    if "TransferSyntaxUID" not in ds.file_meta:  # a bare data set without file meta: as pydicom read it
        implicit = ds.original_encoding[0] if ds.original_encoding[0] is not None else True
        ds.file_meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian
        )
    if str(ds.file_meta.TransferSyntaxUID) == _RLE:
        _check_rle_frame(ds, frames, what)
    try:
        # Multi-frame files: only the first frame is decoded (and shown); the others are never decoded.
        arr = decode_pixels(ds, index=0)
    except Exception as exc:
        raise ImageReadError(f"{what}: cannot decode the DICOM pixel data: {exc}") from exc
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and samples > 1:
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if arr.ndim != 2:
        raise ImageReadError(f"{what}: unsupported DICOM pixel array shape {arr.shape}")
    try:
        arr = apply_modality_lut(arr, ds)  # rescale slope / intercept
        if _window_usable(ds):
            arr = apply_voi_lut(arr, ds, index=0)
    except Exception as exc:  # a malformed LUT or rescale value
        raise ImageReadError(f"{what}: its DICOM rescale or VOI LUT values cannot be applied: {exc}") from exc
    out = _to_uint8(np.asarray(arr))
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: high values are dark; bring it to the usual bone-is-bright form
    return out


def read_image_bytes(data: bytes, name: str = "image") -> np.ndarray:
    """Decode PNG/JPEG/TIFF/BMP (8- or 16-bit, any colour mode, EXIF orientation) or DICOM to 2-D uint8 grayscale."""
    what = f"'{name}'"
    if not data:
        raise ImageReadError(f"{what} is empty (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageReadError(f"{what} is {len(data) / 2**20:.0f} MiB, above the {MAX_FILE_BYTES / 2**20:.0f} MiB limit")
    if _is_dicom(data, name):
        return _read_dicom(data, what)
    return _read_pil(data, what)


def read_image(path: str | os.PathLike, root: str | os.PathLike | None = None) -> np.ndarray:
    """Read a radiograph file to 2-D uint8 grayscale; raises ImageReadError with a reason.

    Only a regular file is opened. With ``root``, the path is resolved now, at read time, and refused when it lies
    outside ``root`` (a file swapped for a symlink that leaves the dataset after it was indexed).
    """
    p = Path(path)
    if root is None:
        return read_image_bytes(read_file_bytes(p), str(p))
    base = Path(root).resolve()
    try:
        target = p.resolve(strict=True)
    except FileNotFoundError:
        raise ImageReadError(f"'{p}' {special_file_reason(p) or 'does not exist'}") from None
    except (OSError, RuntimeError):
        raise ImageReadError(f"'{p}' {special_file_reason(p) or 'cannot be resolved'}") from None
    if base not in target.parents:
        raise ImageReadError(f"'{p}' now resolves to '{target}', outside the dataset root '{base}'; refused")
    return read_image_bytes(read_file_bytes(target, no_follow=True), str(p))
