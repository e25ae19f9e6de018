"""Face boxes: which detection is the face, the person's consensus, and the crop around it.

Hand-written where facenet-pytorch stops: it detects faces, but choosing one box per photo,
judging it against the person's other photos, lending a face to a photo without one, and
growing it into a crop of one fixed aspect ratio is the field's own work. Boxes move between
photos as fractions of each photo's size (a person's photos need not share a size), and are
judged in the pixels of the photo at hand.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# MTCNN's defaults: faces from 20 px, pyramid factor 0.709. Their pyramid's levels for faces of
# 112-250 px (those of 384x512 portraits) begin at 20 / 0.709**5 = 111.63 px: starting the pyramid
# there gives those very levels, to the pixel, so boxes come out as MTCNN's defaults find them.
TAIL_OF_DEFAULTS = 20 / 0.709 ** 5
MIN_SIDE = 40 / 384  # the smallest plausible face box side, of the photo's shorter side (40 px on 384x512)
# Where a face sits when no photo of the run shows one: centre of a 384x512 portrait.
DEFAULT_PRIOR = np.array([0.25, 0.18, 0.75, 0.58])


@dataclass
class Geometry:
    margin_x: float = 0.25  # of the face width, each side
    margin_top: float = 0.35  # of the face height (keeps the forehead and hair)
    margin_bottom: float = 0.25  # of the face height (keeps the chin, where masks sit)
    aspect: float = 0.75  # width / height of every crop: 3:4 like the 384x512 photos


def size4(shape) -> np.ndarray:
    """(height, width, ...) -> [w, h, w, h], to turn pixel boxes into fractions and back."""
    return np.array([shape[1], shape[0], shape[1], shape[0]], dtype=float)


def best_face(candidates: np.ndarray, shape, min_prob: float) -> tuple[np.ndarray | None, float | None, str]:
    """The most likely face of a photo: (box in pixels, prob, why-not when None)."""
    if len(candidates) == 0:
        return None, None, "no face"
    w = candidates[:, 2] - candidates[:, 0]
    h = candidates[:, 3] - candidates[:, 1]
    ok = (candidates[:, 4] >= min_prob) & (np.minimum(w, h) >= MIN_SIDE * min(shape[:2]))
    top = int(np.argmax(candidates[:, 4]))
    if not ok.any():
        why = "low prob" if candidates[top, 4] < min_prob else "too small"
        return None, float(candidates[top, 4]), why
    # Portraits hold one person: the largest confident face is theirs, not a pattern on a shirt.
    i = int(np.argmax(np.where(ok, w * h, -1)))
    return candidates[i, :4], float(candidates[i, 4]), ""


def agrees(box: np.ndarray, ref: np.ndarray, shift: float = 0.35, size: float = 0.6) -> bool:
    """Whether a face box sits where the person's other photos put it (both in one photo's pixels)."""
    cw, rw = box[2] - box[0], ref[2] - ref[0]
    centre = np.hypot((box[0] + box[2] - ref[0] - ref[2]) / 2, (box[1] + box[3] - ref[1] - ref[3]) / 2)
    return centre <= shift * rw and size <= cw / rw <= 1 / size


def consensus(boxes: list[np.ndarray]) -> np.ndarray | None:
    """Median box of a person's photos (all 7 share pose and framing)."""
    return np.median(np.stack(boxes), axis=0) if boxes else None


@dataclass
class Choice:
    status: str | None  # face, person, or None: nothing in the person's photos (a later fallback decides)
    box: np.ndarray | None  # in the photo's pixels
    prob: float | None
    why: str


def choose_for_person(found: list[tuple[np.ndarray | None, float | None, str]], shapes: list,
                      earlier: list[np.ndarray], person: bool) -> list[Choice]:
    """One person's photos: each keeps its own face if it agrees with the person's others, else borrows
    their median box (`person`: the photos are known to be one person's). `found` is best_face per photo,
    `earlier` the person's faces from an earlier run, as fractions."""
    faces = [b / size4(s) for (b, _, _), s in zip(found, shapes) if b is not None] + list(earlier)
    ref = consensus(faces)
    if len(faces) >= 3:
        sizes = [size4(s) for (b, _, _), s in zip(found, shapes) if b is not None] + [size4(shapes[0])] * len(earlier)
        faces = [f for f, s in zip(faces, sizes) if agrees(f * s, ref * s)]
        ref = consensus(faces)
    out = []
    for (box, prob, why), shape in zip(found, shapes):
        if box is not None and len(faces) >= 2 and not agrees(box, ref * size4(shape)):
            box, why = None, "off person"
        if box is not None:
            out.append(Choice("face", box, prob, ""))
        elif person and faces:
            out.append(Choice("person", ref * size4(shape), prob, why))
        else:
            out.append(Choice(None, None, prob, why))
    return out


def prior_box(boxes: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """The run's median face position, as fractions of each photo's size (photos may differ in size)."""
    if not len(boxes):
        return DEFAULT_PRIOR
    return np.median(np.asarray(boxes, float) / np.stack([size4(s) for s in shapes]), axis=0)


def crop_box(face: np.ndarray, shape: tuple[int, int], g: Geometry) -> np.ndarray:
    """Face box -> crop box of the fixed aspect, inside the photo where it fits (else it is padded)."""
    H, W = shape
    x1, y1, x2, y2 = face
    w, h = x2 - x1, y2 - y1
    x1, x2 = x1 - g.margin_x * w, x2 + g.margin_x * w
    y1, y2 = y1 - g.margin_top * h, y2 + g.margin_bottom * h
    cw, ch = x2 - x1, y2 - y1
    if cw / ch < g.aspect:
        cw = ch * g.aspect
    else:
        ch = cw / g.aspect
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    # Shift the crop inside the photo rather than clip it, so the aspect never changes.
    cx = np.clip(cx, cw / 2, W - cw / 2) if cw <= W else W / 2
    cy = np.clip(cy, ch / 2, H - ch / 2) if ch <= H else H / 2
    return np.round([cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2]).astype(int)


def cut(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The crop's pixels, padded with black where the box leaves the photo."""
    x1, y1, x2, y2 = (int(v) for v in box)
    H, W = image.shape[:2]
    out = np.zeros((y2 - y1, x2 - x1, 3), dtype=np.uint8)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
    out[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = image[sy1:sy2, sx1:sx2]
    return out
