"""Pictures of a fold: learning curves and the 18-class confusion matrix, as PNG files or inline data."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd

from maskfold.files import atomic_path
from maskfold.labels import NUM_CLASSES, SCHEME, TASKS, task_targets


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(history: pd.DataFrame):
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(history["epoch"], history["train_loss"], label="train")
    if "val_loss" in history:  # the final model (train.py --fold all) has no validation
        ax[0].plot(history["epoch"], history["val_loss"], label="val (NLL)")
    ax[1].plot(history["epoch"], history["train_f1"], label="train F1")
    if "val_f1" in history:
        ax[1].plot(history["epoch"], history["val_f1"], label="val F1")
    for a, t in zip(ax, ("loss", "macro F1")):
        a.set_xlabel("epoch")
        a.set_title(t)
        a.legend()
    fig.tight_layout()
    return fig


def confusion(labels: np.ndarray, preds: np.ndarray, title: str | None = None, task: str | None = None):
    """The confusion matrix of class codes, or (`task`: a task's model) of that task's classes."""
    from sklearn.metrics import confusion_matrix

    plt = _plt()
    n = NUM_CLASSES if task is None else TASKS[task]
    cm = confusion_matrix(task_targets(labels, task), task_targets(preds, task), labels=range(n))
    fig, a = plt.subplots(figsize=(7, 6))
    a.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        if v:
            a.text(j, i, str(v), ha="center", va="center", fontsize=6)
    a.set_xlabel("predicted")
    a.set_ylabel(f"true (class = {SCHEME})" if task is None else f"true {task}")
    a.set_xticks(range(n))
    a.set_yticks(range(n))
    if title:
        a.set_title(title)
    fig.tight_layout()
    return fig


def save_png(fig, path: Path, dpi: int = 90) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    _plt().close(fig)


def png_data(fig, dpi: int = 80) -> str:
    """A figure as a data: URI, for pages that must open without their folder."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
