"""From class probabilities to answers: blend, per-task recomposition, class bias, one answer per person.

ensemble.py applies the same functions to the out-of-fold probabilities (to score and fit them)
and to the eval probabilities (to submit them), so the CV score is the submission's.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

import numpy as np

from maskfold.labels import NUM_CLASSES, TASKS, decode, joint, macro_f1, marginals, scores

MASK_COUNTS = {0: -2, 1: 1, 2: 1}  # of a complete group: 1 worn wrongly, 1 not worn, the rest (5 of 7) worn


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

    def blend(self, probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
        w = weights / weights.sum()
        if self.mean == Mean.geometric:
            p = np.exp(sum(wi * np.log(np.clip(pi, 1e-12, None)) for wi, pi in zip(w, probs) if wi))
        else:
            p = sum(wi * pi for wi, pi in zip(w, probs) if wi)
        return p / p.sum(axis=1, keepdims=True)

    def combine(self, probs: list[np.ndarray]) -> np.ndarray:
        """The blend, with each task's marginal taken from the blend, from its chosen input or from its own
        blend."""
        p = self.blend(probs, self.weights)
        if all(i is None for _, i in self.sources):
            return p
        m = {t: marginals(p if i is None else self.blend(probs, i) if isinstance(i, np.ndarray) else
                          probs[i - 1])[t] for t, i in self.sources}
        return joint(m["mask"], m["gender"], m["age"])

    def describe(self) -> dict:
        """Weights and sources as JSON values."""
        return {"weights": [round(float(w), 4) for w in self.weights / self.weights.sum()], "mean": self.mean.value,
                **{f"{t}_from": ([round(float(w), 4) for w in i / i.sum()] if isinstance(i, np.ndarray) else i)
                   for t, i in self.sources if i is not None}}


FITS = ("none", "blend", "task")


def greedy_weights(n: int, score, steps: int = 20) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al. 2004) over `n` inputs: start from the best input, add
    at each step the input whose addition scores best, stop when none betters the score. `score(counts)` rates
    the blend of those weights; the weights are the counts."""
    counts, best = np.zeros(n), -np.inf
    for _ in range(steps):
        trials = [score(counts + np.eye(n)[k]) for k in range(n)]
        k = int(np.argmax(trials))
        if trials[k] <= best + 1e-9:
            break
        best, counts = trials[k], counts + np.eye(n)[k]
    return counts


def fit_recipe(base: Recipe, probs: list[np.ndarray], y: np.ndarray, how: str) -> Recipe:
    """`base` with weights chosen for macro F1 on (probs, y): one set for the blend (`blend`; chosen per-task
    inputs kept), or one set per task, each for that task's macro F1 (`task`)."""
    n = len(probs)
    if how == "blend":
        return Recipe(greedy_weights(n, lambda w: macro_f1(y, Recipe(w, base.mean, base.sources).combine(probs)
                                                           .argmax(1))), base.mean, base.sources)
    truth = dict(zip(TASKS, decode(y)))
    sources = tuple((t, greedy_weights(n, lambda w, t=t: macro_f1(truth[t], marginals(base.blend(probs, w))[t]
                                                                  .argmax(1)))) for t in TASKS)
    return Recipe(np.ones(n), base.mean, sources)


def held_out_recipes(base: Recipe, probs: list[np.ndarray], y: np.ndarray, folds: np.ndarray,
                     how: str) -> np.ndarray:
    """Each photo's probabilities under weights fitted on the other folds only: an honest estimate."""
    out = np.zeros_like(probs[0])
    for k in np.unique(folds):
        fit_on = folds != k
        r = fit_recipe(base, [p[fit_on] for p in probs], y[fit_on], how)
        out[~fit_on] = r.combine([p[~fit_on] for p in probs])
    return out


def log_scores(p: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """log p + per-class bias ((18,) or one row per photo)."""
    return np.log(np.clip(p, 1e-12, None)) + bias


# How a person's photos pool their gender and age, each a sum over the photos of a score per answer:
# "log" sums log-probabilities (a product of the photos' beliefs: one photo at 1e-6 outvotes six at 0.9),
# "mean" sums probabilities, "clipped" sums log-probabilities floored at 0.05 (no photo can say "never"),
# "vote" counts each photo's best answer (ties broken by the mean).
VOTES = ("mean", "log", "clipped", "vote")


def pooled(m: np.ndarray, vote: str) -> np.ndarray:
    """Each photo's score per answer of one task (from its marginal probabilities `m`) under `vote`."""
    if vote == "log":
        return np.log(np.clip(m, 1e-12, None))
    if vote == "clipped":
        return np.log(np.clip(m, 0.05, None))
    if vote == "vote":
        return np.eye(m.shape[1])[m.argmax(1)] + 1e-3 * m
    return m


def answers(p: np.ndarray, bias: np.ndarray | float = 0.0, groups: np.ndarray | None = None,
            size: int = 7, vote: str = "mean") -> np.ndarray:
    """The class of each photo: the best biased score alone, or per person when `groups` says which photos
    are one person (-1: alone)."""
    s = log_scores(p, bias)
    return s.argmax(1) if groups is None else per_person(s, groups, size, vote)


def per_person(s: np.ndarray, groups: np.ndarray, size: int, vote: str = "mean") -> np.ndarray:
    """One gender and one age per person, pooled from all its photos as `vote` says; the mask of a complete
    person (`size` photos) as the best assignment of one worn wrongly, one not worn and the rest worn; the mask
    of the photos of an incomplete person, each on its own."""
    out = s.argmax(1)
    q = np.exp(s - s.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    m = marginals(q)
    grouped = groups >= 0
    ids, inv = np.unique(groups[grouped], return_inverse=True)
    if not len(ids):
        return out
    rows = np.flatnonzero(grouped)
    gender = np.zeros((len(ids), 2))
    age = np.zeros((len(ids), 3))
    np.add.at(gender, inv, pooled(m["gender"][rows], vote))
    np.add.at(age, inv, pooled(m["age"][rows], vote))
    g, a = gender.argmax(1)[inv], age.argmax(1)[inv]
    cond = s.reshape(-1, 3, 2, 3)[rows, :, g, a]  # each photo's mask scores given its person's gender and age
    mask = cond.argmax(1)
    counts = np.bincount(inv, minlength=len(ids))
    complete = np.flatnonzero(counts == size)
    if len(complete):
        pos = np.flatnonzero(np.isin(inv, complete))
        order = pos[np.argsort(inv[pos], kind="stable")]  # each complete person's photos together
        c = cond[order].reshape(len(complete), size, 3)
        mask[order] = assign_masks(c).ravel()
    out[rows] = mask * 6 + g * 3 + a
    return out


def assign_masks(c: np.ndarray) -> np.ndarray:
    """(people, photos, 3) mask scores -> masks: the best choice of one photo worn wrongly (1) and another
    not worn (2), the others worn (0)."""
    n, k, _ = c.shape
    d1, d2 = c[:, :, 1] - c[:, :, 0], c[:, :, 2] - c[:, :, 0]
    pair = d1[:, :, None] + d2[:, None, :]
    pair[:, np.arange(k), np.arange(k)] = -np.inf
    best = pair.reshape(n, -1).argmax(1)
    out = np.zeros((n, k), dtype=int)
    out[np.arange(n), best // k] = 1
    out[np.arange(n), best % k] = 2
    return out


def fit_bias(p: np.ndarray, y: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Per-class additive bias on log-probabilities, by coordinate ascent on macro F1 (the teams'
    hand-set age thresholds, fitted instead). Starts at zero, so it never lowers the fitted F1."""
    logp = np.log(np.clip(p, 1e-12, None))
    b = np.zeros(NUM_CLASSES)
    best = macro_f1(y, logp.argmax(1))
    grid = np.linspace(-2, 2, 21)
    for _ in range(rounds):
        for c in range(NUM_CLASSES):
            for v in grid:
                trial = b.copy()
                trial[c] = v
                f = macro_f1(y, (logp + trial).argmax(1))
                if f > best + 1e-9:
                    best, b = f, trial
    return b


def held_out_biases(p: np.ndarray, y: np.ndarray, folds: np.ndarray, fit=fit_bias) -> np.ndarray:
    """(N, 18): each photo's bias, fitted on the other folds only: scoring with it is an honest estimate."""
    rows = np.zeros((len(y), NUM_CLASSES))
    for k in np.unique(folds):
        fit_on = folds != k
        rows[~fit_on] = fit(p[fit_on], y[fit_on]) if fit_on.any() else 0.0
    return rows


def task_f1(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Macro F1 over the 18 classes and of each task."""
    s = scores(y, pred)
    return {"f1": s["f1"], **{t: s[f"f1_{t}"] for t in TASKS}}
