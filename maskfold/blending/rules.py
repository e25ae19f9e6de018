"""From blended probabilities to answers: a per-class bias fitted for macro F1, and one answer per person (one
gender and age from all a person's photos, the masks of a complete person chosen jointly).

ensemble.py applies them to the out-of-fold probabilities (to decide, held out, whether each gains) and to
the eval probabilities, and pseudo.py's per-person labels are the same answers.
"""
from __future__ import annotations

import numpy as np

from maskfold.cli import Choice
from maskfold.labels import NUM_CLASSES, macro_f1, marginals


def pool(values: np.ndarray, groups: np.ndarray, mean: bool = True) -> np.ndarray:
    """Each grouped photo's (`groups` >= 0) mean (or sum) of `values` (N, k) over its group's photos; photos
    alone (-1) keep their own."""
    out = np.array(values, dtype=np.float64)
    grouped = groups >= 0
    if grouped.any():
        ids, inv = np.unique(groups[grouped], return_inverse=True)
        sums = np.zeros((len(ids), values.shape[1]))
        np.add.at(sums, inv, values[grouped])
        out[grouped] = (sums / np.bincount(inv)[:, None] if mean else sums)[inv]
    return out


def log_scores(p: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """log p + per-class bias ((18,) or one row per photo)."""
    return np.log(np.clip(p, 1e-12, None)) + bias


# How a person's photos pool their gender and age, each a sum over the photos of a score per answer:
# "log" sums log-probabilities (a product of the photos' beliefs: one photo at 1e-6 outvotes six at 0.9),
# "mean" sums probabilities, "clipped" sums log-probabilities floored at 0.05 (no photo can say "never"),
# "vote" counts each photo's best answer (ties broken by the mean).
class Vote(Choice):
    mean = "mean"
    log = "log"
    clipped = "clipped"
    vote = "vote"


VOTES = tuple(v.value for v in Vote)


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
    if not grouped.any():
        return out
    ids, inv = np.unique(groups[grouped], return_inverse=True)
    rows = np.flatnonzero(grouped)
    # a person's gender and age: the best answer of the pooled scores of all its photos
    g = pool(pooled(m["gender"], vote), groups, mean=False)[rows].argmax(1)
    a = pool(pooled(m["age"], vote), groups, mean=False)[rows].argmax(1)
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
