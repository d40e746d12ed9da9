"""``python -m engines precompute DATA --out PREDICTIONS``: both stages on every image of a dataset, on Ray Data.

The dataset is listed on the driver (``cascade.dataset``), each file's identity taken there *before* it is read (so a
file that changes during the run is seen as changed afterwards). Ray Data then decodes and preprocesses the images in
parallel tasks (``map_batches``) and runs both stages, stage 2 always, in a pool of actors, each holding one backend
per stage for its whole life (ONNX Runtime on CPU actors; TensorRT where an actor has a GPU, as ``engines.select``
chooses). Rows stream back to the driver, which writes them as Parquet part files beside the output as they come; at
the end the parts are merged into one table (``cascade.predtable``) and removed.

Resumable: a rerun keeps every row of the output or of leftover parts (a killed run's) whose file is unchanged (size,
mtime_ns, inode) and whose models are the same (checkpoint hashes), and computes only the rest; rows that failed
because of the run, not the file, are computed again. Without ``--ray-address`` Ray starts on this machine.

Ray is optional (``requirements-scale.txt``): it is imported by this command only.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade.checkpoint import StageSpec
from cascade.config import load_config
from cascade.dataset import index_dataset
from cascade.errors import CascadeError, ConfigError
from cascade.fileio import check_output_path
from cascade.images import is_image_file, read_image
from cascade.predcache import failure_reason
from cascade.predtable import (
    STATUS_FAILED,
    STATUS_OK,
    STATUS_UNREADABLE,
    PredictionTable,
    PredictionTableError,
    file_identity,
    models_identity,
    read_table,
    write_table,
)
from cascade.preprocess import preprocess_batch
from engines.onnx_file import folder_spec

PARTS_SUFFIX = ".parts"
FLUSH_ROWS = 2048  # a part file at least every this many rows ...
FLUSH_SECONDS = 30.0  # ... or this often: what a killed run can lose at most
DEFAULT_OBJECT_STORE_MB = 1024
_RAY_MISSING = "precompute needs Ray, an optional dependency: pip install -r requirements-scale.txt"


@dataclass(frozen=True)
class FileRow:
    """One file to predict, as listed and stat'ed on the driver."""

    path: str
    rel: str
    label: str | None  # its class folder; None outside an ImageFolder layout
    size: int = -1
    mtime_ns: int = -1
    inode: int = -1
    error: str = ""  # why it could not even be stat'ed


@dataclass(frozen=True)
class PrecomputeResult:
    out: Path
    total: int  # rows in the table written
    reused: int  # rows kept from an earlier (possibly killed) run
    computed: int  # rows computed by this run
    failed: int  # rows of the table with an error
    seconds: float  # the whole command
    pipeline_seconds: float  # from the first model actor ready to the last row (Ray's and the actors' start excluded)


def list_files(data: str | os.PathLike) -> tuple[Path, list[FileRow]]:
    """The dataset's files with their identity: an ImageFolder tree, or else any folder of images (no labels)."""
    try:
        index = index_dataset(data)
        root = index.root
        listed = [(it.path, it.rel, it.label, it.error) for it in index.items]
    except ConfigError:
        root = Path(data).expanduser().resolve()
        if not root.is_dir():
            raise
        listed = [
            (p, p.relative_to(root).as_posix(), None, "")
            for p in sorted(root.rglob("*"))
            if is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ]
        if not listed:
            raise
    rows = []
    for path, rel, label, error in listed:
        if error:  # the index refused it (a FIFO, a broken symlink, a link out of the root): never opened
            rows.append(FileRow(str(path), rel, label, error=error))
            continue
        try:
            size, mtime_ns, inode = file_identity(path)
            rows.append(FileRow(str(path), rel, label, size, mtime_ns, inode))
        except OSError as exc:
            rows.append(FileRow(str(path), rel, label, error=f"'{rel}' cannot be read: {exc.strerror or exc}"))
    return root, rows


def parts_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + PARTS_SUFFIX)


def _previous_rows(out: Path, models: str) -> PredictionTable | None:
    """Rows of earlier runs for these models: the output and leftover parts, later ones winning."""
    tables = []
    if out.exists():
        try:
            tables.append(read_table(out))
        except PredictionTableError as exc:
            raise CascadeError(
                f"--out '{out}' exists and is not a readable prediction table ({exc}); delete it or choose another path"
            ) from exc
    parts = sorted(parts_dir(out).glob("part-*.parquet")) if parts_dir(out).is_dir() else []
    for part in parts:
        try:
            tables.append(read_table(part))
        except PredictionTableError as exc:
            print(f"warning: ignoring {part.name}: {exc}", file=sys.stderr)
    tables = [t for t in tables if t.models == models]
    if not tables:
        return None
    joined = PredictionTable.concat(tables)
    # The last occurrence of a path is the newest: reverse, keep the first, restore the order.
    _, first = np.unique(joined.rel[::-1], return_index=True)
    return joined.take(np.sort(len(joined) - 1 - first))


def _reusable(previous: PredictionTable | None, files: Sequence[FileRow]) -> tuple[PredictionTable | None, list[int]]:
    """Previous rows that still hold (same file identity, not a run failure), and the files left to compute."""
    if previous is None:
        return None, list(range(len(files)))
    by_rel = {r: i for i, r in enumerate(previous.rel)}
    keep, todo = [], []
    for i, f in enumerate(files):
        row = by_rel.get(f.rel)
        same = row is not None and (
            int(previous.size[row]),
            int(previous.mtime_ns[row]),
            int(previous.inode[row]),
        ) == (f.size, f.mtime_ns, f.inode)
        if f.error:  # refused without being opened: still the same refusal?
            same = row is not None and previous.status[row] == STATUS_UNREADABLE and previous.error[row] == f.error
        if same and previous.status[row] in (STATUS_OK, STATUS_UNREADABLE):
            keep.append(row)
        else:
            todo.append(i)
    return previous.take(np.asarray(keep, dtype=np.int64)), todo


def _rows_table(batch: dict[str, np.ndarray], classes: Sequence[str], models: str) -> PredictionTable:
    """A table from one batch of the pipeline's output columns."""
    labels = np.array([None if lab in (None, "") else str(lab) for lab in batch["label"]], dtype=object)
    return PredictionTable(
        tuple(classes),
        models,
        rel=np.asarray(batch["rel"], dtype=object),
        label=labels,
        size=np.asarray(batch["size"], dtype=np.int64),
        mtime_ns=np.asarray(batch["mtime_ns"], dtype=np.int64),
        inode=np.asarray(batch["inode"], dtype=np.int64),
        p1=np.asarray(batch["p1"], dtype=np.float32).reshape(-1, len(classes)),
        p2=np.asarray(batch["p2"], dtype=np.float32).reshape(-1, len(classes)),
        status=np.asarray(batch["status"], dtype=object),
        error=np.asarray(batch["error"], dtype=object),
        backend=np.asarray(batch["backend"], dtype=object),
    )


def _unstat_rows(files: Sequence[FileRow], classes: Sequence[str], models: str) -> PredictionTable:
    """Rows for files that could not even be stat'ed (a broken symlink, a file removed while listing)."""
    n, c = len(files), len(classes)
    return _rows_table(
        {
            "rel": [f.rel for f in files],
            "label": [f.label for f in files],
            "size": [f.size for f in files],
            "mtime_ns": [f.mtime_ns for f in files],
            "inode": [f.inode for f in files],
            "p1": np.full((n, c), np.nan, np.float32),
            "p2": np.full((n, c), np.nan, np.float32),
            "status": [STATUS_UNREADABLE] * n,
            "error": [f.error for f in files],
            "backend": [""] * n,
        },
        classes,
        models,
    )


# ---------------------------------------------------------------------------------------------------------------------
# What runs on the Ray workers


def _input_column(spec: StageSpec) -> str:
    """The batch column holding a stage's input: stages with the same preprocessing share one."""
    return _column(spec.resolution, spec.preprocess)


def _column(resolution: int, mode: str) -> str:
    return f"x{resolution}_{mode}"


def decode_batch(batch: dict[str, np.ndarray], inputs: Sequence[tuple[int, str]], root: str) -> dict[str, np.ndarray]:
    """Ray task: read and preprocess a batch of files; an unreadable file gets its error and a blank input.

    ``inputs``: the stages' (resolution, preprocess mode); each distinct one is a column of model inputs. Each file is
    confined to the dataset root at read time (a file swapped for a symlink out of it is refused).
    """
    images, status, errors = [], [], []
    for path in batch["path"]:
        try:
            images.append(read_image(path, root=root))
            status.append(STATUS_OK)
            errors.append("")
        except Exception as exc:  # any failure of one file fails that file only
            images.append(None)
            status.append(STATUS_UNREADABLE)
            errors.append(failure_reason(exc))
    out = {k: v for k, v in batch.items() if k != "path"}
    ok = [im for im in images if im is not None]
    for r, mode in sorted(set(map(tuple, inputs))):
        x = np.zeros((len(images), 3, r, r), np.float32)
        x[[i for i, im in enumerate(images) if im is not None]] = preprocess_batch(ok, r, mode)
        out[_column(r, mode)] = x
    out["status"] = np.array(status, dtype=object)
    out["error"] = np.array(errors, dtype=object)
    return out


class CascadeWorker:
    """Ray actor: both stages' backends, opened once, run on every readable image of each batch."""

    def __init__(self, stage_dirs: tuple[str, str], kind: str, threads: int | None) -> None:
        from engines.select import make_backend

        self.backends = [self._with_threads(make_backend(d, kind)[0], threads) for d in stage_dirs]
        self.name = "/".join(b.name for b in self.backends)
        self.ready = time.time()  # wall clock: the driver times the run from the first actor ready to the last row

    @staticmethod
    def _with_threads(backend, threads: int | None):
        """ONNX Runtime with this actor's share of the cores, not all of them (several actors share a machine)."""
        from engines.ort_backend import OnnxRuntimeBackend

        if threads and isinstance(backend, OnnxRuntimeBackend) and backend.threads != threads:
            return OnnxRuntimeBackend(backend.spec, backend.info, threads=threads)
        return backend

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        status = np.array(batch["status"], dtype=object)
        error = np.array(batch["error"], dtype=object)
        ok = status == STATUS_OK
        c = len(self.backends[0].spec.classes)
        probs = [np.full((len(status), c), np.nan, np.float32) for _ in self.backends]
        if ok.any():
            try:
                for p, backend in zip(probs, self.backends, strict=True):
                    p[ok] = backend.predict(batch[_input_column(backend.spec)][ok])
            except Exception as exc:  # a model failure fails the batch's rows, marked for a retry; the run goes on
                for p in probs:
                    p[ok] = np.nan
                status[ok] = STATUS_FAILED
                error[ok] = f"model failed: {failure_reason(exc)}"
        out = {k: v for k, v in batch.items() if not k.startswith("x")}
        out.update(p1=probs[0], p2=probs[1], status=status, error=error)
        out["backend"] = np.array([self.name if s != STATUS_UNREADABLE else "" for s in status], dtype=object)
        out["ready"] = np.full(len(status), self.ready)
        return out


# ---------------------------------------------------------------------------------------------------------------------
# The driver


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise CascadeError(f"{_RAY_MISSING} ({exc})") from exc
    return ray


def start_ray(address: str | None, num_cpus: int | None, object_store_mb: int) -> bool:
    """Connect to a cluster at ``address``, or start Ray on this machine; False when Ray was already running."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    import logging

    here = Path(__file__).resolve().parent.parent
    if address:
        # The cluster's workers get this project's code from the driver; the packages must be installed there.
        env = {"py_modules": [str(here / "cascade"), str(here / "engines")]}
        ray.init(address=address, runtime_env=env, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=object_store_mb * 1024 * 1024,
            logging_level=logging.WARNING,
        )
    return True


@dataclass(frozen=True)
class _Job:
    """What a run computes with, and where."""

    root: Path  # the dataset folder: reads are confined to it
    out: Path
    stage_dirs: tuple[str, str]
    specs: tuple[StageSpec, StageSpec]
    kind: str  # backend kind
    address: str | None
    num_workers: int
    batch_size: int
    object_store_mb: int
    progress: bool


def _pipeline(
    files: Sequence[FileRow], job: _Job, threads: int | None, gpus_per_worker: float
) -> Iterator[dict[str, np.ndarray]]:
    """The Ray Data pipeline over ``files``; yields the output blocks as they finish."""
    ray = _import_ray()
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-run INFO lines; our progress bar says enough
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = [
        {"path": f.path, "rel": f.rel, "label": f.label or "", "size": f.size, "mtime_ns": f.mtime_ns, "inode": f.inode}
        for f in files
    ]
    batch_size, num_workers = job.batch_size, job.num_workers
    blocks = max(1, min(math.ceil(len(items) / batch_size), 4 * num_workers + 8))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    # Decoding is light: half a CPU per task keeps it from being fused into the actors (different resources), so it
    # runs in parallel tasks while the actors infer.
    ds = ds.map_batches(
        decode_batch,
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=0.5,
        fn_kwargs={"inputs": [(s.resolution, s.preprocess) for s in job.specs], "root": str(job.root)},
    )
    ds = ds.map_batches(
        CascadeWorker,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=1,
        num_gpus=gpus_per_worker,
        fn_constructor_kwargs={"stage_dirs": job.stage_dirs, "kind": job.kind, "threads": threads},
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def _gpus_per_worker(num_workers: int, kind: str) -> float:
    """A GPU share for each actor where the cluster has GPUs (TensorRT or ONNX Runtime CUDA run there), else 0."""
    if kind in ("onnx", "torch") and os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return 0.0
    ray = _import_ray()
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if gpus <= 0:
        return 0.0
    return 1.0 if gpus >= num_workers else gpus / num_workers


def precompute(
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: str | os.PathLike | None = None,
    backend: str = "auto",
    ray_address: str | None = None,
    num_workers: int = 1,
    batch_size: int = 32,
    object_store_mb: int = DEFAULT_OBJECT_STORE_MB,
    progress: bool = True,
) -> PrecomputeResult:
    """Predict every file of ``data`` with both stages and write the table to ``out`` (resuming earlier runs)."""
    start = time.perf_counter()
    out = check_output_path(out, "the Parquet file (e.g. predictions.parquet)")
    cfg = load_config(config)
    specs = (folder_spec(cfg.stage1_dir), folder_spec(cfg.stage2_dir))
    classes = specs[0].classes
    if [c.lower() for c in classes] != [c.lower() for c in specs[1].classes]:
        raise ConfigError(f"the stages disagree on classes: {list(classes)} vs {list(specs[1].classes)}")
    models = models_identity(*specs)
    root, files = list_files(data)
    kept, todo_idx = _reusable(_previous_rows(out, models), files)
    unstat = [files[i] for i in todo_idx if files[i].error]
    todo = [files[i] for i in todo_idx if not files[i].error]
    reused = 0 if kept is None else len(kept)
    print(f"{len(files)} files under {root}: {reused} done before, {len(todo)} to compute", file=sys.stderr)
    new: list[PredictionTable] = [_unstat_rows(unstat, classes, models)]
    pipeline_seconds = 0.0
    if todo:
        stage_dirs = (str(cfg.stage1_dir), str(cfg.stage2_dir))
        job = _Job(
            root, out, stage_dirs, specs, backend, ray_address, num_workers, batch_size, object_store_mb, progress
        )
        parts, pipeline_seconds = _compute(todo, job)
        new += parts
    tables = ([kept] if kept is not None else []) + new
    table = PredictionTable.concat(tables) if tables else PredictionTable.empty(classes, models)
    table = table.take(np.argsort(table.rel.astype(str), kind="stable"))
    write_table(table, out)
    _remove_parts(out)
    failed = int((table.status != STATUS_OK).sum())
    computed = len(table) - reused
    return PrecomputeResult(out, len(table), reused, computed, failed, time.perf_counter() - start, pipeline_seconds)


def _compute(todo: Sequence[FileRow], job: _Job) -> tuple[list[PredictionTable], float]:
    """Run the pipeline over ``todo``, writing part files as rows arrive: the new rows and the pipeline's seconds."""
    from tqdm import tqdm

    if job.kind != "torch":  # export stale or missing ONNX files once here, so the workers never race to write them
        from engines.export import ensure_onnx

        for spec in job.specs:
            ensure_onnx(spec)
    local_cpus = None if job.address else max(1, len(os.sched_getaffinity(0)))
    started = start_ray(job.address, local_cpus, job.object_store_mb)
    classes, models = job.specs[0].classes, models_identity(*job.specs)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    tables: list[PredictionTable] = []
    buffer: list[PredictionTable] = []
    last_flush, first_ready = time.monotonic(), math.inf

    def flush() -> None:
        nonlocal last_flush
        if buffer:
            part = PredictionTable.concat(buffer)
            write_table(part, parts_dir(job.out) / f"part-{run_id}-{len(tables):05d}.parquet")
            tables.append(part)
            buffer.clear()
        last_flush = time.monotonic()

    threads = None if job.address else max(1, (local_cpus or 1) // job.num_workers)
    try:
        rows = _pipeline(todo, job, threads, _gpus_per_worker(job.num_workers, job.kind))
        with tqdm(total=len(todo), unit="img", disable=not job.progress) as bar:
            for batch in _ray_errors(rows):
                first_ready = min(first_ready, float(np.min(batch["ready"])))
                buffer.append(_rows_table(batch, classes, models))
                bar.update(len(batch["rel"]))
                if sum(len(t) for t in buffer) >= FLUSH_ROWS or time.monotonic() - last_flush > FLUSH_SECONDS:
                    flush()
        flush()
    finally:
        if started:
            _import_ray().shutdown()
    return tables, (time.time() - first_ready) if math.isfinite(first_ready) else 0.0


def _ray_errors(rows: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """The pipeline's blocks; a failure of Ray or of a worker's start (a model that cannot load) as one message."""
    try:
        yield from rows
    except CascadeError:
        raise
    except Exception as exc:  # Ray wraps worker errors in its own types, which share no base with ours
        cause = getattr(exc, "cause", None) or exc
        first = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise CascadeError(f"the Ray pipeline failed: {first}; rows finished so far are kept for a rerun") from exc


def _remove_parts(out: Path) -> None:
    folder = parts_dir(out)
    if folder.is_dir():
        for part in folder.glob("part-*.parquet"):
            part.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # something else lives there: leave it
            folder.rmdir()


def cmd_precompute(args) -> int:
    """``python -m engines precompute``: exit 0 when every file has its probabilities, 1 when a row has an error."""
    result = precompute(
        args.data,
        args.out,
        args.config,
        args.backend,
        args.ray_address,
        args.num_workers,
        args.batch_size,
        args.object_store_mb,
        progress=not args.quiet,
    )
    rate = f" ({result.computed / result.pipeline_seconds:.1f} img/s once running)" if result.pipeline_seconds else ""
    print(
        f"wrote {result.total} rows to {result.out}: {result.computed} computed{rate}, "
        f"{result.reused} kept from an earlier run, {result.failed} with an error; {result.seconds:.1f} s in all",
        file=sys.stderr,
    )
    return 1 if result.failed else 0
