"""Look-alike photos: a signature of what surrounds the face, and the box a faceless photo borrows.

A person's photos share background, hair, clothes and framing, and differ where the mask is, so
the photo minus its face region says which photos are likely one person's. crop.py lends a face
box to a photo without one from its look-alikes; grouping starts from the same signature.
"""
from __future__ import annotations

import cv2
import numpy as np

from maskfold.crop.facebox import agrees, consensus

# A look-alike signature's photo size (width, height) and its pixels outside the face, where a prior
# would put the face (rows .3-.8, columns .2-.8).
LOOK_SIZE = (24, 32)
OUTSIDE_FACE = np.ones(LOOK_SIZE[::-1], bool)
OUTSIDE_FACE[10:26, 5:19] = False


def signature(image: np.ndarray) -> np.ndarray:
    """A photo's look, minus the face region: a person's photos share background, hair and clothes,
    and differ only where the mask is. Unit vector; photos of one person have the largest dot products."""
    x = cv2.resize(image, LOOK_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)
    x = x[OUTSIDE_FACE].ravel()
    x -= x.mean()
    return x / (np.linalg.norm(x) + 1e-6)


def borrow(sims: np.ndarray, boxes: list, k: int = 6, floor: float = 0.5, alone: float = 0.9
           ) -> tuple[np.ndarray | None, int]:
    """For a photo without a face in a folder of unnamed photos: the consensus box of its k most similar
    photos (its person's others, when the folder holds them), if at least two of those show faces that
    agree with the most similar one; else that most similar face alone, if its photo is a near twin
    (similarity >= 0.9). `boxes` are face boxes as fractions of each photo's size, None where it has
    none. On demo photos, one person's photos have similarities 0.71-1 (other people's up to 0.94: hence
    the top k, not a threshold); flattening the 420 demo train photos into one folder, the most similar
    face of each of 242 faceless photos was its own person's in all 241 cases above 0.85. The floor only
    keeps a blank card from borrowing anything."""
    order = [i for i in np.argsort(-sims)[:k] if boxes[i] is not None and sims[i] >= floor]
    if not order:
        return None, 0
    # The most similar photo with a face is the likeliest to be the same person: the others must agree
    # with it (a median would side with other people whenever the person has fewer faces among the k).
    near = [boxes[i] for i in order if agrees(boxes[i], boxes[order[0]])]
    if len(near) >= 2:
        return consensus(near), len(near)
    return (boxes[order[0]], 1) if sims[order[0]] >= alone else (None, 1)


def lookalike_boxes(sigs: np.ndarray, boxes: list, queries: list[int], block: int = 512) -> dict[int, tuple]:
    """For each query photo (an index into `sigs`), the box borrow() finds among all the others, with how
    many look-alikes lent it: one matrix product per block of queries."""
    out = {}
    for start in range(0, len(queries), block):
        part = queries[start:start + block]
        for q, sims in zip(part, sigs[part] @ sigs.T):
            sims[q] = -np.inf
            box, n = borrow(sims, boxes)
            if box is not None:
                out[q] = box, n
    return out
