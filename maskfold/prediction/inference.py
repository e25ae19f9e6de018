"""The inference loop: 18-class probabilities of cached images, a batch at a time, with TTA views."""
from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm import tqdm

from maskfold.device import autocast
from maskfold.labels import NUM_CLASSES, probs18
from maskfold.prediction.tta import parse, views
from maskfold.signals import stop_if_interrupted
from maskfold.training.datasets import to_input


@torch.no_grad()
def predict_probs(net, head: str, images: np.ndarray, mean, std, device: str, batch_size: int,
                  amp: torch.dtype | None, channels_last: bool = True, tta: bool | str | tuple = (),
                  desc: str | None = None) -> np.ndarray:
    """18-class probabilities of cached uint8 images, averaged over the image and its `tta` views (names of
    maskfold.prediction.tta.VIEWS; True: the flip)."""
    names = parse(tta)
    net.eval()
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, file=sys.stderr, leave=False, disable=desc is None):
        stop_if_interrupted()
        x = to_input(torch.from_numpy(images[i:i + batch_size]), mean, std, device, channels_last)
        with autocast(device, amp):
            vs = views(x, names)
            p = sum(probs18(net(v), head) for v in vs) / len(vs)
        out.append(p.float().cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, NUM_CLASSES))
