"""MTCNN face detection on batches of photos, with every resampling read from integral images.

facenet-pytorch's `detect_face` resamples the whole photo as float for every pyramid level and
every candidate box (one `interpolate` call per box). Here each photo's integral image is taken
once (OpenCV, into a reused buffer; torch.cumsum on a GPU) and every level's and every box's
24x24 / 48x48 input is read from it: the same area means, a fraction of the work. The nets,
thresholds and box logic are facenet-pytorch's own, including a few of its private helpers:
`check_facenet` names the one that changed if an upgrade moves them, and tests hold the boxes
to `detect_face`'s.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from maskfold.cli import UserError
from maskfold.crop.facebox import TAIL_OF_DEFAULTS

# facenet-pytorch's private helpers this module calls, with the parameters it passes (2.5.3).
FACENET_HELPERS = {"generateBoundingBox": ("reg", "probs", "scale", "thresh"),
                   "batched_nms_numpy": ("boxes", "scores", "idxs", "threshold", "method"),
                   "bbreg": ("boundingbox", "reg"), "rerec": ("bboxA",), "pad": ("boxes", "w", "h")}


def check_facenet():
    """facenet-pytorch's detect_face module, after checking the helpers used here are still there as
    they were; one line naming the first that is not."""
    import facenet_pytorch
    from facenet_pytorch.models.utils import detect_face as module

    version = getattr(facenet_pytorch, "__version__", "?")
    for name, params in FACENET_HELPERS.items():
        fn = getattr(module, name, None)
        found = tuple(inspect.signature(fn).parameters) if callable(fn) else None
        if found != params:
            now = "gone" if found is None else f"now ({', '.join(found)})"
            raise UserError(f"facenet-pytorch {version}: detect_face.{name} is {now}, where crop.py's detector "
                            f"needs ({', '.join(params)}); install facenet-pytorch==2.5.3")
    return module


@dataclass
class Detector:
    """facenet-pytorch's MTCNN (its nets, thresholds and box logic) on batches of photos."""
    device: str = "cpu"
    scale: float = 1.0  # detect on a copy downscaled by this factor first (for photos much larger than 384x512)
    min_face: float = TAIL_OF_DEFAULTS  # smallest face to look for, in source pixels

    def __post_init__(self):
        from facenet_pytorch import MTCNN

        self.helpers = check_facenet()
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
        """Integral images (N, H+1, W+1, 3): S[n, r, c] = sum of photo n's pixels above r, left of c.
        int32 while a whole photo's sum fits (up to 8.4 megapixels); exact float64 above that."""
        n, (h, w, c) = len(batch), batch[0].shape
        wide = h * w * 255 >= 2**31
        if self.device != "cpu":
            return integral_images(torch.from_numpy(np.stack(batch)).to(self.device))
        dtype = np.float64 if wide else np.int32
        size = n * (h + 1) * (w + 1) * c
        if self._integral.size < size or self._integral.dtype != dtype:
            self._integral = np.zeros(size, dtype)
        s = self._integral[:size].reshape(n, h + 1, w + 1, c)
        for i, im in enumerate(batch):
            cv2.integral(np.ascontiguousarray(im), s[i], sdepth=cv2.CV_64F if wide else cv2.CV_32S)
        return torch.from_numpy(s)

    @torch.inference_mode()
    def _detect_same_size(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        """facenet-pytorch's detect_face, step for step, with inputs read from integral images."""
        from torchvision.ops import batched_nms

        m, f = self.mtcnn, self.helpers
        S = self._integrals(batch)
        n, h, w = len(batch), S.shape[1] - 1, S.shape[2] - 1
        # Stage 1: PNet on each level of the pyramid, candidates kept per level and photo, then per photo.
        boxes, inds = [], []
        for scale, size in pyramid(h, w, self.min_face * self.scale, m.factor):
            reg, probs = m.pnet(normalised(level_means(S, *size)))
            found, found_inds = f.generateBoundingBox(reg, probs[:, 1], scale, m.thresholds[0])
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
        boxes = f.rerec(boxes)
        # Stage 2: RNet on each candidate's 24x24 input.
        if len(boxes):
            boxes, inds, x = box_inputs(S, boxes, inds, 24, f.pad)
            reg, probs = m.rnet(normalised(x))
            ok = probs[:, 1] > m.thresholds[1]
            boxes, inds, reg = torch.cat([boxes[ok, :4], probs[ok, 1:2]], 1), inds[ok], reg[ok]
            pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
            boxes = f.rerec(f.bbreg(boxes[pick], reg[pick]))
            inds = inds[pick]
        # Stage 3: ONet on 48x48 inputs, then MTCNN's "Min" suppression.
        if len(boxes):
            boxes, inds, x = box_inputs(S, boxes, inds, 48, f.pad)
            reg, _, probs = m.onet(normalised(x))
            ok = probs[:, 1] > m.thresholds[2]
            boxes = f.bbreg(torch.cat([boxes[ok, :4], probs[ok, 1:2]], 1), reg[ok])
            inds = inds[ok]
            pick = f.batched_nms_numpy(boxes[:, :4], boxes[:, 4], inds, 0.7, "Min")
            boxes, inds = boxes[pick], inds[pick]
        boxes, inds = boxes[:, :5].cpu().numpy().astype(np.float64), inds.cpu().numpy()
        return [boxes[inds == i] for i in range(n)]
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
    is 20x faster): int32 while a whole photo's sum fits, int64 above that."""
    n, h, w, c = x.shape
    dtype = torch.int64 if h * w * 255 >= 2**31 else torch.int32
    s = torch.zeros((n, h + 1, w + 1, c), dtype=dtype, device=x.device)
    s[:, 1:, 1:] = x.cumsum(1, dtype=dtype).cumsum(2, dtype=dtype)
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


def box_inputs(S: torch.Tensor, boxes: torch.Tensor, inds: torch.Tensor, size: int, pad):
    """Each box's size x size input for RNet / ONet: its part inside the photo, resampled by area.
    Boxes wholly outside the photo are dropped (facenet-pytorch skips them too)."""
    h, w = S.shape[1] - 1, S.shape[2] - 1
    y, ey, x, ex = (torch.from_numpy(v).long().to(S.device) for v in pad(boxes, w, h))
    ok = (ey > y - 1) & (ex > x - 1)
    y, ey, x, ex, boxes, inds = y[ok], ey[ok], x[ok], ex[ok], boxes[ok], inds[ok]
    rows = area_windows(y - 1, ey - y + 1, size)
    cols = area_windows(x - 1, ex - x + 1, size)
    return boxes, inds, box_means(S, inds, *rows, *cols)


