"""Everything the pages load, cached, with failures turned into messages instead of tracebacks.

Models are ``st.cache_resource`` (one copy per process, shared by sessions); images, thumbnails and per-image
predictions are ``st.cache_data`` (pure values keyed by what determines them), so a rerun for a slider move finds them
all in memory and runs no model. A part that fails (a config, a model folder, a dataset) is reported where it is
needed, with what to do about it, and the rest of the app keeps working.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import streamlit as st

from cascade.config import CascadeConfig, load_config
from cascade.dataset import DatasetIndex, Item, index_dataset
from cascade.errors import CascadeError, CheckpointError, ConfigError
from cascade.gate import GateRule
from cascade.images import read_image, read_image_bytes
from cascade.pipeline import Cascade
from cascade.predcache import Predictions, cache_key, cache_path, cached_predictions, load_predictions
from dashboard.state import ROOT, Sources, prediction_cache_dir, sources

log = logging.getLogger(__name__)
DEMO_MODELS = ROOT / "models" / "demo"
THUMB_SIZE = 160
_MEMORY_ENTRIES = 8


def _guidance(exc: Exception) -> str:
    """What the user can do about a failure, by kind."""
    if isinstance(exc, CheckpointError):
        return "Point the config at model folders that hold `model_best.pth.tar` and `labels.txt`."
    if isinstance(exc, ConfigError):
        return "Choose another path under **Models and data** in the sidebar."
    if type(exc).__name__ == "BackendError":
        return "Choose another backend under **Models and data** in the sidebar."
    return "Fix the input and try again; the rest of the app still works."


def show_error(what: str, exc: Exception) -> None:
    """One clear message for a failed part of the page, never a traceback."""
    st.error(f"**{what}**: {exc}\n\n{_guidance(exc)}", icon=":material/error:")


@contextmanager
def failing_part(what: str, stop: bool = True) -> Iterator[None]:
    """Show an expected failure inside the block as a message; ``stop`` ends the page there."""
    try:
        yield
    except CascadeError as exc:
        show_error(what, exc)
        if stop:
            st.stop()


def _stamp(path: Path) -> str:
    try:
        info = path.stat()
    except OSError:
        return "missing"
    return f"{info.st_mtime_ns}:{info.st_size}"


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
    """Identity of a loaded cascade: its folders, backend kind and the checkpoints' timestamps and sizes.

    ONNX files are left out: the backends derive them from the checkpoint (re-exporting stale ones on load), and the
    first load may write them. A file swapped by hand is picked up with the sidebar's reload button.
    """
    parts = [str(cfg.stage1_dir), str(cfg.stage2_dir), cfg.normal_label, backend]
    for folder in (cfg.stage1_dir, cfg.stage2_dir):
        parts += [_stamp(folder / name) for name in ("model_best.pth.tar", "labels.txt")]
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


def open_index_cached(root: str) -> DatasetIndex:
    """The dataset's index, rebuilt when any folder in it changed (re-checked on every run: one stat per folder)."""
    path = Path(root).expanduser()
    return _index(str(path), _tree_stamp(path))


@st.cache_resource
def machine_summary() -> str:
    """CPU and GPU in one line, as ``engines.hardware`` sees them (what the backend choice was based on)."""
    from engines.hardware import cpu_model, detect_gpu, physical_cores

    gpu = detect_gpu()
    where = "no CUDA GPU" if gpu is None else f"GPU {gpu.name} (compute capability {gpu.sm})"
    return f"{cpu_model()}, {physical_cores()} physical core(s); {where}"


def is_demo(cfg: CascadeConfig) -> bool:
    """True when a stage is one of the synthetic demo models shipped in ``models/demo``."""
    demo = DEMO_MODELS.resolve()
    return any(d.resolve() == demo or demo in d.resolve().parents for d in (cfg.stage1_dir, cfg.stage2_dir))


@dataclass
class AppContext:
    """What this run has open, or why not: pages ask for the part they need and stop with a message if it failed."""

    sources: Sources
    config: CascadeConfig | None = None
    cascade: Cascade | None = None
    index: DatasetIndex | None = None
    errors: dict[str, tuple[str, Exception]] = field(default_factory=dict)
    cascade_token: str = ""

    def need_config(self) -> CascadeConfig:
        return self._need("config", self.config)

    def need_cascade(self) -> Cascade:
        return self._need("cascade", self.cascade)

    def need_index(self) -> DatasetIndex:
        return self._need("index", self.index)

    def _need(self, part: str, value):
        if value is None:
            what, exc = self.errors.get(part) or self.errors.get(
                "config", ("Cascade config", ConfigError("not loaded"))
            )
            show_error(what, exc)
            st.stop()
        return value

    @cached_property
    def items_by_rel(self) -> dict[str, Item]:
        """Dataset items by their path relative to the root (built once per run)."""
        return {} if self.index is None else {it.rel: it for it in self.index.items}


def build_context(src: Sources | None = None) -> AppContext:
    """Open config, cascade and dataset for this run, recording each failure instead of raising it."""
    ctx = AppContext(src or sources())
    try:
        ctx.config = load_config(ctx.sources.config_path)
    except CascadeError as exc:
        ctx.errors["config"] = ("Cascade config", exc)
    if ctx.config is not None:
        try:
            t1, t2 = ctx.config.temperatures  # per-image caches below are keyed by the token: calibration included
            ctx.cascade_token = f"{cascade_token(ctx.config, ctx.sources.backend)}|T={t1!r},{t2!r}"
            ctx.cascade = open_cascade_cached(ctx.config, ctx.sources.backend)
        except CascadeError as exc:
            ctx.errors["cascade"] = ("Models", exc)
    try:
        ctx.index = open_index_cached(ctx.sources.data_path)
    except CascadeError as exc:
        ctx.errors["index"] = ("Dataset", exc)
    return ctx


CONTEXT_KEY = "_app_context"


def app_context() -> AppContext:
    """The context built by the entry point for this run (built here when a page runs alone)."""
    ctx = st.session_state.get(CONTEXT_KEY)
    if ctx is None:
        ctx = build_context()
        st.session_state[CONTEXT_KEY] = ctx
    return ctx


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


@st.cache_data(max_entries=64, show_spinner=False)
def read_dataset_image(path: str, stamp: str) -> np.ndarray:
    return read_image(path)


def dataset_image(item: Item) -> np.ndarray:
    """A dataset image as grayscale uint8 (raises ImageReadError with the reason)."""
    return read_dataset_image(str(item.path), _stamp(item.path))


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
def _thumbnail(path: str, stamp: str, size: int) -> np.ndarray | str:
    try:
        return fit_within(read_image(path), size)
    except CascadeError as exc:
        return str(exc)


def thumbnail(item: Item, size: int = THUMB_SIZE) -> np.ndarray | str:
    """A small copy of a dataset image, or the reason it cannot be read."""
    return _thumbnail(str(item.path), _stamp(item.path), size)


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


def image_token(data: bytes | None = None, item: Item | None = None) -> str:
    """Identity of an image for caches: its bytes' hash for uploads, path and timestamp for dataset files."""
    if item is not None:
        return f"file:{item.path}:{_stamp(item.path)}"
    return "upload:" + hashlib.sha256(data or b"").hexdigest()


def predict_image(ctx: AppContext, token: str, image: np.ndarray) -> ImagePrediction:
    """Both stages on one image, once per image and cascade: re-deciding at another gate runs nothing."""
    return _predict(ctx.need_cascade(), ctx.cascade_token, token, image)


# ---------------------------------------------------------------------------------------------------------------------
# Class activation maps


@st.cache_resource(show_spinner="Preparing the explainer…", max_entries=8)
def _explainer(_cascade: Cascade, token: str, stage: int):
    """One Explainer per stage model and process: it keeps a private copy of the torch model and a lock, so CAM hooks
    never touch the model serving predictions, and two sessions' CAM work on it runs one after the other."""
    from cascade.checkpoint import load_stage
    from cascade.explain import Explainer

    backend = _cascade.backend1 if stage == 1 else _cascade.backend2
    model = getattr(backend, "model", None)
    if model is None:  # ONNX Runtime or TensorRT: the maps need the PyTorch model of the same folder
        _, model = load_stage(backend.spec.model_dir)
    return Explainer(model)


def explainer(ctx: AppContext, stage: int):
    return _explainer(ctx.need_cascade(), ctx.cascade_token, stage)


@dataclass(frozen=True)
class CamMaps:
    """Maps of one stage for some target classes, with the stage's probabilities and what actually ran."""

    maps: dict[int, np.ndarray]  # class → R×R in [0, 1]
    probs: np.ndarray  # C
    method: str
    note: str
    seconds: float
    engine: str  # who computed them: the backend's own fast CAM, or the PyTorch explainer


@st.cache_data(max_entries=128, show_spinner=False)
def _cams(
    _cascade: Cascade, token: str, stage: int, image_token: str, _image: np.ndarray, method: str, classes: tuple
) -> CamMaps:
    import time

    from cascade.explain import scale_maps
    from cascade.preprocess import preprocess_batch

    backend = _cascade.backend1 if stage == 1 else _cascade.backend2
    batch = preprocess_batch([_image], backend.spec.resolution, backend.spec.preprocess)
    if method == "fast" and backend.supports_cams:
        start = time.perf_counter()
        probs, raw = backend.predict_with_cams(batch)
        scaled = scale_maps(raw[0], backend.spec.resolution)  # all classes of the one image
        maps = {c: scaled[c].astype(np.float32) for c in classes}
        shown = _cascade.calibrate(stage, probs)[0]  # the probabilities as the cascade uses them (calibration)
        return CamMaps(maps, shown, "fast", "", time.perf_counter() - start, backend.name)
    results = _explainer(_cascade, token, stage).explain_targets(batch, method, list(classes))
    first = next(iter(results.values()))
    maps = {c: r.maps[0] for c, r in results.items()}
    shown = _cascade.calibrate(stage, first.probs)[0]
    return CamMaps(maps, shown, first.method, first.note, first.seconds, "PyTorch")


def stage_cams(ctx: AppContext, stage: int, image_token: str, image: np.ndarray, method: str, classes) -> CamMaps:
    """One stage's maps of ``method`` for ``classes`` on one image, computed once per image and method."""
    key = tuple(sorted(int(c) for c in classes))
    return _cams(ctx.need_cascade(), ctx.cascade_token, stage, image_token, image, method, key)


@st.cache_data(max_entries=256, show_spinner=False)
def _faithfulness(
    _cascade: Cascade,
    token: str,
    stage: int,
    image_token: str,
    _image: np.ndarray,
    method: str,
    cls: int,
    metric: str,
    _cam: np.ndarray,
) -> float:
    from cascade.explain import faithfulness
    from cascade.preprocess import preprocess_batch

    backend = _cascade.backend1 if stage == 1 else _cascade.backend2
    batch = preprocess_batch([_image], backend.spec.resolution, backend.spec.preprocess)
    model = _explainer(_cascade, token, stage).model
    return float(faithfulness(model, batch, _cam[None], np.array([cls]), metric)[0])


def faithfulness_score(
    ctx: AppContext,
    stage: int,
    image_token: str,
    image: np.ndarray,
    method: str,
    cls: int,
    metric: str,
    cam: np.ndarray,
) -> float:
    """How well ``cam`` (that stage's map of ``method`` for class ``cls``) explains the class's probability.

    pytorch-grad-cam's metrics (``cascade.explain.faithfulness``), higher is more faithful; cached per image, method,
    class and metric.
    """
    cascade = ctx.need_cascade()
    return _faithfulness(cascade, ctx.cascade_token, stage, image_token, image, method, int(cls), metric, cam)
