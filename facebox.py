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


# MTCNN's defaults: faces from 20 px, pyramid factor 0.709. Their pyramid's levels for faces of
# 112-250 px (those of 384x512 portraits) begin at 20 / 0.709**5 = 111.46 px: starting the pyramid
# there gives those very levels, to the pixel, so boxes come out as MTCNN's defaults find them.
TAIL_OF_DEFAULTS = 20 / 0.709 ** 5


@dataclass
class Detector:
    """facenet-pytorch's MTCNN (its nets, thresholds and box logic) on batches of same-size photos.

    Where facenet-pytorch resamples the whole photo as float for every pyramid level and every
    candidate box (one `interpolate` per box), this takes each photo's integral image once (OpenCV,
    into a reused buffer) and reads every level and every box's 24x24 / 48x48 input from it: the same
    area means to the last bit or so, a fraction of the work. `detect_face` in facenet-pytorch is the
    reference; tests hold the two to the same boxes."""
    device: str = "cpu"
    scale: float = 1.0  # detect on a copy downscaled by this factor first (for photos much larger than 384x512)
    min_face: float = TAIL_OF_DEFAULTS  # smallest face to look for, in source pixels
    min_prob: float = 0.75
    min_size: int = 40  # smallest plausible face box side, in source pixels

    def __post_init__(self):
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(device=self.device, keep_all=True)
        self.mtcnn.eval()
        # Same boxes (to 1e-4 px), 1.6x faster on a CPU: max-pooling's channels-last kernel is the fast one.
        for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet):
            net.to(memory_format=torch.channels_last)
        self._integral = np.zeros(0, np.int32)  # reused: a fresh 100 MB buffer per batch costs page faults

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

    def _integrals(self, batch: list[np.ndarray]) -> torch.Tensor:
        """Integral images (N, H+1, W+1, 3), int32: S[n, r, c] = sum of photo n's pixels above r, left of c."""
        n, (h, w, c) = len(batch), batch[0].shape
        if self.device != "cpu":
            return integral_images(torch.from_numpy(np.stack(batch)).to(self.device))
        size = n * (h + 1) * (w + 1) * c
        if self._integral.size < size:
            self._integral = np.zeros(size, np.int32)
        s = self._integral[:size].reshape(n, h + 1, w + 1, c)
        for i, im in enumerate(batch):
            cv2.integral(np.ascontiguousarray(im), s[i], sdepth=cv2.CV_32S)
        return torch.from_numpy(s)

    @torch.inference_mode()
    def _detect_same_size(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        """facenet-pytorch's detect_face, step for step, with inputs read from integral images."""
        from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, bbreg, generateBoundingBox, rerec
        from torchvision.ops import batched_nms

        m = self.mtcnn
        S = self._integrals(batch)
        n, h, w = len(batch), S.shape[1] - 1, S.shape[2] - 1
        # Stage 1: PNet on each level of the pyramid, candidates kept per level and photo, then per photo.
        boxes, inds = [], []
        for scale, size in pyramid(h, w, self.min_face * self.scale, m.factor):
            reg, probs = m.pnet(normalised(level_means(S, *size)))
            found, found_inds = generateBoundingBox(reg, probs[:, 1], scale, m.thresholds[0])
            pick = batched_nms(found[:, :4], found[:, 4], found_inds, 0.5)
            boxes.append(found[pick])
            inds.append(found_inds[pick])
        if not boxes:  # photos smaller than the smallest face
            return [np.zeros((0, 5)) for _ in batch]
        boxes, inds = torch.cat(boxes), torch.cat(inds)
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
        boxes, inds = boxes[pick], inds[pick]
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * bw, boxes[:, 1] + boxes[:, 6] * bh,
                             boxes[:, 2] + boxes[:, 7] * bw, boxes[:, 3] + boxes[:, 8] * bh, boxes[:, 4]], 1)
        boxes = rerec(boxes)
        # Stage 2: RNet on each candidate's 24x24 input.
        if len(boxes):
            boxes, inds, x = box_inputs(S, boxes, inds, 24)
            reg, probs = m.rnet(normalised(x))
            ok = probs[:, 1] > m.thresholds[1]
            boxes, inds, reg = torch.cat([boxes[ok, :4], probs[ok, 1:2]], 1), inds[ok], reg[ok]
            pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
            boxes = rerec(bbreg(boxes[pick], reg[pick]))
            inds = inds[pick]
        # Stage 3: ONet on 48x48 inputs, then MTCNN's "Min" suppression.
        if len(boxes):
            boxes, inds, x = box_inputs(S, boxes, inds, 48)
            reg, _, probs = m.onet(normalised(x))
            ok = probs[:, 1] > m.thresholds[2]
            boxes = bbreg(torch.cat([boxes[ok, :4], probs[ok, 1:2]], 1), reg[ok])
            inds = inds[ok]
            pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], inds, 0.7, "Min")
            boxes, inds = boxes[pick], inds[pick]
        boxes, inds = boxes[:, :5].cpu().numpy().astype(np.float64), inds.cpu().numpy()
        return [boxes[inds == i] for i in range(n)]

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


def pyramid(h: int, w: int, min_face: float, factor: float = 0.709) -> list[tuple[float, tuple[int, int]]]:
    """MTCNN's image pyramid for an h x w photo: (scale, (rows, columns)) of each level, by facenet-pytorch's
    rule (levels shrink by `factor` while the smaller side still holds PNet's 12-pixel window)."""
    scale, levels = 12.0 / min_face, []
    while min(h, w) * scale >= 12:
        levels.append((scale, (int(h * scale + 1), int(w * scale + 1))))
        scale *= factor
    return levels


def integral_images(x: torch.Tensor) -> torch.Tensor:
    """Integral images of a (N, H, W, C) uint8 batch on any device (crop.py's GPU path; on a CPU OpenCV's
    is 20x faster)."""
    n, h, w, c = x.shape
    s = torch.zeros((n, h + 1, w + 1, c), dtype=torch.int32, device=x.device)
    s[:, 1:, 1:] = x.cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
    return s


def area_windows(start: torch.Tensor, length: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (or columns) [first, last) that each of `out` outputs averages over when a span of `length`
    from `start` is resampled by area: PyTorch's adaptive average pooling, which MTCNN's resize is."""
    i = torch.arange(out, device=start.device)
    return (start[:, None] + i * length[:, None] // out,
            start[:, None] + ((i + 1) * length[:, None] + out - 1) // out)


def level_means(S: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
    """(N, C, ho, wo): every photo resampled by area to ho x wo, from its integral image."""
    n, h, w = S.shape[0], S.shape[1] - 1, S.shape[2] - 1
    zero = torch.zeros(n, dtype=torch.long, device=S.device)
    return box_means(S, torch.arange(n, device=S.device), *area_windows(zero, zero + h, ho),
                     *area_windows(zero, zero + w, wo))


def box_means(S: torch.Tensor, n: torch.Tensor, r0, r1, c0, c1) -> torch.Tensor:
    """(K, C, ho, wo): means of photo n[k] over rows [r0, r1) x columns [c0, c1), from integral images S:
    the four corners of every window in one gather, each photo's together (they share the cache)."""
    h1, w1, c = S.shape[1:]
    base = (n * h1 * w1)[:, None, None]
    top, bottom = base + (r0 * w1)[:, :, None], base + (r1 * w1)[:, :, None]
    left, right = c0[:, None, :], c1[:, None, :]
    corners = torch.stack([bottom + right, top + right, bottom + left, top + left], 1)
    g = S.view(-1, c).index_select(0, corners.view(-1)).view(*corners.shape, c)
    sums = g[:, 0] - g[:, 1] - g[:, 2] + g[:, 3]
    area = ((r1 - r0)[:, :, None] * (c1 - c0)[:, None, :])[..., None]
    return (sums.float() / area.float()).permute(0, 3, 1, 2)  # channels-last, like the nets


def normalised(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def box_inputs(S: torch.Tensor, boxes: torch.Tensor, inds: torch.Tensor, size: int):
    """Each box's size x size input for RNet / ONet: its part inside the photo, resampled by area.
    Boxes wholly outside the photo are dropped (facenet-pytorch skips them too)."""
    from facenet_pytorch.models.utils.detect_face import pad

    h, w = S.shape[1] - 1, S.shape[2] - 1
    y, ey, x, ex = (torch.from_numpy(v).long().to(S.device) for v in pad(boxes, w, h))
    ok = (ey > y - 1) & (ex > x - 1)
    y, ey, x, ex, boxes, inds = y[ok], ey[ok], x[ok], ex[ok], boxes[ok], inds[ok]
    rows = area_windows(y - 1, ey - y + 1, size)
    cols = area_windows(x - 1, ex - x + 1, size)
    return boxes, inds, box_means(S, inds, *rows, *cols)


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
