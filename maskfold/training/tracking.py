"""Where a fold's numbers go while it trains: one short line per epoch with its time to go (stderr and
train.log, for jobs left in tmux), TensorBoard event files in the fold's folder, and Weights & Biases when
asked (--wandb PROJECT; imported only then)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from maskfold.cli import UserError

SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "val_loss_ema": "loss/val_ema", "train_f1": "f1/train",
           "val_f1": "f1/val", "val_f1_ema": "f1/val_ema", "val_f1_mask": "f1_task/mask",
           "val_f1_gender": "f1_task/gender", "val_f1_age": "f1_task/age", "val_acc": "acc/val", "lr": "lr",
           "img_per_s": "speed/img_per_s"}


def check_wandb(project: str | None) -> None:
    if project is None:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UserError(f"--wandb {project}: the wandb package is not installed (pip install wandb), or leave "
                        "--wandb out: TensorBoard files are written either way") from None


class Tracker:
    """One fold's scalars per epoch and pictures of what it trains on, to TensorBoard and optionally W&B."""

    def __init__(self, fold_dir: Path, config: dict, name: str, wandb_project: str | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(log_dir=str(fold_dir / "tensorboard"))
        self.tb.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()))
        self.wandb = None
        if wandb_project:
            import wandb

            self.wandb = wandb.init(project=wandb_project, name=name, group=config.get("run"), config=config,
                                    dir=str(fold_dir), reinit=True)

    def epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        for key, tag in SCALARS.items():
            if row.get(key) is not None and np.isfinite(row[key]):
                self.tb.add_scalar(tag, float(row[key]), step)
        self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({tag: row[key] for key, tag in SCALARS.items() if row.get(key) is not None} | {
                "epoch": step}, step=step)

    def batch(self, images: np.ndarray, tag: str = "train/batch") -> None:
        """A grid of one batch as the model receives it (augmented, mixed): uint8 (N, H, W, 3)."""
        import torch
        from torchvision.utils import make_grid

        grid = make_grid(torch.from_numpy(images).permute(0, 3, 1, 2), nrow=8, padding=2)
        self.tb.add_image(tag, grid, 0)
        self.tb.flush()
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(grid.permute(1, 2, 0).numpy())}, step=0)

    def close(self, summary: dict | None = None) -> None:
        self.tb.close()
        if self.wandb is not None:
            if summary:
                self.wandb.summary.update(summary)
            self.wandb.finish()


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
    rate += " (head alone: backbone frozen)" if row.get("frozen") else ""
    # a task's model (train.py --task) scores its own task alone
    tasks = " ".join(f"{t} {row[f'val_f1_{t}']:.3f}" for t in ("mask", "gender", "age") if f"val_f1_{t}" in row)
    if "val_f1" not in row:  # the final model (--fold all): nothing to validate on
        return (f"epoch {row['epoch']}/{epochs} loss {row['train_loss']:.4f} train F1 {row['train_f1']:.4f} "
                f"lr {row['lr']:.2e}{rate} {row['seconds']:.0f}s, eta {to_go}")
    return (f"epoch {row['epoch']}/{epochs} loss {row['train_loss']:.4f}/{row['val_loss']:.4f} "
            f"F1 {row['train_f1']:.4f}/{row['val_f1']:.4f}{ema} ({tasks}) lr {row['lr']:.2e}{rate} "
            f"{row['seconds']:.0f}s, eta {to_go}")
