"""Face boxes: batched MTCNN detection, plausibility, fallbacks and crop geometry.

Hand-written where facenet-pytorch stops: it detects faces, but choosing one box per
photo, judging it against the person's other photos, and growing it into a crop of
one fixed aspect ratio is the field's own work.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass
class Geometry:
    margin_x: float = 0.25  # of the face width, each side
    margin_top: float = 0.35  # of the face height (keeps the forehead and hair)
    margin_bottom: float = 0.25  # of the face height (keeps the chin, where masks sit)
    aspect: float = 0.75  # width / height of every crop: 3:4 like the 384x512 photos


@dataclass
class Detector:
    device: str = "cpu"
    scale: float = 0.5  # detect on a downscaled copy: faces in these portraits are large
    # Smallest face to look for, in source pixels. 112 = 20 / 0.709**5: the image pyramid is then the
    # tail of the one MTCNN's defaults (min_face_size=20, factor 0.709) build, so large faces come out
    # as the defaults find them (measured: 234 img/s against 162 at 100, batch 32, half size, 2 CPU
    # threads); 384x512 portraits hold faces of 100-250 px.
    min_face: int = 112
    min_prob: float = 0.75
    min_size: int = 40  # smallest plausible face box side, in source pixels

    def __post_init__(self):
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(device=self.device, keep_all=True)
        self.mtcnn.eval()
        # Same boxes (to 1e-4 px), 1.6x faster on a CPU: max-pooling's channels-last kernel is the fast one.
        for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet):
            net.to(memory_format=torch.channels_last)

    def detect(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per image, an array (n, 5) of candidate boxes x1,y1,x2,y2,prob in source pixels."""
        small = [cv2.resize(im, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
                 if self.scale != 1 else im for im in images]
        out: list[np.ndarray | None] = [None] * len(images)
        by_shape: dict[tuple, list[int]] = {}
        for i, im in enumerate(small):
            by_shape.setdefault(im.shape, []).append(i)
        for idx in by_shape.values():
            for i, boxes in zip(idx, self._detect_same_size([small[i] for i in idx])):
                boxes = boxes.astype(np.float64).reshape(-1, 5)
                boxes[:, :4] /= self.scale
                out[i] = boxes
        return out

    @torch.inference_mode()
    def _detect_same_size(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        from facenet_pytorch.models.utils.detect_face import detect_face

        m = self.mtcnn
        try:
            x = torch.from_numpy(np.stack(batch)).to(self.device)
            boxes, _ = detect_face(x, self.min_face * self.scale, m.pnet, m.rnet, m.onet, m.thresholds, m.factor,
                                   self.device)
            return [np.asarray(b, dtype=np.float64).reshape(-1, 5) for b in boxes]
        except ValueError:
            # facenet-pytorch packs ragged per-image results with numpy, which some numpy
            # releases refuse for some mixes of found / not found: split the batch and retry.
            if len(batch) == 1:
                return [np.zeros((0, 5))]
            half = len(batch) // 2
            return self._detect_same_size(batch[:half]) + self._detect_same_size(batch[half:])

    def best(self, candidates: np.ndarray) -> tuple[np.ndarray | None, float | None, str]:
        """The most likely face of a photo: (box, prob, why-not when None)."""
        if len(candidates) == 0:
            return None, None, "no face"
        w = candidates[:, 2] - candidates[:, 0]
        h = candidates[:, 3] - candidates[:, 1]
        ok = (candidates[:, 4] >= self.min_prob) & (np.minimum(w, h) >= self.min_size)
        top = int(np.argmax(candidates[:, 4]))
        if not ok.any():
            why = "low prob" if candidates[top, 4] < self.min_prob else "too small"
            return None, float(candidates[top, 4]), why
        # Portraits hold one person: the largest confident face is theirs, not a pattern on a shirt.
        i = int(np.argmax(np.where(ok, w * h, -1)))
        return candidates[i, :4], float(candidates[i, 4]), ""


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x1,y1,x2,y2 boxes."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    return float(inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter))


def agrees(box: np.ndarray, ref: np.ndarray, shift: float = 0.35, size: float = 0.6) -> bool:
    """Whether a face box sits where the person's other photos put it."""
    cw, rw = box[2] - box[0], ref[2] - ref[0]
    centre = np.hypot((box[0] + box[2] - ref[0] - ref[2]) / 2, (box[1] + box[3] - ref[1] - ref[3]) / 2)
    return centre <= shift * rw and size <= cw / rw <= 1 / size


def consensus(boxes: list[np.ndarray]) -> np.ndarray | None:
    """Median box of a person's photos (all 7 share pose and framing)."""
    return np.median(np.stack(boxes), axis=0) if boxes else None


def signature(image: np.ndarray) -> np.ndarray:
    """A photo's look, minus the face region: a person's photos share background, hair and clothes,
    and differ only where the mask is. Unit vector; photos of one person have the largest dot products."""
    x = cv2.resize(image, (24, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    keep = np.ones((32, 24), bool)
    keep[10:26, 5:19] = False  # the face, where a prior would put it (rows .3-.8, columns .2-.8)
    x = x[keep].ravel()
    x -= x.mean()
    return x / (np.linalg.norm(x) + 1e-6)


def borrow(sims: np.ndarray, boxes: list, k: int = 6, floor: float = 0.5) -> tuple[np.ndarray | None, int]:
    """For a photo without a face in a folder of unnamed photos: the consensus box of its k most similar
    photos (its person's others, when the folder holds them), if at least two of those show faces that
    agree with the most similar one. `boxes` are face boxes as fractions of each photo's size, None where
    it has none. On demo photos, one person's photos have similarities 0.71-1 (other people's up to 0.94:
    hence the top k, not a threshold); the floor only keeps a blank card from borrowing anything."""
    near = [boxes[i] for i in np.argsort(-sims)[:k] if boxes[i] is not None and sims[i] >= floor]
    if len(near) < 2:
        return None, len(near)
    # The most similar photo with a face is the likeliest to be the same person: the others must agree
    # with it (a median would side with other people whenever the person has fewer faces among the k).
    near = [b for b in near if agrees(b, near[0])]
    return (consensus(near), len(near)) if len(near) >= 2 else (None, len(near))


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
