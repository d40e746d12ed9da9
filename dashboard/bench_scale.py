"""``python -m dashboard.bench_scale``: the dataset-scale targets, measured on a generated 100,000-image dataset.

1. ``python -m engines precompute`` (Ray, this machine) runs at ≥ 0.8× the throughput of ``predict``'s loop, both on
   the same subset (2,000 images by default), same backend and batch size, stage 2 on every image.
2. Indexing the dataset's 100,000 files takes ≤ 5 s.
3. A gate sweep (101 thresholds) over 100,000 predictions takes ≤ 50 ms.
4. One Dataset page (the browse table over 100,000 rows, filtered, and its 24 thumbnails, cold) takes ≤ 1 s.
5. A dashboard-like process (the models open, the 100,000-row table loaded and matched to the dataset, a sweep, the
   browse table, a page of thumbnails) peaks at ≤ 1.5 GB resident memory.

The dataset is made once under the temp folder and reused: a few hundred phantoms are rendered by
``sample_images.generate`` at 64 px, and the 100,000 files are copies of them, each with its own small deterministic
perturbation (a brightness offset and a pixel noise field), so no two files are the same bytes. Running precompute on
all 100,000 images would take far longer than the rest on a small machine, so the 100,000-row table of checks 3-5 is
built from the subset's real predictions, repeated per class over the other files (with their real file identities);
what those checks measure is the table's size and shape, not its numbers. It lives in the dashboard package because
it times the dashboard's own thumbnail and browse functions; it imports the engines below it, never the other way.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from cascade.cli import CliParser, positive_int, run_cli
from cascade.config import DEFAULT_CONFIG, load_config
from cascade.dataset import index_dataset
from cascade.errors import CascadeError
from cascade.predtable import PredictionTable, file_identity, read_table, split_predictions, write_table
from cascade.sweep import DEFAULT_THRESHOLDS, sweep

ROOT = Path(__file__).resolve().parent.parent
RATIO_TARGET = 0.8
INDEX_TARGET_S = 5.0
SWEEP_TARGET_MS = 50.0
PAGE_TARGET_S = 1.0
MEMORY_TARGET_GB = 1.5
PER_FOLDER = 1000
_DONE = "complete.json"
PAGE_SIZE = 24  # views/dataset.py's PER_PAGE (a page script: importing it would run the page)


def _verdict(ok: bool) -> str:
    return "meets the target" if ok else "MISSES the target"


def make_dataset(root: Path, count: int, size: int = 64, bases_per_class: int = 100, seed: int = 0) -> Path:
    """``count`` phantom PNGs in ``root/<class>/<nnn>/``: rendered bases and perturbed copies; made once, reused."""
    from sample_images.generate import CLASSES, render_item

    params = {"count": count, "size": size, "bases_per_class": bases_per_class, "seed": seed}
    done = root / _DONE
    if done.is_file() and json.loads(done.read_text()) == params:
        return root
    start = time.perf_counter()
    bases = [[render_item(seed, c, i, size)[0] for i in range(bases_per_class)] for c in range(len(CLASSES))]
    rng = np.random.default_rng(seed)
    noise = rng.integers(-2, 3, (64, size, size), dtype=np.int16)  # a pool of fields, picked per copy
    for k in range(count):
        c = k % len(CLASSES)
        j = k // len(CLASSES)
        base = bases[c][j % bases_per_class].astype(np.int16)
        image = np.clip(base + noise[k % len(noise)] + (j // bases_per_class) % 7 - 3, 0, 255).astype(np.uint8)
        folder = root / CLASSES[c] / f"{j // PER_FOLDER:03d}"
        if j % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        ok, png = cv2.imencode(".png", image)
        (folder / f"{CLASSES[c]}_{j:06d}.png").write_bytes(png.tobytes())
    done.write_text(json.dumps(params))
    print(f"generated {count} files in {time.perf_counter() - start:.0f} s under {root}", file=sys.stderr)
    return root


def make_subset(root: Path, subset: Path, count: int) -> Path:
    """The first ``count`` files, classes in turn, hard-linked into an ImageFolder tree of their own."""
    if (subset / _DONE).is_file() and json.loads((subset / _DONE).read_text()) == {"count": count}:
        return subset
    by_class = {}
    for it in index_dataset(root).items:
        by_class.setdefault(it.label, []).append(it)
    chosen = [it for group in zip(*by_class.values(), strict=False) for it in group][:count]
    for it in chosen:
        target = subset / it.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(it.path, target)
    (subset / _DONE).write_text(json.dumps({"count": count}))
    return subset


def time_predict(subset: Path, config: str, backend: str, batch_size: int) -> tuple[float, float, int]:
    """``predict``'s loop (``iter_predictions`` over read_image, stage 2 always): (open seconds, loop seconds, n)."""
    from cascade.dataset import iter_image_files
    from cascade.images import read_image
    from cascade.predcache import iter_predictions
    from engines.select import open_cascade

    files = list(iter_image_files([subset]))
    start = time.perf_counter()
    cascade = open_cascade(config, backend)
    opened = time.perf_counter()
    for _ in iter_predictions(cascade, files, read_image, batch_size, stage2_always=True):
        pass
    return opened - start, time.perf_counter() - opened, len(files)


def time_precompute(subset: Path, out: Path, config: str, backend: str, batch_size: int, workers: int):
    from engines.precompute import parts_dir, precompute

    out.unlink(missing_ok=True)  # measure a full run, not a resumed one
    for part in parts_dir(out).glob("*.parquet"):
        part.unlink()
    return precompute(subset, out, config, backend, num_workers=workers, batch_size=batch_size, progress=False)


def scale_table(subset_table: PredictionTable, index) -> PredictionTable:
    """A row for every file of ``index``: the subset's predictions of the same class, repeated; real identities."""
    ok = subset_table.status == "ok"
    pools = {c: np.flatnonzero(ok & (subset_table.label == c)) for c in set(subset_table.label[ok])}
    items = index.items
    rows = np.empty(len(items), dtype=np.int64)
    seen: dict[str, int] = {}
    for i, it in enumerate(items):
        pool = pools[it.label]
        rows[i] = pool[seen.get(it.label, 0) % len(pool)]
        seen[it.label] = seen.get(it.label, 0) + 1
    big = subset_table.take(rows)
    ident = np.array([file_identity(it.path) for it in items], dtype=np.int64)
    fields = {**big.__dict__, "rel": np.array([it.rel for it in items], dtype=object)}
    fields.update(size=ident[:, 0], mtime_ns=ident[:, 1], inode=ident[:, 2])
    return PredictionTable(**fields)


def probe(table_path: str, data: str, config: str, backend: str) -> dict:
    """What the dashboard process does with a 100,000-row table, timed; run in a subprocess for its memory."""
    import warnings

    warnings.filterwarnings("ignore")  # st.cache_* outside `streamlit run` warns on every call
    import logging

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    from cascade.predtable import models_identity
    from dashboard.caches import thumbnail
    from dashboard.components.browse import Filters, apply_filters, browse_table
    from engines.select import open_cascade

    out: dict[str, float] = {}
    cascade = open_cascade(config, backend)  # the dashboard holds its models too
    out["rss_models_mb"] = _rss_mb()
    with Clock() as c:
        index = index_dataset(data)
    out["index_s"], out["index_cpu"] = c.wall, c.cpu
    with Clock() as c:
        table = read_table(table_path)
    out["read_table_s"] = c.wall
    split = index.splits[0]
    with Clock() as c:
        preds = split_predictions(table, index.select(split), split, models_identity(cascade.spec1, cascade.spec2))
    out["match_s"] = c.wall
    out["rows"] = len(preds)
    sweep(preds.p1, preds.p2, preds.labels, cascade.normal_index, DEFAULT_THRESHOLDS)
    with Clock() as c:
        table = browse_table(index.select(split), preds, cascade.normal_index, 0.6, 0.5, "p_normal")
        df = apply_filters(table, Filters())
    out["browse_s"], out["browse_cpu"] = c.wall, c.cpu
    by_rel = {it.rel: it for it in index.items}
    with Clock() as c:
        for rel in df["rel"].iloc[:PAGE_SIZE]:
            thumbnail(by_rel[rel])
    out["thumbs_s"], out["thumbs_cpu"] = c.wall, c.cpu
    out["rss_end_mb"] = _rss_mb()
    out["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


class Clock:
    """Wall time and this process's CPU time of a block: on cores other jobs share, the CPU time is what the work
    itself costs (close to the wall time on an idle machine), the wall time what it took while sharing."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def _rss_mb() -> float:
    """Resident memory now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _sweep_ms(preds, normal_index: int, repeats: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of one sweep."""
    walls, cpus = [], []
    for _ in range(repeats):
        with Clock() as c:
            sweep(preds.p1, preds.p2, preds.labels, normal_index, DEFAULT_THRESHOLDS)
        walls.append(c.wall)
        cpus.append(c.cpu)
    return 1000 * statistics.median(walls), 1000 * statistics.median(cpus)


def run(args: argparse.Namespace) -> int:
    base = Path(args.root or Path(tempfile.gettempdir()) / "knee-cascade-scale")
    data = make_dataset(base / f"n{args.images}-s{args.size}", args.images, args.size)
    subset = make_subset(data, base / f"subset-n{args.images}-s{args.size}-{args.subset}", args.subset)
    config = str(args.config)
    cores = len(os.sched_getaffinity(0))
    print(f"# dataset-scale benchmark: {args.images} files of {args.size} px, {cores} CPU(s) usable", flush=True)
    print(f"  load now (1-min average): {os.getloadavg()[0]:.1f} — other processes share these cores", flush=True)

    if args.skip_throughput:
        if not (base / "subset.parquet").is_file():
            raise CascadeError("--skip-throughput needs the subset table of an earlier full run")
        print("1. skipped (--skip-throughput): the subset table of an earlier run is reused")
    else:
        _throughput(args, subset, base, config)
    _scale_checks(args, data, base, config)
    return 0


def _throughput(args: argparse.Namespace, subset: Path, base: Path, config: str) -> None:
    """Check 1: precompute against predict's loop on the subset."""
    result = time_precompute(subset, base / "subset.parquet", config, args.backend, args.batch_size, args.num_workers)
    opened, loop, n = time_predict(subset, config, args.backend, args.batch_size)
    predict_rate = n / loop
    steady = result.computed / result.pipeline_seconds
    whole = result.computed / result.seconds
    ratio = steady / predict_rate
    print(f"1. on {n} images ({args.backend}, batch {args.batch_size}, stage 2 always):")
    print(f"   predict loop          {predict_rate:7.1f} img/s  ({loop:.1f} s; opening the models {opened:.1f} s more)")
    print(
        f"   precompute, running   {steady:7.1f} img/s  ({args.num_workers} actor(s); "
        f"{result.pipeline_seconds:.1f} s from the first actor ready to the last row)"
    )
    print(f"   precompute, all in    {whole:7.1f} img/s  ({result.seconds:.1f} s with Ray's start and the actors')")
    print(f"   ratio {ratio:.2f} (target ≥ {RATIO_TARGET}): {_verdict(ratio >= RATIO_TARGET)}")


def _scale_checks(args: argparse.Namespace, data: Path, base: Path, config: str) -> None:
    """Checks 2-5 on the whole dataset."""
    with Clock() as c:
        index = index_dataset(data)
    print(
        f"2. index of {len(index.items)} files: {c.wall:.2f} s wall, {c.cpu:.2f} s CPU (target ≤ {INDEX_TARGET_S} s): "
        f"{_verdict(c.wall <= INDEX_TARGET_S)} (wall), {_verdict(c.cpu <= INDEX_TARGET_S)} (CPU)"
    )

    # 3. sweep over the 100,000-row table
    big_path = base / f"table-n{args.images}-s{args.size}.parquet"
    write_table(scale_table(read_table(base / "subset.parquet"), index), big_path)
    table = read_table(big_path)
    from cascade.predtable import models_identity
    from engines.onnx_file import folder_spec

    cfg = load_config(config)
    models = models_identity(folder_spec(cfg.stage1_dir), folder_spec(cfg.stage2_dir))
    split = index.splits[0]
    preds = split_predictions(table, index.select(split), split, models)
    normal = [c.lower() for c in preds.classes].index(cfg.normal_label.lower())
    ms, cpu_ms = _sweep_ms(preds, normal, args.repeats)
    print(
        f"3. gate sweep over {len(preds)} predictions, 101 thresholds, median of {args.repeats}: {ms:.1f} ms wall, "
        f"{cpu_ms:.1f} ms CPU (target ≤ {SWEEP_TARGET_MS:.0f} ms): {_verdict(ms <= SWEEP_TARGET_MS)} (wall), "
        f"{_verdict(cpu_ms <= SWEEP_TARGET_MS)} (CPU)"
    )

    # 4-5. a dashboard-like process
    code = [sys.executable, "-m", "dashboard.bench_scale", "--probe", str(big_path), "--root", str(data)]
    code += ["--config", config, "--backend", args.backend]
    done = subprocess.run(code, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise CascadeError(f"the dashboard-like process failed:\n{done.stderr[-2000:]}")
    p = json.loads(done.stdout.strip().splitlines()[-1])
    page, page_cpu = p["browse_s"] + p["thumbs_s"], p["browse_cpu"] + p["thumbs_cpu"]
    print(
        f"4. a Dataset page over {p['rows']:.0f} rows: {page:.2f} s wall, {page_cpu:.2f} s CPU (browse table + "
        f"filters {p['browse_s']:.2f} s, {PAGE_SIZE} thumbnails cold {p['thumbs_s']:.2f} s; target ≤ {PAGE_TARGET_S} "
        f"s): {_verdict(page <= PAGE_TARGET_S)} (wall), {_verdict(page_cpu <= PAGE_TARGET_S)} (CPU)"
    )
    gb = p["rss_peak_mb"] / 1024
    print(
        f"5. dashboard-like process peak RSS {gb:.2f} GB with the models and {p['rows']:.0f} predictions "
        f"(target ≤ {MEMORY_TARGET_GB} GB): {_verdict(gb <= MEMORY_TARGET_GB)}; "
        f"{p['rss_models_mb']:.0f} MB once the models were open, {p['rss_end_mb']:.0f} MB at the end"
    )
    print(
        f"   (in it: reading the table {p['read_table_s']:.2f} s, matching it to the dataset and re-checking every "
        f"file's identity {p['match_s']:.2f} s, indexing {p['index_s']:.2f} s wall / {p['index_cpu']:.2f} s CPU)"
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="python -m dashboard.bench_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=positive_int, default=100_000, help="files in the generated dataset")
    parser.add_argument("--subset", type=positive_int, default=2000, help="images for precompute vs predict")
    parser.add_argument("--size", type=positive_int, default=64, help="phantom side in pixels (≥ 64)")
    parser.add_argument("--root", default=None, help="where the dataset is made (default: the temp folder)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="cascade config (default: the demo models)")
    parser.add_argument("--backend", default="onnx", help="backend kind for both runs (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--num-workers", type=positive_int, default=1, help="precompute's model actors")
    parser.add_argument(
        "--skip-throughput", action="store_true", help="skip check 1, reusing the subset table of an earlier run"
    )
    parser.add_argument("--repeats", type=positive_int, default=20, help="sweep repetitions")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: the dashboard-like process
    parser.set_defaults(func=_main)
    return parser


def _main(args: argparse.Namespace) -> int:
    if args.probe:
        print(json.dumps(probe(args.probe, args.root, args.config, args.backend)))
        return 0
    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
