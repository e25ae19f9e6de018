"""Optimizers and learning-rate schedules, as registries of plain names.

Every schedule steps once per batch; epoch-based settings are converted to steps.
"""
from __future__ import annotations

import torch

S = torch.optim.lr_scheduler


def _madgrad(params, lr, wd):
    from madgrad import MADGRAD  # the seed team's favourite; not in torch

    return MADGRAD(params, lr=lr, weight_decay=wd)


OPTIMIZERS = {
    "sgd": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True),
    "adam": lambda params, lr, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd),
    "adamw": lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
    "madgrad": _madgrad,
}

# (optimizer, peak lr, total steps, warm-up steps, steps per epoch, step-size epochs, step gamma) -> schedule
SCHEDULERS = {
    "none": lambda opt, lr, total, warm, steps, size, gamma: S.LambdaLR(opt, lambda s: 1.0),
    "step": lambda opt, lr, total, warm, steps, size, gamma: S.StepLR(opt, step_size=max(size * steps, 1),
                                                                      gamma=gamma),
    "cyclic": lambda opt, lr, total, warm, steps, size, gamma: S.CyclicLR(
        opt, base_lr=lr / 10, max_lr=lr, step_size_up=max(steps, 1), mode="triangular2", cycle_momentum=False),
    "cosine": lambda opt, lr, total, warm, steps, size, gamma: S.CosineAnnealingLR(opt, T_max=max(total - warm, 1),
                                                                                   eta_min=lr * 0.01),
    "onecycle": lambda opt, lr, total, warm, steps, size, gamma: S.OneCycleLR(
        opt, max_lr=lr, total_steps=total, pct_start=max(warm / total, 0.05)),
}


def make_optimizer(name: str, params, lr: float, wd: float) -> torch.optim.Optimizer:
    return OPTIMIZERS[name](params, lr, wd)


def make_scheduler(name: str, opt, lr: float, epochs: int, steps: int, warmup: int, step_size: int,
                   step_gamma: float):
    """The schedule `name` over epochs x steps batches, after a linear warm-up of `warmup` epochs
    (onecycle warms up by itself)."""
    total, warm = epochs * steps, warmup * steps
    main = SCHEDULERS[name](opt, lr, total, warm, steps, step_size, step_gamma)
    if not warm or name == "onecycle":
        return main
    return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.01, total_iters=warm), main], milestones=[warm])
