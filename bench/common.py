"""What the benchmarks share: running a script as a user would, timing a model alone, timing the loader."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable


def iou(a, b) -> float:
    """IoU of two x1,y1,x2,y2 boxes (torchvision's)."""
    from torchvision.ops import box_iou

    a, b = (torch.from_numpy(np.asarray([x], dtype=np.float64)) for x in (a, b))
    return float(box_iou(a, b)[0, 0])


class StepFailed(RuntimeError):
    """A pipeline script ended with an error: its name, exit code and the end of what it printed."""


def step(name: str, args: list[str], times: dict, env: dict | None = None) -> dict:
    """Run one pipeline script as a user would; its last stdout line is its JSON result."""
    t = time.time()
    r = subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", **(env or {})))
    times[name] = round(time.time() - t, 1)
    if r.returncode != 0:
        raise StepFailed(f"{name} failed ({r.returncode}): {r.stderr[-2000:]}")
    print(f"{name}: {times[name]} s", file=sys.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def timed_rate(fn, batch: int, steps: int, device: str, blocks: int = 3) -> float:
    """Images per second of `fn` (one batch per call): two warm-up calls, then the median of `blocks`
    timed blocks of `steps` calls (a shared machine's hiccups land in one block, not in the ratio)."""
    fn()
    fn()
    rates = []
    for _ in range(blocks):
        sync(device)
        t = time.time()
        for _ in range(steps):
            fn()
        sync(device)
        rates.append(batch * steps / (time.time() - t))
    return float(np.median(rates))


def model_only_train(model: str, head: str, batch: int, size, device: str, amp: bool, steps: int = 12) -> float:
    from maskfold.device import amp_dtype, autocast

    import models

    net = models.create(model, head, pretrained=False).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters())
    x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, models.HEADS[head], (batch,), device=device)

    def one_step():
        with autocast(device, amp_dtype(device, amp)):
            loss = torch.nn.functional.cross_entropy(net(x).float()[:, :models.HEADS[head]], y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return timed_rate(one_step, batch, steps, device)


@torch.inference_mode()
def model_only_infer(model: str, batch: int, size, device: str, amp: bool, steps: int = 10) -> float:
    from maskfold.device import amp_dtype, autocast

    import models

    net = models.create(model, "multi", pretrained=False).to(device).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=torch.channels_last)

    def one_pass():
        with autocast(device, amp_dtype(device, amp)):
            net(x)

    return timed_rate(one_pass, batch, steps, device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def loaders(files: list[str], size, batch: int, workers: int, device: str, least: int = 3000) -> tuple[float, float]:
    """img/s of train.py's data path alone (cache + albumentations + device normalise) and of the
    teams' loader (PIL open per image + torchvision transforms), same workers and batch."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    from maskfold.forward import to_input
    from maskfold.images import load_cache
    from maskfold.training.data import CachedImages

    def rate(loader, norm):
        """img/s over whole epochs until `least` images, after the first batch (worker start-up)."""
        n, t = 0, None
        while n < least:
            for x, _ in loader:
                if t is None:
                    t = time.time()
                    continue
                x = norm(x)
                n += len(x)
        sync(device)
        return n / (time.time() - t)

    ours = CachedImages(load_cache(files, size), np.zeros(len(files), int), "seed")
    mine = rate(DataLoader(ours, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                           persistent_workers=workers > 0),
                lambda x: to_input(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), device))

    class Peer(Dataset):
        tf = T.Compose([T.Resize(list(size)), T.ColorJitter(brightness=(0.2, 3)), T.ColorJitter(contrast=(0.2, 3)),
                        T.ColorJitter(saturation=(0.2, 3)), T.ColorJitter(hue=(-0.3, 0.3)), T.RandomHorizontalFlip(),
                        T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            from PIL import Image
            return self.tf(Image.open(files[i]).convert("RGB")), 0

    peer = rate(DataLoader(Peer(), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                           persistent_workers=workers > 0),
                lambda x: x.to(device))
    return mine, peer
