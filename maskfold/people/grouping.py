"""Which photos of a flat folder are one person: look-alike features, groups of at most 7, how sure each is.

The 7 photos of one person share setting, light, clothes and hair and differ mostly where the
mask is. Each photo gets unit-length looks: the photo outside the face region (crop.py's
look-alike signature: the layout of raw portraits) and each of its L*a*b* channels there, its
upper half (the layout of face crops, whose lower half is the mask), and its colour histogram,
reduced to their 256 main directions. Grouping is written by
hand (the field has no capacity-bounded clustering): merges along each photo's nearest neighbours,
most similar first, never past 7 photos; where the folder holds whole people (a multiple of 7
photos) the last fragments are completed into groups of 7; then the doubtful photos move or swap
between groups while that raises the similarity within groups.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from maskfold import lookalike
from maskfold.cli import UserError
from maskfold.files import read_table
from maskfold.images import read_image, stem_key

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


def unit(v: np.ndarray) -> np.ndarray:
    v = v - v.mean()
    return v / (np.linalg.norm(v) + 1e-6)


def look(image: np.ndarray) -> np.ndarray:
    """A photo's look-alike features (float32, unit length): the photo outside the face as RGB, and as each
    L*a*b* channel on its own (1,800 demo people: purity 0.78 without these, 0.90 with), the upper half, the
    colour histogram."""
    outside = cv2.resize(image, lookalike.LOOK_SIZE, interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(outside, cv2.COLOR_RGB2LAB).astype(np.float32)
    channels = np.concatenate([unit(lab[..., c][lookalike.OUTSIDE_FACE]) for c in range(3)]) / np.sqrt(3)
    top = cv2.resize(image, (12, 16), interpolation=cv2.INTER_AREA)[:8].astype(np.float32)  # a crop's mask is below
    hsv = cv2.cvtColor(cv2.resize(image, (48, 64), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2HSV)
    hist = np.sqrt(cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel())
    v = np.concatenate([lookalike.signature(outside), unit(top.ravel()),
                        hist / (np.linalg.norm(hist) + 1e-6), channels])
    return (v / np.linalg.norm(v)).astype(np.float32)


def features(paths: list[Path], workers: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Features of every readable photo (decoded at about a quarter of its size) and the unreadable ones;
    one thread per core, OpenCV's own threads off (they fought the decoding threads: 22.8 s against 12.4 s
    for 12,600 photos on 2 cores)."""
    cv2.setNumThreads(1)

    def one(p):
        try:
            return look(read_image(p, reduce=4))
        except UserError:
            return None

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        looks = list(pool.map(one, paths))
    bad = [i for i, v in enumerate(looks) if v is None]
    dim = next((len(v) for v in looks if v is not None), 1)
    return np.stack([v if v is not None else np.zeros(dim, np.float32) for v in looks]), bad


def project(F: np.ndarray, dims: int = 256) -> np.ndarray:
    """The features' main directions only (PCA scores, unit length again): a 14x smaller neighbour search on
    3,680-dimension looks, and purer groups than without. Only the top eigenvectors are computed, of the
    covariance or, for fewer photos than dimensions, of the Gram matrix (the same scores)."""
    from scipy.linalg import eigh

    n, d = F.shape
    if d <= dims or n <= dims:
        return F
    X = F - F.mean(0)
    if n < d:
        values, vectors = eigh(X @ X.T, subset_by_index=[n - dims, n - 1], driver="evr")
        G = vectors * np.sqrt(np.clip(values, 0, None))
    else:
        _, vectors = eigh(X.T @ X, subset_by_index=[d - dims, d - 1], driver="evr")
        G = X @ vectors
    return (G / (np.linalg.norm(G, axis=1, keepdims=True) + 1e-6)).astype(np.float32)


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


def read_people(path: Path, size: int) -> pd.DataFrame:
    """people.csv (ImageID,group,...) indexed by stem_key(ImageID), checked: no duplicates, no group over `size`."""
    df = read_table(path, dtype={"ImageID": str})
    if not {"ImageID", "group"} <= set(df.columns):
        raise UserError(f"{path}: needs ImageID and group columns (make it with people.py)")
    df["key"] = [stem_key(i) for i in df["ImageID"]]
    if df["key"].duplicated().any():
        raise UserError(f"{path}: photo {df['key'][df['key'].duplicated()].iloc[0]} listed twice")
    sizes = df.groupby("group").size()
    if (sizes > size).any():
        raise UserError(f"{path}: group {sizes.idxmax()} has {sizes.max()} photos, more than --group-size {size}")
    df["group"] = pd.factorize(df["group"])[0]
    return df.set_index("key")


def groups_of(path: Path, keys: list[str], size: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Group number per key (-1: answered alone), from a people.csv that must name exactly these photos,
    and each photo's group's sureness (people.py's `sure`; infinite for a file without it)."""
    people = read_people(path, size)
    have = set(people.index)
    missing, extra = [k for k in keys if k not in have], sorted(have - set(keys))
    if missing or extra:
        raise UserError(f"{path}: its photos differ from {what} ({len(missing)} missing, {len(extra)} unknown, "
                        f"e.g. {(missing + extra)[0]})")
    groups = people.loc[keys, "group"].to_numpy()
    sure = people.loc[keys, "sure"].to_numpy(float) if "sure" in people.columns else np.full(len(keys), np.inf)
    return groups, sure
