"""Losses in one registry; each takes (logits, class indices) and returns a scalar mean.
Criterion applies one to the 18 classes, or to each task of a three-head model."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from maskfold.labels import NUM_CLASSES, TASKS, decode, split_logits, task_targets


def class_weights(counts: np.ndarray) -> torch.Tensor:
    """Inverse frequency, normalised so a balanced set gets weight 1 (absent classes count as 1)."""
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1)
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


class Focal:
    """Focal loss, -(1 - p_t)^gamma log p_t (Lin et al. 2017); gamma 0 is cross entropy."""

    def __init__(self, gamma: float, weight=None):
        self.gamma, self.weight = gamma, weight

    def __call__(self, logits, target):
        logp = F.log_softmax(logits.float(), dim=1)
        logp_t = logp.gather(1, target[:, None]).squeeze(1)
        loss = -((1 - logp_t.exp()) ** self.gamma) * logp_t
        if self.weight is not None:
            loss = loss * self.weight.to(logits.device)[target]
        return loss.mean()


class SoftF1:
    """1 - macro F1 computed on probabilities: differentiable, optimises the metric directly."""

    def __init__(self, eps: float = 1e-7):
        self.eps = eps

    def __call__(self, logits, target):
        p = F.softmax(logits.float(), dim=1)
        y = F.one_hot(target, p.shape[1]).float()
        tp = (p * y).sum(0)
        fp = (p * (1 - y)).sum(0)
        fn = ((1 - p) * y).sum(0)
        f1 = 2 * tp / (2 * tp + fp + fn + self.eps)
        return 1 - f1.mean()


def _ce(weight=None, smoothing=0.0):
    def loss(logits, target):
        w = None if weight is None else weight.to(logits.device)
        return F.cross_entropy(logits.float(), target, weight=w, label_smoothing=smoothing)
    return loss


LOSSES = {
    "ce": lambda counts, gamma, smoothing: _ce(),
    "weighted_ce": lambda counts, gamma, smoothing: _ce(class_weights(counts)),
    "focal": lambda counts, gamma, smoothing: Focal(gamma),
    "label_smoothing": lambda counts, gamma, smoothing: _ce(smoothing=smoothing),
    "f1": lambda counts, gamma, smoothing: SoftF1(),
}


def build(name: str, counts: np.ndarray, gamma: float = 2.0, smoothing: float = 0.1):
    """The loss `name`, given the training fold's class counts (for weighted_ce)."""
    return LOSSES[name](counts, gamma, smoothing)


def ordinal_age(p_age: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """The squared earth mover's distance between predicted age-band probabilities (N, 3) and the true bands:
    the bands' order counts (a 29-year-old surely called 60+ costs twice one called 30-59; plain cross entropy
    charges both alike). Hou et al. 2016, 'Squared EMD loss for ordered classes'."""
    cdf = torch.cumsum(p_age.float(), dim=1)[:, :-1]
    truth = (torch.arange(p_age.shape[1] - 1, device=band.device)[None, :] >= band[:, None]).float()
    return ((cdf - truth) ** 2).sum(1).mean()


def age_probs(logits, head: str) -> torch.Tensor:
    """The age bands' probabilities of a model's output: the marginal of 18 classes, the age head's softmax."""
    if head == "single":
        return F.softmax(logits.float(), dim=1).reshape(-1, 3, 2, 3).sum(dim=(1, 2))
    return F.softmax((logits if head == "age" else split_logits(logits)["age"]).float(), dim=1)


class Criterion:
    """The chosen loss on 18 classes, per task (weighted) for three heads, or on one task's classes for that
    task's head alone (train.py --task; its targets are still class codes); `ordinal` > 0 adds that times the
    ordinal age term (ordinal_age) of whatever head answers the age."""

    def __init__(self, name, head, targets, gamma, smoothing, task_weights, ordinal: float = 0.0):
        self.head, self.ordinal = head, ordinal
        if head == "single":
            self.fn = build(name, np.bincount(targets, minlength=NUM_CLASSES), gamma, smoothing)
        elif head in TASKS:
            self.fn = build(name, np.bincount(task_targets(targets, head), minlength=TASKS[head]), gamma, smoothing)
        else:
            tasks = dict(zip(TASKS, decode(targets)))
            self.fns = {t: build(name, np.bincount(tasks[t], minlength=n), gamma, smoothing) for t, n in TASKS.items()}
            self.weights = dict(zip(TASKS, task_weights))

    def __call__(self, logits, y):
        loss = self.chosen(logits, y)
        if self.ordinal:
            loss = loss + self.ordinal * ordinal_age(age_probs(logits, self.head), y % 3)
        return loss

    def chosen(self, logits, y):
        if self.head == "single":
            return self.fn(logits, y)
        if self.head in TASKS:
            return self.fn(logits, task_targets(y, self.head))
        parts, ys = split_logits(logits), dict(zip(TASKS, decode(y)))
        return sum(self.weights[t] * self.fns[t](parts[t], ys[t]) for t in TASKS)

