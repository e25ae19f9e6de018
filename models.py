"""Models: any timm backbone with one 18-way head or three task heads (mask 3, gender 2, age 3)."""
from __future__ import annotations

import difflib
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from maskfold.cli import UserError, stop_if_interrupted
from maskfold.labels import NUM_CLASSES, TASKS, joint

HEADS = {"single": NUM_CLASSES, "multi": sum(TASKS.values())}


class MultiHead(nn.Module):
    """The seed's "mutually exclusive" tasks: one backbone, a head per task."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        # Some backbones (MobileNetV3, LCNet) put a wider layer after pooling than num_features says.
        width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.heads = nn.ModuleDict({t: nn.Linear(width, n) for t, n in TASKS.items()})

    def forward(self, x):
        f = self.backbone(x)
        return torch.cat([self.heads[t](f) for t in TASKS], dim=1)


def create(name: str, head: str, pretrained: bool, drop_rate: float = 0.0) -> nn.Module:
    import timm

    if head not in HEADS:
        raise UserError(f"--head {head}: unknown; choose from {', '.join(HEADS)}")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (closest: {', '.join(close)})" if close else ""
        raise UserError(f"--model {name}: not a timm model{hint}")
    num_classes = NUM_CLASSES if head == "single" else 0
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate)
    except Exception as e:  # hub errors come in many types: offline, proxy, missing file
        if not pretrained:
            raise
        raise UserError(f"--model {name}: could not load pretrained weights ({type(e).__name__}); "
                        "offline or no weights published? pass --no-pretrained to train from scratch") from None
    return model if head == "single" else MultiHead(model)


def norm_stats(model: nn.Module) -> tuple[list[float], list[float]]:
    cfg = getattr(model.backbone if isinstance(model, MultiHead) else model, "pretrained_cfg", {}) or {}
    return list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))


def split_logits(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, 8) multi-head logits -> per-task logits."""
    return dict(zip(TASKS, torch.split(logits, list(TASKS.values()), dim=1)))


def probs18(logits: torch.Tensor, head: str) -> torch.Tensor:
    """18-class probabilities; for three heads, the joint of their softmaxes (class = mask*6+gender*3+age)."""
    if head == "single":
        return F.softmax(logits.float(), dim=1)
    p = {t: F.softmax(v.float(), dim=1) for t, v in split_logits(logits).items()}
    return joint(p["mask"], p["gender"], p["age"])


def load_checkpoint(path: Path) -> dict:
    """weights_only: a checkpoint passed around a team must never run code when loaded."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: not a safe checkpoint of this toolkit ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]})") from None


CKPT_KEYS = ("model", "head", "img_size", "mean", "std", "num_classes", "state_dict")
RESUME_KEYS = ("epoch", "optimizer", "scheduler", "torch_rng", "history", "best")


def read_checkpoint(path: Path, resume: bool = False) -> dict:
    """A checkpoint of this toolkit, checked to be one before anything uses it."""
    ck = load_checkpoint(path)
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


AMP_DTYPES = ("auto", "bf16", "fp16")


def amp_dtype(device: str, amp: bool | None, choice: str = "auto") -> torch.dtype | None:
    """The autocast dtype, or None for full precision. On CUDA (amp on by default): bf16 where the GPU has
    bf16 units, fp16 (with a gradient scaler when training) on those without (V100, T4), or as `choice`
    forces. On a CPU autocast costs time (bf16 made the demo model 7x slower), so --amp alone leaves it
    off; naming a dtype forces it."""
    if device.startswith("cuda"):
        if amp is False:
            return None
        if choice == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if choice == "bf16" else torch.float16
    if choice == "auto" or not amp:
        return None
    return torch.bfloat16 if choice == "bf16" else torch.float16


def autocast(device: str, dtype: torch.dtype | None):
    """Autocast to `dtype` on the device's type; a no-op for None."""
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype or torch.bfloat16,
                          enabled=dtype is not None)


@torch.no_grad()
def predict_probs(net, head: str, images: np.ndarray, mean, std, device: str, batch_size: int,
                  amp: torch.dtype | None, channels_last: bool = True, tta: bool = False,
                  desc: str | None = None) -> np.ndarray:
    """18-class probabilities of cached uint8 images; with tta, averaged with the mirrored image."""
    from tqdm import tqdm

    from maskfold.datasets import to_input

    net.eval()
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, file=sys.stderr, leave=False, disable=desc is None):
        stop_if_interrupted()
        x = to_input(torch.from_numpy(images[i:i + batch_size]), mean, std, device, channels_last)
        with autocast(device, amp):
            p = probs18(net(x), head)
            if tta:  # horizontal flip: faces are left-right symmetric, labels are not
                p = (p + probs18(net(torch.flip(x, dims=[3])), head)) / 2
        out.append(p.float().cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, NUM_CLASSES))
