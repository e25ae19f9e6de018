"""--avg-best N: the weights of a fold's N best epochs (by val F1), averaged as timm's avg_checkpoints.py does, become
the fold's checkpoint when the average validates better than the best epoch alone."""
from __future__ import annotations

import copy

import torch


def remember(fold, epoch: int, f1: float, weights: torch.nn.Module) -> None:
    """Keep this epoch's weights (those that won it: the EMA's or the net's) if they are among the N best; kept
    in last.pt too, so that --resume averages the same epochs."""
    n = fold.cfg.avg_best
    if n < 2:
        return
    state = {k: v.detach().to("cpu", copy=True) for k, v in weights.state_dict().items()}
    fold.top = sorted(fold.top + [(f1, epoch, state)], key=lambda t: (-t[0], t[1]))[:n]


def average(states: list[dict]) -> dict:
    """The mean of each floating tensor; integer buffers (BatchNorm's counts) from the first state."""
    out = {}
    for k, v in states[0].items():
        out[k] = torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
    return out


def averaged_net(fold) -> tuple[torch.nn.Module, list[int]] | None:
    """The net with the N best epochs' weights averaged, and those epochs; None when fewer than two are kept."""
    if fold.cfg.avg_best < 2 or len(fold.top) < 2:
        return None
    net = copy.deepcopy(fold.net)
    net.load_state_dict(average([s for _, _, s in fold.top]))
    return net.eval(), sorted(e for _, e, _ in fold.top)
