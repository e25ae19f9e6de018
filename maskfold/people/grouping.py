"""Which photos are one person: groups of at most 7 from their looks (features.py) and the model's answers,
how sure each photo's group is, and the purity of a grouping against known people.

The 7 photos of one person share setting, light, clothes and hair and differ mostly where the
mask is. Grouping is written by
hand (the field has no capacity-bounded clustering): merges along each photo's nearest neighbours,
most similar first, never past 7 photos; where the folder holds whole people (a multiple of 7
photos) the last fragments are completed into groups of 7; then the doubtful photos move or swap
between groups while that raises the similarity within groups.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from maskfold.people.features import project

SURE = 0.99  # an answer the model gives at least this probability counts as known (at 0.9, the out-of-fold
# answers of 1.7% of the train photos were wrong that surely and split their person: purity 0.9767 against 1.0)


def tokens(answers: dict[str, np.ndarray] | None, n: int) -> np.ndarray:
    """(n, 4) counts a group must keep within bounds, from the model's answers per photo (marginals of its 18
    class probabilities): a sure 'no mask', a sure 'worn wrongly' (a person has one of each), a sure male, a
    sure female (a person has one gender). Zeros without answers."""
    if answers is None:
        return np.zeros((n, 4), np.int32)
    m, g = answers["mask"], answers["gender"]
    return np.stack([m[:, 2] >= SURE, m[:, 1] >= SURE, g[:, 0] >= SURE, g[:, 1] >= SURE], 1).astype(np.int32)


def allowed(t: np.ndarray) -> np.ndarray:
    """Whether group token counts (..., 4) can be one person: at most one sure 'no mask' and one sure 'worn
    wrongly', not sure males and sure females together."""
    return (t[..., 0] <= 1) & (t[..., 1] <= 1) & ~((t[..., 2] > 0) & (t[..., 3] > 0))


def with_answers(F: np.ndarray, answers: dict[str, np.ndarray] | None, weight: float) -> np.ndarray:
    """The looks with the model's gender and age beside them (square roots of the probabilities, scaled by
    `weight`): two photos' similarity gains weight**2 times how much their answers overlap (Bhattacharyya)."""
    if answers is None or weight <= 0:
        return F
    extra = np.concatenate([np.sqrt(answers["gender"]), np.sqrt(answers["age"])], 1) * weight / np.sqrt(2)
    G = np.concatenate([F, extra.astype(np.float32)], 1)
    return G / np.linalg.norm(G, axis=1, keepdims=True)


def neighbours(F: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each photo's k most similar others (indices, similarities), one matrix product per block."""
    n, k = len(F), min(k, len(F) - 1)
    idx, sims = np.zeros((n, k), int), np.zeros((n, k), np.float32)
    for s in range(0, n, block):
        S = F[s:s + block] @ F.T
        S[np.arange(len(S)), np.arange(s, s + len(S))] = -np.inf
        part = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < n - 1 else np.argsort(-S, 1)[:, :k]
        ps = np.take_along_axis(S, part, 1)
        order = np.argsort(-ps, 1)
        idx[s:s + block], sims[s:s + block] = np.take_along_axis(part, order, 1), np.take_along_axis(ps, order, 1)
    return idx, sims


def otsu(values: np.ndarray) -> float:
    """The split of a two-humped distribution (same person / another) that best separates its humps."""
    hist, edges = np.histogram(values, bins=64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0, w1 = np.cumsum(hist), np.cumsum(hist[::-1])[::-1]
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.cumsum((hist * centres)[::-1]) / np.maximum(np.cumsum(hist[::-1]), 1))[::-1]
    between = w0[:-1] * w1[1:] * (m0[:-1] - m1[1:]) ** 2
    return float(edges[1:-1][np.argmax(between)]) if len(between) else float(values.min(initial=0))


def agglomerate(idx: np.ndarray, sims: np.ndarray, size: int, floor: float,
                tok: np.ndarray | None = None) -> np.ndarray:
    """Merge along the neighbour graph's edges, most similar first, whenever the two groups together hold at
    most `size` photos and the edge is at least `floor` similar (single linkage with a cap; on the demo's
    crops it grouped better than average linkage, 0.90 against 0.70 purity, and 10x faster). A label per
    photo. Groups whose `tok` counts would leave bounds (see `allowed`) never merge."""
    n = len(idx)
    parent, count = np.arange(n), np.ones(n, int)
    tok = np.zeros((n, 4), np.int32) if tok is None else tok.copy()  # per root: the group's counts

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    src, dst, s = np.repeat(np.arange(n), idx.shape[1]), idx.ravel(), sims.ravel()
    for e in np.argsort(-s, kind="stable"):
        if s[e] < floor:
            break
        a, b = root(src[e]), root(dst[e])
        if a != b and count[a] + count[b] <= size and allowed(tok[a] + tok[b]):
            if count[a] < count[b]:
                a, b = b, a
            parent[b] = a
            count[a] += count[b]
            tok[a] += tok[b]
    return np.array([root(i) for i in range(n)])


def complete(F: np.ndarray, label: np.ndarray, size: int, tok: np.ndarray | None = None) -> np.ndarray:
    """Fragments of a folder of whole people made into groups of exactly `size`: the best-linked pairs of
    fragments that fit merge first; a fragment that fits nowhere is split up, its photos placed one by one
    where they look most alike. Fragments whose `tok` counts together leave bounds are not merged while others
    can be; a photo goes where the counts allow, and where nowhere does it stays a group of its own."""
    label = label.copy()
    tok = np.zeros((len(label), 4), np.int32) if tok is None else tok
    alone: set[int] = set()  # photos that no group with room may take (the counts forbid it): they stay apart
    while True:
        groups = pd.Series(np.arange(len(label))).groupby(label).apply(list)
        short = [g for g in groups if len(g) < size and not (len(g) == 1 and g[0] in alone)]
        if not short:
            return label
        sums = np.stack([F[g].sum(0) for g in short])
        link = (sums @ sums.T) / np.outer([len(g) for g in short], [len(g) for g in short])
        fits = np.add.outer([len(g) for g in short], [len(g) for g in short]) <= size
        counts = np.stack([tok[g].sum(0) for g in short])
        fits &= allowed(counts[:, None, :] + counts[None, :, :])
        np.fill_diagonal(fits, False)
        if fits.any():
            a, b = np.unravel_index(np.argmax(np.where(fits, link, -np.inf)), link.shape)
            label[short[b]] = label[short[a][0]]
            continue
        smallest = min(short, key=len)  # fits nowhere: its photos go to the groups with room
        room = [g for g in short if g is not smallest]
        if sum(size - len(g) for g in room) < len(smallest):
            return label  # not a folder of whole people after all: the fragments stay
        for i in smallest:
            open_ = [g for g in room if len(g) < size]
            fine = [g for g in open_ if allowed(tok[g].sum(0) + tok[i])]
            if not fine:  # never into a group its counts forbid: a photo of its own
                label[i] = label.max() + 1
                alone.add(i)
                continue
            best = max(fine, key=lambda g: float(F[i] @ F[g].sum(0)) / len(g))
            label[i] = label[best[0]]
            best.append(i)


def refine(F: np.ndarray, label: np.ndarray, idx: np.ndarray, size: int, sweeps: int = 10,
           tok: np.ndarray | None = None) -> np.ndarray:
    """Move a photo to a neighbour's group with room, or swap it with one of that group's photos, whenever
    that raises the summed similarity within groups and keeps both groups' `tok` counts in bounds; a few
    sweeps until nothing improves."""
    label = label.copy()
    groups = {g: list(np.flatnonzero(label == g)) for g in np.unique(label)}
    sums = {g: F[m].sum(0) for g, m in groups.items()}
    tok = np.zeros((len(label), 4), np.int32) if tok is None else tok
    counts = {g: tok[m].sum(0) for g, m in groups.items()}
    for _ in range(sweeps):
        changed = 0
        for i in doubtful(F, label, idx):
            x = label[i]
            own = float(F[i] @ sums[x]) - 1.0
            for y in {label[j] for j in idx[i]} - {x}:
                ys = groups[y]
                if len(ys) < size:
                    gain = float(F[i] @ sums[y]) - own if allowed(counts[y] + tok[i]) else -np.inf
                    j = None
                else:
                    Fy = F[ys]
                    fij = Fy @ F[i]
                    gains = (float(F[i] @ sums[y]) - fij - own) + (Fy @ sums[x] - fij - (Fy @ sums[y] - 1.0))
                    ok = allowed(counts[y] + tok[i] - tok[ys]) & allowed(counts[x] - tok[i] + tok[ys])
                    gains = np.where(ok, gains, -np.inf)
                    j = ys[int(np.argmax(gains))]
                    gain = float(gains.max())
                if gain > 1e-6:
                    move(groups, sums, label, F, i, x, y)
                    counts[x], counts[y] = counts[x] - tok[i], counts[y] + tok[i]
                    if j is not None:
                        move(groups, sums, label, F, j, y, x)
                        counts[y], counts[x] = counts[y] - tok[j], counts[x] + tok[j]
                    changed += 1
                    break
        if not changed:
            break
    return label


def doubtful(F: np.ndarray, label: np.ndarray, idx: np.ndarray, slack: float = 0.05) -> np.ndarray:
    """Photos worth trying elsewhere: a neighbour in another group looks about as much like them as their own
    group does on average (the others cannot gain from a move, and are most of a clean grouping)."""
    ids, inv = np.unique(label, return_inverse=True)
    sums = np.zeros((len(ids), F.shape[1]), np.float32)
    np.add.at(sums, inv, F)
    counts = np.bincount(inv)
    own = (np.einsum("ij,ij->i", F, sums[inv]) - 1.0) / np.maximum(counts[inv] - 1, 1)
    near = np.einsum("ij,ikj->ik", F, F[idx])
    other = np.where(label[idx] != label[:, None], near, -np.inf).max(1)
    return np.flatnonzero(other > own - slack)


def move(groups, sums, label, F, i, x, y) -> None:
    groups[x].remove(i)
    groups[y].append(i)
    sums[x] = sums[x] - F[i]
    sums[y] = sums[y] + F[i]
    label[i] = y


ANSWER_WEIGHT = 0.5


def group(F: np.ndarray, size: int = 7, whole_people: bool | None = None, k: int | None = None,
          answers: dict[str, np.ndarray] | None = None, weight: float = ANSWER_WEIGHT) -> np.ndarray:
    """Group number per photo (0, 1, ...). `whole_people` (default: the folder is a multiple of `size`)
    completes every group to `size` photos; otherwise a merge needs the similarity that separates one
    person's photos from others' in this folder. `answers` (the model's marginals per photo: mask, gender,
    age) add gender and age to the looks and keep apart photos that cannot be one person."""
    n = len(F)
    if n <= 1:
        return np.zeros(n, int)
    whole = n % size == 0 if whole_people is None else whole_people
    F = with_answers(project(F), answers, weight)
    tok = tokens(answers, n)
    idx, sims = neighbours(F, k or 3 * size)
    floor = -np.inf if whole else otsu(sims.ravel())
    label = agglomerate(idx, sims, size, floor, tok)
    if whole:
        label = complete(F, label, size, tok)
    label = refine(F, label, idx, size, sweeps=3, tok=tok)  # most of what moves moves in the first sweeps
    return pd.factorize(label)[0]


def sureness(F: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Per photo: its mean similarity to its own group's other photos minus its best mean similarity to
    another group (negative: it looks more like another group)."""
    ids, inv = np.unique(label, return_inverse=True)
    if len(ids) < 2:
        return np.ones(len(F))
    sums = np.zeros((len(ids), F.shape[1]), np.float32)
    np.add.at(sums, inv, F)
    counts = np.bincount(inv)
    out = np.zeros(len(F))
    for s in range(0, len(F), 1024):
        to_groups = F[s:s + 1024] @ sums.T  # summed similarity of each photo to each group
        mine = inv[s:s + 1024]
        rows = np.arange(len(mine))
        own = (to_groups[rows, mine] - 1.0) / np.maximum(counts[mine] - 1, 1)
        other = to_groups / counts
        other[rows, mine] = -np.inf
        out[s:s + 1024] = np.where(counts[mine] > 1, own, 0.0) - other.max(1)
    return out


def purity(label: np.ndarray, person: np.ndarray, among: np.ndarray | None = None) -> float:
    """Share of photos whose group is exactly their person's photos; of the photos `among` selects, if given
    (their groups judged whole)."""
    df = pd.DataFrame({"g": label, "p": person})
    same = df.groupby("g")["p"].transform(lambda s: s.nunique() == 1)
    whole = df.groupby("p")["g"].transform(lambda s: s.nunique() == 1)
    exact = (same & whole).to_numpy()
    if among is not None:
        exact = exact[among] if among.dtype == bool else exact[np.asarray(among)]
    return float(exact.mean()) if len(exact) else 0.0
