"""Pictures of a fold: learning curves and the 18-class confusion matrix, as PNG files or inline data."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd

from maskfold.files import atomic_path
from maskfold.labels import NUM_CLASSES, SCHEME


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(history: pd.DataFrame):
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(history["epoch"], history["train_loss"], label="train")
    ax[0].plot(history["epoch"], history["val_loss"], label="val (NLL)")
    ax[1].plot(history["epoch"], history["train_f1"], label="train F1")
    ax[1].plot(history["epoch"], history["val_f1"], label="val F1")
    for a, t in zip(ax, ("loss", "macro F1")):
        a.set_xlabel("epoch")
        a.set_title(t)
        a.legend()
    fig.tight_layout()
    return fig


def confusion(labels: np.ndarray, preds: np.ndarray, title: str | None = None):
    from sklearn.metrics import confusion_matrix

    plt = _plt()
    cm = confusion_matrix(labels, preds, labels=range(NUM_CLASSES))
    fig, a = plt.subplots(figsize=(7, 6))
    a.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        if v:
            a.text(j, i, str(v), ha="center", va="center", fontsize=6)
    a.set_xlabel("predicted")
    a.set_ylabel(f"true (class = {SCHEME})")
    a.set_xticks(range(NUM_CLASSES))
    a.set_yticks(range(NUM_CLASSES))
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
