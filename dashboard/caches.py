"""The app's Streamlit caches: models, dataset indexes, split predictions, images, per-image predictions and maps.

Models are ``st.cache_resource`` (one copy per process, shared by sessions); images, thumbnails and per-image
predictions are ``st.cache_data`` (pure values keyed by what determines them), so a rerun for a slider move finds them
all in memory and runs no model. What a run has open, and how failures are shown, is ``dashboard.context``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import streamlit as st

from cascade.config import CascadeConfig
from cascade.dataset import DatasetIndex, Item, index_dataset, read_item
from cascade.errors import CascadeError, ImageReadError
from cascade.explain import CamMaps, RandomBaseline, StageExplainer
from cascade.fileio import file_sha256
from cascade.gate import GateRule
from cascade.images import read_image_bytes
from cascade.pipeline import Cascade
from cascade.predcache import Predictions, cache_key, cache_path, cached_predictions, load_predictions
from dashboard.state import prediction_cache_dir

if TYPE_CHECKING:
    from dashboard.context import AppContext

log = logging.getLogger(__name__)
THUMB_SIZE = 160
_MEMORY_ENTRIES = 8


def _stamp(path: Path) -> str:
    """A file's identity as the OS sees it: inode, size and modification time (ns); "missing" when it is gone.

    Overwriting in place changes size or mtime, replacing by rename changes the inode.
    """
    try:
        info = path.stat()
    except OSError:
        return "missing"
    return f"{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"


def _tree_stamp(root: Path) -> str:
    """Identity of every folder under ``root`` (mtime, inode): adding, removing or renaming a file anywhere changes it.

    The root's own mtime is not enough: it does not change when a file inside a class folder is added or removed.
    Files overwritten in place keep their folder's mtime; their predictions and thumbnails are keyed on each file's
    own identity (``DatasetIndex.fingerprint``, ``_stamp``), not on this.
    """
    parts = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        try:
            info = os.stat(dirpath)
        except OSError:
            continue
        parts.append(f"{dirpath}:{info.st_mtime_ns}:{info.st_ino}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest() if parts else _stamp(root)


def _release_cascade(cascade: Cascade) -> None:
    """On eviction: free GPU buffers inside their CUDA context now, not at some garbage collection in another thread."""
    for stage in (1, 2):
        cascade.backend(stage).close()


@st.cache_resource(show_spinner="Loading the models…", max_entries=4, on_release=_release_cascade)
def _open_cascade(stage1: str, stage2: str, normal_label: str, backend: str, token: str) -> Cascade:
    """Both stages, once per process for a given set of folders and files (``token`` changes with the files)."""
    from engines.select import open_cascade

    cfg = CascadeConfig(Path(stage1), Path(stage2), 0.6, GateRule.P_NORMAL, normal_label)
    return open_cascade(cfg, backend)


def cascade_token(cfg: CascadeConfig, backend: str) -> str:
    """Identity of a loaded cascade: its folders, backend kind and the stamps of every file a backend may run.

    Checked on every run, so a checkpoint, labels.txt, ONNX file or engine replaced while the app runs loads the
    models again, and every cached prediction and map (keyed on this token) is computed afresh. The first load may
    export an ONNX file, which changes the token once: the next run then opens the folders again, quickly.
    """
    parts = [str(cfg.stage1_dir), str(cfg.stage2_dir), cfg.normal_label, backend]
    for folder in (cfg.stage1_dir, cfg.stage2_dir):
        parts += [_stamp(folder / name) for name in ("model_best.pth.tar", "labels.txt")]
        models = sorted([*folder.glob("*.onnx"), *folder.glob("*.engine")]) if folder.is_dir() else []
        parts += [f"{p.name}={_stamp(p)}" for p in models]
    return "|".join(parts)


def open_cascade_cached(cfg: CascadeConfig, backend: str) -> Cascade:
    """The cached cascade for a config's model folders (the gate is not part of it: pages pass their own)."""
    token = cascade_token(cfg, backend)
    cascade = _open_cascade(str(cfg.stage1_dir), str(cfg.stage2_dir), cfg.normal_label, backend, token)
    # The config's calibration: a light copy sharing the loaded backends (switching it on or off loads nothing).
    return cascade if cascade.temperatures == cfg.temperatures else replace(cascade, temperatures=cfg.temperatures)


@st.cache_resource(show_spinner="Indexing the dataset…", max_entries=4)
def _index(root: str, token: str) -> DatasetIndex:
    return index_dataset(root)


def open_index_cached(root: str) -> DatasetIndex:
    """The dataset's index, rebuilt when any folder in it changed (re-checked on every run: one stat per folder)."""
    path = Path(root).expanduser()
    return _index(str(path), _tree_stamp(path))


def _gpu_device_nodes() -> bool:
    """False only on a Linux host without NVIDIA device nodes (desktop ``/dev/nvidia0``, Jetson ``/dev/nvhost-*``):
    there no GPU can be found, and asking ``engines.hardware`` would import torch (5 s) just to hear so."""
    if not sys.platform.startswith("linux"):
        return True
    dev = Path("/dev")
    return any(dev.glob("nvidia[0-9]*")) or any(dev.glob("nvhost-*")) or (dev / "nvgpu").exists()


@st.cache_resource
def gpu_info():
    """The CUDA GPU as ``engines.hardware`` sees it (what the backend choice was based on), or None."""
    if not _gpu_device_nodes():
        return None
    from engines.hardware import detect_gpu

    return detect_gpu()


@st.cache_resource
def machine_summary() -> str:
    """CPU and GPU in one line."""
    from engines.hardware import cpu_model, physical_cores

    gpu = gpu_info()
    where = "no CUDA GPU" if gpu is None else f"GPU {gpu.name} (compute capability {gpu.sm})"
    return f"{cpu_model()}, {physical_cores()} physical core(s); {where}"


@st.cache_resource
def tensorrt_buildable() -> bool:
    """TensorRT is installed and a GPU is present: only then can Home offer to build engines."""
    return importlib.util.find_spec("tensorrt") is not None and gpu_info() is not None


# ---------------------------------------------------------------------------------------------------------------------
# Predictions for a split (on disk, and in memory for this process)


@st.cache_resource(max_entries=32)
def _prediction_key(_cascade: Cascade, token: str, _index: DatasetIndex, root: str, files: str, split: str) -> str:
    """Cache key of a split: hashing the checkpoints once per loaded cascade and file list, not on every rerun.

    ``files`` is the split's fingerprint (each file's size, mtime and inode), taken on every run: an image overwritten
    while the app runs gives a new key, so its old predictions are never shown again.
    """
    return cache_key(_cascade, _index, split)


@st.cache_resource
def _memory() -> tuple[OrderedDict[str, Predictions], threading.Lock]:
    return OrderedDict(), threading.Lock()


def split_predictions(ctx: AppContext, split: str, compute: bool = False) -> Predictions | None:
    """The split's predictions from memory or disk; computed (with a progress bar) only when ``compute``."""
    cascade, index = ctx.need_cascade(), ctx.need_index()
    key = _prediction_key(cascade, ctx.cascade_token, index, str(index.root), index.fingerprint(split), split)
    store, lock = _memory()
    with lock:
        if key in store:
            store.move_to_end(key)
            return store[key].with_temperatures(cascade.temperatures)  # raw in the caches
    preds = load_predictions(cache_path(key, prediction_cache_dir()))
    if preds is None and compute:
        n = len(index.select(split))
        bar = st.progress(0.0, text=f"Running both stages on {n} images of '{split}' (once; then cached on disk)…")

        def progress(done: int, total: int) -> None:
            bar.progress(done / max(total, 1), text=f"Running both stages: {done} / {total} images")

        # The key is known: passing it spares hashing both checkpoints again (a few tenths of a second).
        preds = cached_predictions(cascade, index, split, prediction_cache_dir(), progress=progress, key=key)
        bar.empty()
    if preds is not None:
        with lock:
            store[key] = preds
            while len(store) > _MEMORY_ENTRIES:
                store.popitem(last=False)
    return None if preds is None else preds.with_temperatures(cascade.temperatures)


# ---------------------------------------------------------------------------------------------------------------------
# Images


#: Files up to this size are also hashed for their cache identity (a few ms), larger ones go by their stamp alone.
CONTENT_HASH_LIMIT = 16 << 20


@st.cache_data(max_entries=64, show_spinner=False)
def _read_dataset_image(_item: Item, path: str, root: str, stamp: str) -> np.ndarray:
    """``read_item``: the index-time error, or the file confined to the dataset root at read time (``path``, ``root``
    and ``stamp`` are the cache key)."""
    image = read_item(_item)
    if _stamp(Path(path)) != stamp:  # written to while being read: these pixels belong to no version of the file
        raise ImageReadError(f"'{path}' changed while it was being read; open it again")
    return image


def _content_hash(path: Path, stamp: str) -> str:
    size = int(stamp.split(":")[1])
    return file_sha256(path) if size <= CONTENT_HASH_LIMIT else ""


def dataset_image(item: Item) -> tuple[np.ndarray, str]:
    """A dataset image as grayscale uint8 and its cache identity, as the file is now.

    The identity (path, inode, size, mtime and, for files up to :data:`CONTENT_HASH_LIMIT`, the content's hash) is
    taken on every call, so a file overwritten while the app runs gives new pixels and a new identity (and so new
    predictions and maps), and a removed one an ImageReadError that says so.
    """
    if item.error:  # found at index time (FIFO, device, broken symlink...)
        raise ImageReadError(item.error)
    stamp = _stamp(item.path)
    if stamp == "missing":
        raise ImageReadError(
            f"'{item.rel}' was removed or renamed since the dataset was indexed; pick another image or reload the "
            "dataset"
        )
    try:
        token = f"file:{item.path}:{stamp}:{_content_hash(item.path, stamp)}"
    except OSError as exc:
        raise ImageReadError(f"'{item.rel}' cannot be read: {exc.strerror or exc}") from exc
    return _read_dataset_image(item, str(item.path), str(item.root), stamp), token


@st.cache_data(max_entries=16, show_spinner=False)
def read_upload(data: bytes, name: str) -> np.ndarray:
    return read_image_bytes(data, name)


def fit_within(image: np.ndarray, size: int) -> np.ndarray:
    """Shrink (never enlarge) so the longer side is at most ``size``, keeping the aspect ratio."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


@st.cache_data(max_entries=4096, show_spinner=False)
def _thumbnail(_item: Item, path: str, root: str, stamp: str, size: int) -> np.ndarray | str:
    try:
        return fit_within(read_item(_item), size)
    except CascadeError as exc:
        return str(exc)


def thumbnail(item: Item, size: int = THUMB_SIZE) -> np.ndarray | str:
    """A small copy of a dataset image, or the reason it cannot be read."""
    if item.error:
        return item.error
    return _thumbnail(item, str(item.path), str(item.root), _stamp(item.path), size)


# ---------------------------------------------------------------------------------------------------------------------
# One image through both stages


@dataclass(frozen=True)
class ImagePrediction:
    """Both stages' probabilities for one image (stage 2 always run, so any gate can be shown) and their latency."""

    p1: np.ndarray
    p2: np.ndarray
    seconds1: float
    seconds2: float


@st.cache_data(max_entries=256, show_spinner="Running both stages…")
def _predict(_cascade: Cascade, token: str, image_token: str, _image: np.ndarray) -> ImagePrediction:
    r1 = _cascade.run_stage(1, [_image])
    r2 = _cascade.run_stage(2, [_image])
    return ImagePrediction(r1.probs[0].astype(np.float64), r2.probs[0].astype(np.float64), r1.seconds, r2.seconds)


def upload_token(data: bytes) -> str:
    """Identity of an uploaded image for caches: its bytes' hash (dataset files: :func:`dataset_image`)."""
    return "upload:" + hashlib.sha256(data).hexdigest()


def predict_image(ctx: AppContext, token: str, image: np.ndarray) -> ImagePrediction:
    """Both stages on one image, once per image and cascade: re-deciding at another gate runs nothing."""
    return _predict(ctx.need_cascade(), ctx.cascade_token, token, image)


# ---------------------------------------------------------------------------------------------------------------------
# Class activation maps and their faithfulness (``cascade.explain`` computes; these only cache)


@st.cache_resource(max_entries=8)
def _stage_explainer(_cascade: Cascade, token: str, stage: int) -> StageExplainer:
    """One per stage model and process: its PyTorch explainer (loaded on first use) is shared by every session."""
    return StageExplainer(_cascade.backend(stage))


def stage_explainer(ctx: AppContext, stage: int) -> StageExplainer:
    return _stage_explainer(ctx.need_cascade(), ctx.cascade_token, stage)


def _warm(explainers: list[StageExplainer]) -> None:
    for ex in explainers:
        try:
            ex.warm()
        except Exception:  # e.g. an ONNX-only folder (no checkpoint): the page says so when a method needs it
            log.info("explainer warm-up of %s skipped", ex.spec.model_dir, exc_info=True)


@st.cache_resource(max_entries=4)
def _warm_up(_cascade: Cascade, token: str) -> threading.Thread:
    explainers = [_stage_explainer(_cascade, token, stage) for stage in (1, 2)]
    # not a daemon: a thread killed inside torch at exit aborts the process ("terminate called…")
    thread = threading.Thread(target=_warm, args=(explainers,), name="explainer-warm-up")
    thread.start()
    return thread


def warm_up_explainers(ctx: AppContext) -> None:
    """Load torch, pytorch-grad-cam and both stages' PyTorch models in the background, once per cascade and process.

    Started after the first page is drawn, so it does not delay it, and done by the time a user asks the Grad-CAM
    page for a pytorch-grad-cam method (about 5 s of imports on a 2-core CPU, which would otherwise be that first
    request's wait).
    """
    if ctx.cascade is not None:
        _warm_up(ctx.cascade, ctx.cascade_token)


@st.cache_data(max_entries=128, show_spinner=False)
def _cams(
    _cascade: Cascade, token: str, stage: int, image_token: str, _image: np.ndarray, method: str, classes: tuple
) -> CamMaps:
    cams = _stage_explainer(_cascade, token, stage).maps(_image, method, classes)
    # the probabilities as the cascade uses them (calibration); the maps themselves are the models' own
    return replace(cams, probs=_cascade.calibrate(stage, cams.probs[None])[0])


def stage_cams(ctx: AppContext, stage: int, image_token: str, image: np.ndarray, method: str, classes) -> CamMaps:
    """One stage's maps of ``method`` for ``classes`` on one image (R×R), computed once per image, models and method;
    the page only re-blends them when opacity or colours change."""
    key = tuple(sorted(int(c) for c in classes))
    return _cams(ctx.need_cascade(), ctx.cascade_token, stage, image_token, image, method, key)


@st.cache_data(max_entries=256, show_spinner=False)
def _faithfulness(
    _cascade: Cascade, token: str, stage: int, image_token: str, _image: np.ndarray, method: str, cls: int, _cam
) -> float:
    return _stage_explainer(_cascade, token, stage).faithfulness(_image, _cam, cls)


def faithfulness_score(
    ctx: AppContext, stage: int, image_token: str, image: np.ndarray, method: str, cls: int, cam: np.ndarray
) -> float:
    """``cascade.explain.removal_scores`` of ``cam`` (that stage's map of ``method`` for ``cls``), cached."""
    return _faithfulness(ctx.need_cascade(), ctx.cascade_token, stage, image_token, image, method, int(cls), cam)


@st.cache_data(max_entries=256, show_spinner=False)
def _random_baseline(_cascade: Cascade, token: str, stage: int, image_token: str, _image: np.ndarray) -> RandomBaseline:
    return _stage_explainer(_cascade, token, stage).random_baseline(_image)


def random_baseline(ctx: AppContext, stage: int, image_token: str, image: np.ndarray) -> RandomBaseline:
    """What random maps score on this image, per class (the same for every method), cached."""
    return _random_baseline(ctx.need_cascade(), ctx.cascade_token, stage, image_token, image)
