"""The checkpoint format, written and read in one place: a file that describes itself (model, head,
image size, normalisation, label scheme, epoch, metric, weights) and, for --resume, what the
optimizer, schedule, random state, EMA and gradient scaler need to continue exactly."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from maskfold.cli import UserError
from maskfold.files import atomic_path
from maskfold.labels import NUM_CLASSES, SCHEME

if TYPE_CHECKING:
    from maskfold.training.trainer import Fold


def make(fold: Fold, epoch: int, metric: dict, full: bool, ema: bool = False, weights: nn.Module | None = None
         ) -> dict:
    """A checkpoint that describes itself, holding the weights, (ema) their EMA or `weights` (--avg-best's
    average); `full` adds what --resume needs."""
    cfg = fold.cfg
    weights = weights if weights is not None else fold.ema.module if ema else fold.net
    ck = {"model": cfg.model, "head": cfg.net_head, "img_size": list(cfg.img_size), "mean": fold.mean, "std": fold.std,
          "num_classes": NUM_CLASSES, "label_scheme": SCHEME, "epoch": epoch, "metric": metric, "ema": ema,
          "trained_on": fold.trained_on, "state_dict": weights.state_dict()}
    if full:
        ck.update(optimizer=fold.opt.state_dict(), scheduler=fold.sched.state_dict(), torch_rng=torch.get_rng_state(),
                  history=fold.history, best=fold.best, steps=fold.steps,
                  ema_state=fold.ema.module.state_dict() if fold.ema is not None else None,
                  scaler=fold.scaler.state_dict() if fold.scaler is not None else None,
                  top=[[f1, e, state] for f1, e, state in fold.top])
    return ck


def restore(fold: Fold, ck: dict) -> int:
    """Continue from a full checkpoint (weights already loaded); the epoch to start from."""
    fold.opt.load_state_dict(ck["optimizer"])
    fold.sched.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["torch_rng"])
    fold.history, fold.best, fold.steps = ck["history"], ck["best"], ck.get("steps", 0)
    fold.top = [tuple(t) for t in ck.get("top") or []]
    if fold.ema is not None and ck.get("ema_state") is not None:
        fold.ema.module.load_state_dict(ck["ema_state"])
    if fold.scaler is not None and ck.get("scaler") is not None:
        fold.scaler.load_state_dict(ck["scaler"])
    return ck["epoch"]


def save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: Path) -> dict:
    """weights_only: a checkpoint passed around a team must never run code when loaded."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        with open(path, "rb") as f:
            head = f.read(512)
        text = head and all(32 <= b < 127 or b in b"\t\r\n" for b in head)
        what = "a text file, not a checkpoint" if text else \
            f"not a safe checkpoint of this toolkit ({type(e).__name__})"
        raise UserError(f"{path}: {what}; predict.py takes run folders (runs/<run>) or their fold*/best.pt") from None


CKPT_KEYS = ("model", "head", "img_size", "mean", "std", "num_classes", "state_dict")
RESUME_KEYS = ("epoch", "optimizer", "scheduler", "torch_rng", "history", "best")


def read(path: Path, resume: bool = False) -> dict:
    """A checkpoint of this toolkit, checked to be one before anything uses it."""
    ck = load(path)
    missing = [k for k in CKPT_KEYS + (RESUME_KEYS if resume else ()) if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise UserError(f"{path}: a checkpoint of another kind (it lacks {', '.join(missing)})")
    if ck["num_classes"] != NUM_CLASSES:
        raise UserError(f"{path}: a checkpoint for {ck['num_classes']} classes, not {NUM_CLASSES}")
    return ck


def load_weights(net: nn.Module, ck: dict, path: Path) -> None:
    try:
        net.load_state_dict(ck["state_dict"])
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise UserError(f"{path}: its weights do not fit {ck['model']} ({first[:120]})") from None
