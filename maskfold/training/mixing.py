"""Mixing a batch: CutMix (a box, a full-height strip or a half, which keeps the mask region whole) and Mixup,
with the loss weighted by the mixed share."""
from __future__ import annotations

import numpy as np
import torch

from maskfold.training.options import CutMixMode

CUTMIX_MODES = tuple(m.value for m in CutMixMode)


def cutmix(x: torch.Tensor, y: torch.Tensor, alpha: float, mode: str, gen: torch.Generator):
    """Paste a region of a shuffled batch into x. Returns (x, y_a, y_b, lam) with lam the share of
    pixels left from x, measured after clipping. `vertical` pastes a full-height strip and `half`
    a left or right half: both keep the mask region of a face whole."""
    n, _, H, W = x.shape
    perm = torch.randperm(n, generator=gen).to(x.device)
    u = torch.rand(3, generator=gen).tolist()
    lam0 = float(np.random.default_rng(int(u[0] * 2**31)).beta(alpha, alpha))
    if mode == "box":
        cw, ch = int(W * np.sqrt(1 - lam0)), int(H * np.sqrt(1 - lam0))
        cx, cy = int(u[1] * W), int(u[2] * H)
        x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
        y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
    elif mode == "vertical":
        cw = int(round(W * (1 - lam0)))
        x1 = int(u[1] * (W - cw + 1))
        x2, y1, y2 = x1 + cw, 0, H
    elif mode == "half":
        x1, x2 = (0, W // 2) if u[1] < 0.5 else (W // 2, W)
        y1, y2 = 0, H
    else:
        raise ValueError(f"unknown cutmix mode {mode!r}")
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    lam = 1 - (x2 - x1) * (y2 - y1) / (W * H)
    return x, y, y[perm], lam


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, gen: torch.Generator):
    """Blend each image with one of a shuffled batch: (x, y_a, y_b, lam), lam ~ Beta(a, a) the share of x."""
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    u = torch.rand(1, generator=gen).item()
    lam = float(np.random.default_rng(int(u * 2**31)).beta(alpha, alpha))
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


def mix(kind: str, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, cutmix_alpha: float, cutmix_mode: str,
        mixup_alpha: float):
    """One mechanism for both: the loss is lam * loss(y_a) + (1 - lam) * loss(y_b), lam the share of x
    (CutMix: of its pixels left in place)."""
    if kind == "cutmix":
        return cutmix(x, y, cutmix_alpha, cutmix_mode, gen)
    return mixup(x, y, mixup_alpha, gen)
