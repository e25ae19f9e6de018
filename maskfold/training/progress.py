"""What a training fold says while it runs: one short line per epoch with its time to go, to stderr and to
train.log, for jobs left in tmux."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm


class Log:
    """Lines to stderr and to train.log (jobs left in tmux); rank 0 only."""

    def __init__(self, path: Path | None):
        self.file = open(path, "a") if path else None

    def __call__(self, msg: str) -> None:
        if self.file is None:
            return
        tqdm.write(msg, file=sys.stderr)
        self.file.write(msg + "\n")
        self.file.flush()


def eta(rows: list[dict], left: int) -> str:
    """The fold's time to go, from this session's epochs so far."""
    sec = left * float(np.mean([r["seconds"] for r in rows])) if rows else 0.0
    hours, minutes, seconds = int(sec // 3600), int(sec % 3600 // 60), int(sec % 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def epoch_line(row: dict, epochs: int, to_go: str) -> str:
    """One short line per epoch, for tmux and logs."""
    ema = f" ema {row['val_f1_ema']:.4f}" if "val_f1_ema" in row else ""
    rate = f" {row['img_per_s']:.0f} img/s" if row.get("img_per_s") else ""
    return (f"epoch {row['epoch']}/{epochs} loss {row['train_loss']:.4f}/{row['val_loss']:.4f} "
            f"F1 {row['train_f1']:.4f}/{row['val_f1']:.4f}{ema} (mask {row['val_f1_mask']:.3f} gender "
            f"{row['val_f1_gender']:.3f} age {row['val_f1_age']:.3f}) lr {row['lr']:.2e}{rate} {row['seconds']:.0f}s, "
            f"eta {to_go}")
