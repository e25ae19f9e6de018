"""A photo's looks, for telling who is who: unit-length features of the photo outside the face region (crop.py's
look-alike signature: the layout of raw portraits) and each of its L*a*b* channels there, its upper half (the
layout of face crops, whose lower half is the mask) and its colour histogram, reduced to their 256 main
directions."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from maskfold import lookalike
from maskfold.cli import UserError
from maskfold.images import read_image


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
