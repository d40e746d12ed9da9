"""Train one cascade stage: ``python -m train DATA --arch resnet18 --model-dir models/my/stage1``.

DATA is an ImageFolder tree with ``train/`` and ``val/`` (``test/`` optional). Writes jetson-inference's files into
the model folder (``checkpoint.pth.tar`` every epoch, ``model_best.pth.tar`` for the best epoch by ``--select-by``,
``labels.txt``), so models trained here and with jetson-inference's train.py are interchangeable, plus
``metrics.json`` (per-epoch loss/accuracy; full metrics of the best epoch on val and test).

Laid out as torchvision's classification reference: argument parser, data and model building, ``train_one_epoch``,
``evaluate``, resume, and the final test of the best epoch. Two recipes: AdamW with a one-cycle schedule (the default,
what the demo models used) and ``--optimizer sgd``, jetson-inference's (SGD, momentum 0.9, weight decay 1e-4, the
learning rate divided by 10 every 30 epochs), whose checkpoints upstream's ``train.py --resume`` continues.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cascade.checkpoint import BEST_NAME, CHECKPOINT_NAME, LABELS_NAME, load_checkpoint, save_checkpoint, write_labels
from cascade.errors import CascadeError, CheckpointError
from cascade.fileio import write_atomic
from cascade.metrics import classification_report
from cascade.models import create_model, load_state_dict
from cascade.preprocess import PREPROCESS_MODES
from train.data import GrayImageFolder, TrainError
from train.presets import EvalPreset, TrainPreset

log = logging.getLogger("train")
SELECT_BY = ("accuracy", "macro_f1", "abnormal_sensitivity")
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.1}  # sgd: upstream train.py's default
#: jetson-inference's step decay: lr × 0.1 every 30 epochs
LR_STEP_EPOCHS, LR_STEP_GAMMA = 30, 0.1
SGD_MOMENTUM = 0.9
#: hyperparameters that only that optimizer's saved param groups carry (how a foreign optimizer state is recognised)
_OPTIMIZER_KEYS = {"adamw": ("betas", "eps"), "sgd": ("momentum", "dampening")}
RESOLUTION_RANGE = (16, 2048)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``error: …`` line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def get_args_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m train", description="Train one stage of the knee X-ray cascade.")
    p.add_argument("data", help="ImageFolder root with train/ and val/ (test/ optional)")
    p.add_argument("--arch", default="resnet18", help="torchvision architecture (default: %(default)s)")
    p.add_argument("--model-dir", required=True, help="output model folder (jetson-inference layout)")
    p.add_argument("--resolution", type=int, default=224, help="square input size (default: %(default)s)")
    p.add_argument(
        "--preprocess",
        choices=PREPROCESS_MODES,
        default=None,
        help="how inputs are resized: jetson (jetson-inference's nearest-pixel sampling, the default) or area; "
        "recorded in the checkpoint. Default: the resumed checkpoint's, else jetson",
    )
    p.add_argument("--epochs", type=int, default=35)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="adamw",
        help="adamw (one-cycle schedule) or sgd (jetson-inference's recipe: momentum 0.9, lr ÷10 every 30 epochs)",
    )
    p.add_argument("--lr", type=float, default=None, help="peak (adamw, default 1e-3) or initial (sgd, default 0.1) LR")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default="", help="checkpoint.pth.tar to continue from (ours or jetson-inference's)")
    p.add_argument("--pretrained", action="store_true", help="start from torchvision ImageNet weights (download)")
    p.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    p.add_argument("--select-by", choices=SELECT_BY, default="accuracy", help="how the best epoch is chosen")
    p.add_argument("--normal-label", default="normal", help="the class that means normal (for abnormal_sensitivity)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


# --- arguments ----------------------------------------------------------------------------------------------------


def check_args(args: argparse.Namespace) -> None:
    """Refuse, before any work, what would fail later: numbers out of range, missing folders, an unwritable output."""
    low, high = RESOLUTION_RANGE
    if not low <= args.resolution <= high:
        raise TrainError(f"--resolution must lie in {low}..{high}, got {args.resolution}")
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.workers < 0 or args.threads < 0:
        raise TrainError("--workers and --threads must not be negative")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise TrainError(f"--lr must be a positive number, got {args.lr}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise TrainError(f"--weight-decay must be a non-negative number, got {args.weight_decay}")
    data = Path(args.data)
    for split in ("train", "val"):
        if not (data / split).is_dir():
            raise TrainError(f"'{data / split}' is missing; DATA must hold train/ and val/ class folders")
    if args.resume and not Path(args.resume).is_file():
        raise TrainError(f"--resume checkpoint '{args.resume}' does not exist")
    out = Path(args.model_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise TrainError(f"cannot write into --model-dir '{out}' ({exc.strerror or exc})") from exc


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- building -----------------------------------------------------------------------------------------------------


@dataclass
class Data:
    train: GrayImageFolder
    val: GrayImageFolder
    test: GrayImageFolder | None
    classes: tuple[str, ...]


def load_data(root: Path, resolution: int, mode: str) -> Data:
    """The splits, each cached in memory at the training size, resized as the model's inputs will be (``mode``)."""
    train_ds = GrayImageFolder(root / "train", TrainPreset(resolution, mode), cache_size=resolution, mode=mode)
    classes = train_ds.classes

    def split(name: str) -> GrayImageFolder:
        return GrayImageFolder(root / name, EvalPreset(resolution, mode), classes, cache_size=resolution, mode=mode)

    return Data(train_ds, split("val"), split("test") if (root / "test").is_dir() else None, classes)


def _loader(ds: GrayImageFolder, batch_size: int, shuffle: bool, workers: int, seed: int) -> DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=g,
        persistent_workers=workers > 0,
        drop_last=False,
    )


def build_criterion(args: argparse.Namespace, data: Data, device: torch.device) -> nn.Module:
    weight = None
    if args.class_weights:
        n = len(data.classes)
        counts = np.bincount(data.train.targets, minlength=n).astype(np.float64)
        weight = torch.tensor(counts.sum() / (n * np.maximum(counts, 1)), dtype=torch.float32, device=device)
    return nn.CrossEntropyLoss(weight=weight)


def build_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), args.lr, momentum=SGD_MOMENTUM, weight_decay=args.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def build_scheduler(
    args: argparse.Namespace, optimizer: torch.optim.Optimizer, steps_per_epoch: int, start_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule that is a function of the global step, so a resumed run continues it exactly.

    The schedule is rebuilt from ``args`` (whatever a loaded optimizer state had as its learning rate) and moved to
    the first step of ``start_epoch``.
    """
    for group in optimizer.param_groups:
        group["lr"] = args.lr
        group.pop("initial_lr", None)  # LambdaLR would keep a loaded one (setdefault), whatever --lr says now
    if args.optimizer == "sgd":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: LR_STEP_GAMMA ** ((step // steps_per_epoch) // LR_STEP_EPOCHS)
        )
    else:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=args.lr, total_steps=max(args.epochs * steps_per_epoch, 1), pct_start=0.15
        )
    steps_done = start_epoch * steps_per_epoch
    if 0 < steps_done < args.epochs * steps_per_epoch:
        scheduler.last_epoch = steps_done - 1
        with warnings.catch_warnings():  # "step() before optimizer.step()": on purpose, to reach steps_done
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    return scheduler


# --- resume -------------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where a run stands: the next epoch, the per-epoch log and the best epoch so far."""

    start_epoch: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=dict)
    best_score: float = -math.inf


def optimizer_state_problem(optimizer: torch.optim.Optimizer, state: object, kind: str) -> str | None:
    """Why a saved optimizer state cannot continue ``optimizer`` (None: it can)."""
    if not isinstance(state, dict) or "param_groups" not in state or "state" not in state:
        return "the checkpoint holds no optimizer state"
    saved = state["param_groups"]
    if [len(g.get("params", ())) for g in saved] != [len(g["params"]) for g in optimizer.param_groups]:
        return "its optimizer state is for another set of parameters"
    for other, keys in _OPTIMIZER_KEYS.items():
        if other != kind and all(k in g for g in saved for k in keys):
            return f"its optimizer state is {other}'s, this run uses {kind}"
    if not all(k in g for g in saved for k in _OPTIMIZER_KEYS[kind]):
        return f"its optimizer state is not {kind}'s"
    return None


def resume(args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer, out: Path) -> Progress:
    """Load weights (always) and the optimizer state (when it fits); the run continues after the saved epoch.

    ``epoch`` in a checkpoint is upstream's: the 0-based index of the last epoch trained.
    """
    ckpt = load_checkpoint(args.resume)
    if ckpt.get("arch") != args.arch:
        raise CheckpointError(f"--resume checkpoint is a {ckpt.get('arch')}, not --arch {args.arch}")
    load_state_dict(model, ckpt["state_dict"], args.arch)
    problem = optimizer_state_problem(optimizer, ckpt.get("optimizer"), args.optimizer)
    if problem is None:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError) as exc:
            problem = f"its optimizer state does not load ({exc})"
    if problem is not None:
        log.warning("%s: %s; keeping the weights and starting a fresh %s", args.resume, problem, args.optimizer)
    progress = Progress(start_epoch=int(ckpt.get("epoch", -1)) + 1)
    prev = out / "metrics.json"
    if prev.exists():
        old = json.loads(prev.read_text())
        progress.history = old.get("epochs", [])[: progress.start_epoch]
        progress.best = old.get("best", {})
        progress.best_score = progress.best.get("score", -math.inf)
    log.info("resumed from %s at epoch %d", args.resume, progress.start_epoch + 1)
    return progress


def resolve_preprocess(args: argparse.Namespace) -> str:
    """The resize mode to train with: --preprocess, else the resumed checkpoint's, else jetson; they must agree."""
    declared = load_checkpoint(args.resume).get("preprocess") if args.resume else None
    if args.preprocess and declared and args.preprocess != declared:
        raise TrainError(
            f"--resume checkpoint was trained with --preprocess {declared}, not {args.preprocess}; "
            "continue with the same mode or start a new model folder"
        )
    return args.preprocess or declared or "jetson"


# --- one epoch ----------------------------------------------------------------------------------------------------


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    device: torch.device,
    desc: str,
) -> tuple[float, float]:
    """One pass over the training set; mean loss and accuracy."""
    model.train()
    seen, correct, loss_sum = 0, 0, 0.0
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch"):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        seen += len(y)
        correct += int((logits.argmax(1) == y).sum())
        loss_sum += loss.item() * len(y)
    return loss_sum / seen, correct / seen


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, criterion: nn.Module
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean loss, true labels and softmax probabilities over a loader."""
    model.eval()
    total, losses, ys, ps = 0, 0.0, [], []
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        losses += float(criterion(logits, y)) * len(y)
        total += len(y)
        ys.append(y.cpu().numpy())
        ps.append(torch.softmax(logits.float(), 1).cpu().numpy())
    return losses / max(total, 1), np.concatenate(ys), np.concatenate(ps)


def _score(report: dict, select_by: str) -> float:
    value = report[select_by]
    return -math.inf if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


# --- the run ------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    """Train and return the metrics written to ``metrics.json``."""
    check_args(args)
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    args.preprocess = resolve_preprocess(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = torch.device(args.device)
    data = load_data(Path(args.data), args.resolution, args.preprocess)
    classes = data.classes
    for name, split in (("train", data.train), ("val", data.val)):
        if len(split) == 0:
            raise TrainError(f"'{Path(args.data) / name}' holds no readable images in its class folders")
    normal_index = next((i for i, c in enumerate(classes) if c.lower() == args.normal_label.lower()), None)
    if args.select_by == "abnormal_sensitivity" and normal_index is None:
        raise TrainError(f"--select-by abnormal_sensitivity needs a '{args.normal_label}' class; have {classes}")
    n_test = len(data.test) if data.test else 0
    log.info("classes %s; %d train / %d val / %d test images", list(classes), len(data.train), len(data.val), n_test)

    model = create_model(args.arch, len(classes), pretrained=args.pretrained).to(device)
    criterion = build_criterion(args, data, device)
    optimizer = build_optimizer(args, model)
    train_loader = _loader(data.train, args.batch_size, True, args.workers, args.seed)
    val_loader = _loader(data.val, args.batch_size * 2, False, 0, args.seed)
    out = Path(args.model_dir)
    progress = resume(args, model, optimizer, out) if args.resume else Progress()
    write_labels(out / LABELS_NAME, classes)
    scheduler = build_scheduler(args, optimizer, len(train_loader), progress.start_epoch)
    for epoch in range(progress.start_epoch, args.epochs):
        t0 = time.time()
        desc = f"epoch {epoch + 1}/{args.epochs}"
        train_loss, train_acc = train_one_epoch(model, criterion, optimizer, scheduler, train_loader, device, desc)
        val_loss, yv, pv = evaluate(model, val_loader, device, criterion)
        val_report = classification_report(yv, pv.argmax(1), classes, pv, normal_index)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_report["accuracy"],
            "val_macro_f1": val_report["macro_f1"],
            "seconds": round(time.time() - t0, 1),
        }
        progress.history.append(row)
        score = _score(val_report, args.select_by)
        is_best = score > progress.best_score
        save_epoch(args, model, optimizer, classes, epoch, val_report["accuracy"] * 100, val_loss, is_best)
        if is_best:
            progress.best_score = score
            progress.best = {"epoch": epoch + 1, "select_by": args.select_by, "score": score, "val": val_report}
        log.info(
            "%s  train loss %.4f acc %.3f | val loss %.4f acc %.3f F1 %.3f | %.0fs%s",
            desc,
            train_loss,
            train_acc,
            val_loss,
            val_report["accuracy"],
            val_report["macro_f1"],
            row["seconds"],
            "  *best*" if is_best else "",
        )
        _write_metrics(out, args, classes, progress.history, progress.best)
    if data.test is not None and (out / BEST_NAME).exists():
        progress.best["test"] = final_test(args, model, criterion, data, device, normal_index)
    return _write_metrics(out, args, classes, progress.history, progress.best)


def save_epoch(
    args: argparse.Namespace,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    classes: tuple[str, ...],
    epoch: int,
    accuracy: float,
    loss: float,
    is_best: bool,
) -> None:
    """checkpoint.pth.tar every epoch; model_best.pth.tar for the best one.

    model_best carries the optimizer state only for SGD, the one state upstream's ``--resume`` can continue; an AdamW
    best model stays the lean deployable file (resume from checkpoint.pth.tar).
    """
    out = Path(args.model_dir)
    common = dict(
        model=model,
        arch=args.arch,
        classes=classes,
        resolution=args.resolution,
        epoch=epoch,
        accuracy=accuracy,
        loss=loss,
        preprocess=args.preprocess,
    )
    state = optimizer.state_dict()
    save_checkpoint(out / CHECKPOINT_NAME, optimizer=state, **common)
    if is_best:
        save_checkpoint(out / BEST_NAME, optimizer=state if args.optimizer == "sgd" else None, **common)


def final_test(
    args: argparse.Namespace,
    model: nn.Module,
    criterion: nn.Module,
    data: Data,
    device: torch.device,
    normal_index: int | None,
) -> dict:
    """The best epoch's weights on the test split."""
    ckpt = load_checkpoint(Path(args.model_dir) / BEST_NAME)
    load_state_dict(model, ckpt["state_dict"], args.arch)
    loader = _loader(data.test, args.batch_size * 2, False, 0, args.seed)
    _, yt, pt = evaluate(model, loader, device, criterion)
    report = classification_report(yt, pt.argmax(1), data.classes, pt, normal_index)
    best_epoch = int(ckpt.get("epoch", -1)) + 1
    log.info("best epoch %d: test accuracy %.3f, macro F1 %.3f", best_epoch, report["accuracy"], report["macro_f1"])
    return report


def _write_metrics(out: Path, args: argparse.Namespace, classes: tuple[str, ...], history: list, best: dict) -> dict:
    metrics = {
        "arch": args.arch,
        "resolution": args.resolution,
        "preprocess": args.preprocess,
        "classes": list(classes),
        "data": str(args.data),
        "args": {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool)},
        "epochs": history,
        "best": best,
    }
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train``: 0 when trained; 2 with one ``error: …`` line on bad arguments, folders or outputs."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        run(args)
    except (CascadeError, OSError) as exc:
        detail = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else exc
        print(f"error: {detail}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
