"""The one path from a batch of cached images to what the model sees and to its 18-class probabilities, which
training (its validation) and prediction both take: below both, so neither borrows from the other."""
from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm import tqdm

from maskfold.device import autocast
from maskfold.labels import NUM_CLASSES, probs18
from maskfold.signals import stop_if_interrupted
from maskfold.tta import parse, views

_NORM: dict = {}


def to_input(x: torch.Tensor, mean, std, device, channels_last: bool = True) -> torch.Tensor:
    """uint8 NHWC batch -> normalised float NCHW on the device (cheaper there than in workers). The NHWC bytes
    seen as NCHW are already channels-last: one conversion and two in-place passes, no copy."""
    key = (tuple(mean), tuple(std), str(device))
    if key not in _NORM:  # (x / 255 - mean) / std = (x - 255 mean) / (255 std)
        _NORM[key] = (torch.tensor([255 * v for v in mean], device=device).view(1, 3, 1, 1),
                      torch.tensor([255 * v for v in std], device=device).view(1, 3, 1, 1))
    m, s = _NORM[key]
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float().sub_(m).div_(s)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def to_display(x: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised NCHW batch back to uint8 NHWC pictures, as the model sees them."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x.float() * s + m).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()



@torch.no_grad()
def predict_probs(net, head: str, images: np.ndarray, mean, std, device: str, batch_size: int,
                  amp: torch.dtype | None, channels_last: bool = True, tta: bool | str | tuple = (),
                  desc: str | None = None) -> np.ndarray:
    """18-class probabilities of cached uint8 images, averaged over the image and its `tta` views (names of
    maskfold.tta.VIEWS; True: the flip)."""
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
