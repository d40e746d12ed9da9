"""Train one cascade stage: ``python -m train DATA --arch resnet18 --model-dir models/my/stage1``.

DATA is an ImageFolder tree with ``train/`` and ``val/`` (``test/`` optional). Writes jetson-inference's files into
the model folder (``checkpoint.pth.tar`` every epoch, ``model_best.pth.tar`` for the best epoch by ``--select-by``,
``labels.txt``), so models trained here and with jetson-inference's train.py are interchangeable, plus
``metrics.json`` (per-epoch loss/accuracy; full metrics of the best epoch on val and test).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cascade.checkpoint import BEST_NAME, CHECKPOINT_NAME, LABELS_NAME, load_checkpoint, save_checkpoint, write_labels
from cascade.errors import CheckpointError
from cascade.fileio import write_atomic
from cascade.metrics import classification_report
from cascade.models import create_model, load_state_dict
from train.data import GrayImageFolder
from train.presets import EvalPreset, TrainPreset

log = logging.getLogger("train")
SELECT_BY = ("accuracy", "macro_f1", "abnormal_sensitivity")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description="Train one stage of the knee X-ray cascade.")
    p.add_argument("data", help="ImageFolder root with train/ and val/ (test/ optional)")
    p.add_argument("--arch", default="resnet18", help="torchvision architecture (default: %(default)s)")
    p.add_argument("--model-dir", required=True, help="output model folder (jetson-inference layout)")
    p.add_argument("--resolution", type=int, default=224, help="square input size (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=35)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of AdamW with cosine decay")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default="", help="checkpoint.pth.tar to continue from")
    p.add_argument("--pretrained", action="store_true", help="start from torchvision ImageNet weights (download)")
    p.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    p.add_argument("--select-by", choices=SELECT_BY, default="accuracy", help="how the best epoch is chosen")
    p.add_argument("--normal-label", default="normal", help="the class that means normal (for abnormal_sensitivity)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def main(args: argparse.Namespace) -> dict:
    """Train and return the metrics written to ``metrics.json``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    data = Path(args.data)
    for split in ("train", "val"):
        if not (data / split).is_dir():
            raise FileNotFoundError(f"'{data / split}' is missing; DATA must hold train/ and val/ class folders")
    device = torch.device(args.device)
    train_ds = GrayImageFolder(data / "train", TrainPreset(args.resolution), cache_size=args.resolution)
    classes = train_ds.classes
    val_ds = GrayImageFolder(data / "val", EvalPreset(args.resolution), classes, cache_size=args.resolution)
    test_ds = (
        GrayImageFolder(data / "test", EvalPreset(args.resolution), classes, cache_size=args.resolution)
        if (data / "test").is_dir()
        else None
    )
    normal_index = next((i for i, c in enumerate(classes) if c.lower() == args.normal_label.lower()), None)
    if args.select_by == "abnormal_sensitivity" and normal_index is None:
        raise ValueError(f"--select-by abnormal_sensitivity needs a '{args.normal_label}' class; have {classes}")
    log.info(
        "classes %s; %d train / %d val / %d test images",
        list(classes),
        len(train_ds),
        len(val_ds),
        len(test_ds) if test_ds else 0,
    )

    model = create_model(args.arch, len(classes), pretrained=args.pretrained).to(device)
    weight = None
    if args.class_weights:
        counts = np.bincount(train_ds.targets, minlength=len(classes)).astype(np.float64)
        weight = torch.tensor(counts.sum() / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32, device=device)
    criterion = nn.CrossEntropyLoss(weight=weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    train_loader = _loader(train_ds, args.batch_size, True, args.workers, args.seed)
    val_loader = _loader(val_ds, args.batch_size * 2, False, 0, args.seed)
    start_epoch, best_score, history, best = 0, -math.inf, [], {}
    out = Path(args.model_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        if ckpt.get("arch") != args.arch:
            raise CheckpointError(f"--resume checkpoint is a {ckpt.get('arch')}, not --arch {args.arch}")
        load_state_dict(model, ckpt["state_dict"], args.arch)
        try:
            if ckpt.get("optimizer"):
                optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:  # e.g. a jetson SGD state: keep the weights, restart the optimizer
            log.warning("optimizer state in %s does not fit AdamW (%s); starting it afresh", args.resume, exc)
        start_epoch = int(ckpt.get("epoch", 0))
        prev = out / "metrics.json"
        if prev.exists():
            old = json.loads(prev.read_text())
            history = old.get("epochs", [])[:start_epoch]
            best = old.get("best", {})
            best_score = best.get("score", -math.inf)
        log.info("resumed from %s at epoch %d", args.resume, start_epoch)
    write_labels(out / LABELS_NAME, classes)
    # One-cycle schedule over the whole run; a resumed run continues it where it stopped (the run may be longer now).
    steps_done = start_epoch * len(train_loader)
    resumed_schedule = steps_done > 0 and "initial_lr" in optimizer.param_groups[0]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=args.lr,
        total_steps=max(args.epochs * len(train_loader), 1),
        pct_start=0.15,
        last_epoch=steps_done - 1 if resumed_schedule else -1,
    )
    for epoch in range(start_epoch, args.epochs):
        model.train()
        t0, seen, correct, loss_sum = time.time(), 0, 0, 0.0
        for x, y in tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, unit="batch"):
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
        val_loss, yv, pv = evaluate(model, val_loader, device, criterion)
        val_report = classification_report(yv, pv.argmax(1), classes, pv, normal_index)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "val_loss": val_loss,
            "val_accuracy": val_report["accuracy"],
            "val_macro_f1": val_report["macro_f1"],
            "seconds": round(time.time() - t0, 1),
        }
        history.append(row)
        score = _score(val_report, args.select_by)
        is_best = score > best_score
        save = partial(
            save_checkpoint,
            model=model,
            arch=args.arch,
            classes=classes,
            resolution=args.resolution,
            epoch=epoch + 1,
            accuracy=val_report["accuracy"] * 100,
            loss=val_loss,
        )
        save(out / CHECKPOINT_NAME, optimizer=optimizer.state_dict())
        if is_best:
            best_score = score
            # model_best carries no optimizer state: it is the deployable model (resume from checkpoint.pth.tar).
            save(out / BEST_NAME, optimizer=None)
            best = {"epoch": epoch + 1, "select_by": args.select_by, "score": score, "val": val_report}
        log.info(
            "epoch %d/%d  train loss %.4f acc %.3f | val loss %.4f acc %.3f F1 %.3f | %.0fs%s",
            epoch + 1,
            args.epochs,
            row["train_loss"],
            row["train_accuracy"],
            val_loss,
            val_report["accuracy"],
            val_report["macro_f1"],
            row["seconds"],
            "  *best*" if is_best else "",
        )
        _write_metrics(out, args, classes, history, best)

    if test_ds is not None and (out / BEST_NAME).exists():
        ckpt = load_checkpoint(out / BEST_NAME)
        load_state_dict(model, ckpt["state_dict"], args.arch)
        _, yt, pt = evaluate(model, _loader(test_ds, args.batch_size * 2, False, 0, args.seed), device, criterion)
        best["test"] = classification_report(yt, pt.argmax(1), classes, pt, normal_index)
        log.info(
            "best epoch %s: test accuracy %.3f, macro F1 %.3f",
            best.get("epoch"),
            best["test"]["accuracy"],
            best["test"]["macro_f1"],
        )
    return _write_metrics(out, args, classes, history, best)


def _write_metrics(out: Path, args: argparse.Namespace, classes: tuple[str, ...], history: list, best: dict) -> dict:
    metrics = {
        "arch": args.arch,
        "resolution": args.resolution,
        "classes": list(classes),
        "data": str(args.data),
        "args": {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool)},
        "epochs": history,
        "best": best,
    }
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
