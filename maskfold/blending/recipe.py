"""The blend: how the inputs' probabilities become one set (weights, mean, each task from its own input or
blend), and weights fitted for macro F1, on every fold or with each held out.

ensemble.py applies the same recipe to the out-of-fold probabilities (to score and fit it) and to the
eval probabilities (to submit them), so the CV score is the submission's.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

import numpy as np

from maskfold.cli import Choice
from maskfold.labels import TASKS, decode, joint, macro_f1, marginals


class Mean(str, Enum):
    arithmetic = "arithmetic"
    geometric = "geometric"


@dataclass(frozen=True)
class Recipe:
    """How the inputs' probabilities become one set: weights, mean, and per-task sources: None (the blend),
    an input (1-based) or weights of a task's own blend."""
    weights: np.ndarray
    mean: Mean = Mean.arithmetic
    sources: tuple[tuple[str, Optional[int] | np.ndarray], ...] = (("mask", None), ("gender", None), ("age", None))
    tasks: tuple[Optional[str], ...] = ()  # per input: the one task it answers (train.py --task), None: all 18

    def blend(self, probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
        w = weights / weights.sum()
        if self.mean == Mean.geometric:
            p = np.exp(sum(wi * np.log(np.clip(pi, 1e-12, None)) for wi, pi in zip(w, probs) if wi))
        else:
            p = sum(wi * pi for wi, pi in zip(w, probs) if wi)
        return p / p.sum(axis=1, keepdims=True)

    def combine(self, probs: list[np.ndarray]) -> np.ndarray:
        """The blend, with each task's marginal taken from the blend, from its chosen input or from its own
        blend. With no input in the blend (each task from a model of its own), the three tasks' sources alone."""
        p = self.blend(probs, self.weights) if self.weights.sum() > 0 else None
        if all(i is None for _, i in self.sources):
            return p
        m = {t: marginals(p if i is None else self.blend(probs, i) if isinstance(i, np.ndarray) else
                          probs[i - 1])[t] for t, i in self.sources}
        return joint(m["mask"], m["gender"], m["age"])

    def describe(self) -> dict:
        """Weights and sources as JSON values."""
        total = self.weights.sum() or 1.0  # 0: no input blended, each task from its own
        return {"weights": [round(float(w), 4) for w in self.weights / total], "mean": self.mean.value,
                **{f"{t}_from": ([round(float(w), 4) for w in i / i.sum()] if isinstance(i, np.ndarray) else i)
                   for t, i in self.sources if i is not None}}


class Fit(Choice):
    """How ensemble.py chooses weights: not at all, one set for the blend, or one set per task."""
    none = "none"
    blend = "blend"
    task = "task"


def greedy_weights(n: int, score, steps: int = 20, allowed=None) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al. 2004) over `n` inputs (or the `allowed` ones): start
    from the best input, add at each step the input whose addition scores best, stop when none betters the
    score. `score(counts)` rates the blend of those weights; the weights are the counts."""
    counts, best = np.zeros(n), -np.inf
    allowed = np.arange(n) if allowed is None else np.asarray(allowed)
    for _ in range(steps):
        trials = {int(k): score(counts + np.eye(n)[k]) for k in allowed}
        k = max(trials, key=trials.get)  # the first of the best, as argmax
        if trials[k] <= best + 1e-9:
            break
        best, counts = trials[k], counts + np.eye(n)[k]
    return counts


def fit_recipe(base: Recipe, probs: list[np.ndarray], y: np.ndarray, how: str) -> Recipe:
    """`base` with weights chosen for macro F1 on (probs, y): one set for the blend (`blend`; chosen per-task
    inputs kept), or one set per task, each for that task's macro F1 (`task`)."""
    n = len(probs)
    if how == "blend":
        # a task's model (weight 0 in `base`: it answers its task through the sources) stays out of the blend
        allowed = np.flatnonzero(base.weights > 0)
        return Recipe(greedy_weights(n, lambda w: macro_f1(y, Recipe(w, base.mean, base.sources).combine(probs)
                                                           .argmax(1)), allowed=allowed), base.mean, base.sources,
                      base.tasks)
    truth = dict(zip(TASKS, decode(y)))
    answers = list(base.tasks) or [None] * n  # a task's blend: the 18-class inputs and that task's own models
    sources = tuple((t, greedy_weights(n, lambda w, t=t: macro_f1(truth[t], marginals(base.blend(probs, w))[t]
                                                                  .argmax(1)),
                                       allowed=[i for i, a in enumerate(answers) if a in (None, t)])) for t in TASKS)
    return Recipe(base.weights, base.mean, sources, base.tasks)


def held_out_recipes(base: Recipe, probs: list[np.ndarray], y: np.ndarray, folds: np.ndarray,
                     how: str) -> np.ndarray:
    """Each photo's probabilities under weights fitted on the other folds only: an honest estimate."""
    out = np.zeros_like(probs[0])
    for k in np.unique(folds):
        fit_on = folds != k
        r = fit_recipe(base, [p[fit_on] for p in probs], y[fit_on], how)
        out[~fit_on] = r.combine([p[~fit_on] for p in probs])
    return out
