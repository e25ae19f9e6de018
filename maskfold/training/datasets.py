"""The training data path: decode once into RAM, augment in workers, normalise on the device.

Images are kept as uint8 at training size (18,900 crops at 256x192 take 2.8 GB), so
an epoch costs augmentation only, never JPEG decoding.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # else its import asks the network for a newer version
import albumentations as A  # noqa: E402
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from maskfold.signals import loader_worker
from maskfold.training.config import TrainConfig

FLIP = [A.HorizontalFlip(p=0.5)]
# Presets; a name, or the path of a pipeline saved by albumentations (A.save, .json or .yaml) with --aug FILE.
# The four face presets each add one family of what competitors use on faces to the flip.
AUGS = {
    "none": lambda: [],
    "light": lambda: [*FLIP, A.Affine(scale=(0.92, 1.08), translate_percent=(-0.04, 0.04), rotate=(-8, 8), p=0.7),
                      A.RandomBrightnessContrast(0.15, 0.15, p=0.5)],
    # The team baseline of COMPETITION.md (Resize is the cache's, Normalize the device's).
    "seed": lambda: [A.ColorJitter(brightness=(0.2, 3), contrast=(0.2, 3), saturation=(0.2, 3), hue=(-0.3, 0.3),
                                   p=1.0), *FLIP],
    "ssr": lambda: [*FLIP, A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), rotate=(-15, 15), p=0.8)],
    "dropout": lambda: [*FLIP, A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.08, 0.2),
                                               hole_width_range=(0.08, 0.2), p=0.5)],
    "noise": lambda: [*FLIP, A.GaussNoise(std_range=(0.02, 0.08), p=0.5), A.GaussianBlur(blur_limit=(3, 5), p=0.2)],
    "colour": lambda: [*FLIP, A.ColorJitter(0.25, 0.25, 0.25, 0.05, p=0.8), A.ToGray(p=0.1)],
    "strong": lambda: [*FLIP, A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), rotate=(-15, 15), p=0.8),
                       A.ColorJitter(0.25, 0.25, 0.25, 0.05, p=0.8),
                       A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
                       A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.08, 0.2),
                                       hole_width_range=(0.08, 0.2), p=0.5)],
}
AUG_FILES = (".json", ".yaml", ".yml")


def is_aug_file(aug: str) -> bool:
    return aug.lower().endswith(AUG_FILES)


def build_aug(aug: str):
    """The training augmentation: a preset's Compose, or the pipeline saved in a file (None: nothing to do). A
    file that does not load is one line naming it."""
    if not is_aug_file(aug):
        steps = AUGS[aug]()
        return A.Compose(steps) if steps else None
    from maskfold.cli import UserError

    path = Path(aug)
    if not path.is_file():
        raise UserError(f"--aug {aug}: no such file")
    try:
        tf = A.load(str(path), data_format="json" if path.suffix.lower() == ".json" else "yaml")
    except Exception as e:  # albumentations raises many kinds on a file it cannot read
        raise UserError(f"--aug {aug}: not an albumentations pipeline ({type(e).__name__}: {e})") from None
    if not isinstance(tf, A.BaseCompose):
        tf = A.Compose([tf])
    return tf


NOT_ON_CACHED = ("Normalize", "ToFloat", "FromFloat", "ToTensorV2")  # train.py's own steps, done on the device


def walk(tf):
    """Every transform of a pipeline, nested ones (OneOf, Sequential) too."""
    yield tf
    for t in getattr(tf, "transforms", []) or []:
        yield from walk(t)


def check_aug_file(aug: str, img_size: tuple[int, int]) -> None:
    """An --aug file must take the cached uint8 crop at --img-size to a uint8 image of the same size: the crops
    are cached resized and normalised on the device with the model's statistics, so a Normalize in the file
    would normalise twice and a Resize or crop would train at another size than validation and predict see."""
    from maskfold.cli import UserError

    steps = [t.__class__.__name__ for t in walk(build_aug(aug))]
    found = [n for n in steps if n in NOT_ON_CACHED]
    if found:
        raise UserError(f"--aug {aug}: drop its {found[0]}: train.py normalises on the device with the model's mean "
                        "and std, and the file's transforms must keep the uint8 image")
    probe = build_aug(aug)  # a second copy, every step switched on, to see what it does to a crop
    for t in walk(probe):
        if hasattr(t, "p"):
            t.p = 1.0
    h, w = img_size
    x = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for seed in range(4):
        probe.set_random_seed(seed)
        y = probe(image=x)["image"]
        if not isinstance(y, np.ndarray) or y.shape != x.shape or y.dtype != np.uint8:
            what = f"{y.shape[0]}x{y.shape[1]} {y.dtype}" if isinstance(y, np.ndarray) else type(y).__name__
            raise UserError(f"--aug {aug}: turns a {h}x{w} uint8 crop into {what}: its transforms must keep the size "
                            f"and type (the crops are cached at --img-size {h} {w}, where validation and predict.py "
                            "see them); drop its Resize or crop, or give that size as --img-size")


def aug_record(aug: str) -> dict:
    """What a run records of its augmentation: a file's pipeline itself, so that a changed file is seen."""
    if not is_aug_file(aug):
        return {}
    import hashlib
    import json

    pipeline = A.to_dict(build_aug(aug))
    return {"aug_pipeline": pipeline,
            "aug_digest": hashlib.sha256(json.dumps(pipeline, sort_keys=True).encode()).hexdigest()[:16]}


CUTMIX_MODES = ("box", "vertical", "half")
MIXES = ("cutmix", "mixup")


class CachedImages(Dataset):
    """Cached images with labels; augmentation is seeded by (epoch seed, index), so it does not
    depend on which worker draws a sample, and a resumed run repeats it exactly. `soft`: per-task
    probabilities (N, 8: mask 3, gender 2, age 3; NaN rows keep their label), from which a row's
    label is drawn afresh each epoch, seeded alike (soft labels, as cross entropy sees them on average)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, aug: str = "none", soft: np.ndarray | None = None):
        self.images, self.labels = images, torch.as_tensor(labels, dtype=torch.long)
        self.tf = build_aug(aug)
        self.epoch_seed = 0
        self.soft = soft

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        """key: an index, or (epoch seed, index) from EpochSampler."""
        seed, i = key if isinstance(key, tuple) else (self.epoch_seed, key)
        x = self.images[i]
        if self.tf is not None:
            self.tf.set_random_seed((seed * 1_000_003 + int(i)) % 2**32)
            x = self.tf(image=x)["image"]
        return torch.from_numpy(np.ascontiguousarray(x)), self.label(seed, int(i))

    def label(self, seed: int, i: int):
        if self.soft is None or np.isnan(self.soft[i, 0]):
            return self.labels[i]
        rng = np.random.default_rng([seed, i, 1])
        p = self.soft[i]
        m, g, a = (rng.choice(len(q), p=q / q.sum()) for q in (p[:3], p[3:5], p[5:]))
        return torch.tensor(m * 6 + g * 3 + a, dtype=torch.long)


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch seed, index): each index carries its epoch's augmentation seed, so the loader's
    workers can persist across epochs instead of being forked again to learn the new epoch. The order
    is a permutation seeded by the epoch seed alone (or a DistributedSampler's share, under torchrun)."""

    def __init__(self, n: int, distributed=None):
        self.n, self.distributed, self.seed = n, distributed, 0

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.seed = seed
        if self.distributed is not None:
            self.distributed.set_epoch(epoch)

    def __iter__(self):
        if self.distributed is not None:
            order = list(self.distributed)
        else:
            g = torch.Generator().manual_seed(self.seed)
            torch.empty((), dtype=torch.int64).random_(generator=g)  # the draw a seeded DataLoader makes first
            order = torch.randperm(self.n, generator=g).tolist()
        return iter([(self.seed, i) for i in order])

    def __len__(self) -> int:
        return len(self.distributed) if self.distributed is not None else self.n


def to_input(x: torch.Tensor, mean, std, device, channels_last: bool = True) -> torch.Tensor:
    """uint8 NHWC batch -> normalised float NCHW on the device (cheaper there than in workers)."""
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def to_display(x: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised NCHW batch back to uint8 NHWC pictures, as the model sees them."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x.float() * s + m).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def cutmix(x: torch.Tensor, y: torch.Tensor, alpha: float, mode: str, gen: torch.Generator):
    """Paste a region of a shuffled batch into x. Returns (x, y_a, y_b, lam) with lam the share of
    pixels left from x, measured after clipping. `vertical` pastes a full-height strip and `half`
    a left or right half: both keep the mask region of a face whole."""
    n, _, H, W = x.shape
    perm = torch.randperm(n, generator=gen).to(x.device)
    u = torch.rand(3, generator=gen).tolist()
    lam0 = float(np.random.default_rng(int(u[0] * 2**31)).beta(alpha, alpha))
    if mode == "box":
        cw, ch = int(W * np.sqrt(1 - lam0)), int(H * np.sqrt(1 - lam0))
        cx, cy = int(u[1] * W), int(u[2] * H)
        x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
        y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
    elif mode == "vertical":
        cw = int(round(W * (1 - lam0)))
        x1 = int(u[1] * (W - cw + 1))
        x2, y1, y2 = x1 + cw, 0, H
    elif mode == "half":
        x1, x2 = (0, W // 2) if u[1] < 0.5 else (W // 2, W)
        y1, y2 = 0, H
    else:
        raise ValueError(f"unknown cutmix mode {mode!r}")
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    lam = 1 - (x2 - x1) * (y2 - y1) / (W * H)
    return x, y, y[perm], lam


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, gen: torch.Generator):
    """Blend each image with one of a shuffled batch: (x, y_a, y_b, lam), lam ~ Beta(a, a) the share of x."""
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    u = torch.rand(1, generator=gen).item()
    lam = float(np.random.default_rng(int(u * 2**31)).beta(alpha, alpha))
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


def mix(kind: str, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, cutmix_alpha: float, cutmix_mode: str,
        mixup_alpha: float):
    """One mechanism for both: the loss is lam * loss(y_a) + (1 - lam) * loss(y_b), lam the share of x
    (CutMix: of its pixels left in place)."""
    if kind == "cutmix":
        return cutmix(x, y, cutmix_alpha, cutmix_mode, gen)
    return mixup(x, y, mixup_alpha, gen)


def make_loader(ds, cfg: TrainConfig, place, seed: int):
    """One loader per fold; its workers persist across epochs (EpochSampler brings each epoch's seed)."""
    import torch
    from torch.utils.data import DataLoader

    from maskfold.training.datasets import EpochSampler

    distributed = None
    if place.world > 1:
        from torch.utils.data.distributed import DistributedSampler
        distributed = DistributedSampler(ds, place.world, place.rank, shuffle=True, seed=seed, drop_last=True)
    sampler = EpochSampler(len(ds), distributed)
    loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=place.device.startswith("cuda"), drop_last=len(sampler) > cfg.batch_size,
                        persistent_workers=cfg.workers > 0, multiprocessing_context="fork" if cfg.workers else None,
                        worker_init_fn=loader_worker if cfg.workers else None,
                        # its own generator: the base seed a loader draws when its workers start would otherwise
                        # come from the global one, once a session with persistent workers, so a resumed epoch
                        # would run other dropout masks than the same epoch uninterrupted
                        generator=torch.Generator().manual_seed(seed))
    return loader, sampler


@dataclass(frozen=True)
class FoldData:
    """A fold's training set (folds.csv's other folds, and --extra's pseudo-labelled photos) and its validation
    photos, cached at training size."""
    train: CachedImages
    targets: np.ndarray
    val: pd.DataFrame
    val_images: np.ndarray


def fold_data(cfg, df: pd.DataFrame, extra: pd.DataFrame | None, log) -> FoldData:
    """Decode the fold's photos once into RAM; pseudo-labelled photos train only, never validate."""
    import time

    from maskfold.images import load_cache
    from maskfold.training.trainer import train_targets

    tr, va = (df[df["fold"] != cfg.fold].reset_index(drop=True), df[df["fold"] == cfg.fold].reset_index(drop=True))
    t = time.time()
    extra_files = extra["file"].tolist() if extra is not None else []
    tr_images = load_cache(tr["file"].tolist() + extra_files, cfg.img_size)
    va_images = load_cache(va["file"].tolist(), cfg.img_size)
    added = f" (+ {len(extra_files)} pseudo-labelled from {cfg.extra})" if extra is not None else ""
    log(f"cached {len(tr)} train{added} + {len(va)} val images at {cfg.img_size[0]}x{cfg.img_size[1]} in "
        f"{time.time() - t:.1f}s ({(tr_images.nbytes + va_images.nbytes) / 2**20:.0f} MiB)")
    targets = train_targets(tr, cfg.old_age)
    soft = None
    if extra is not None:
        from maskfold.labelling.pseudo_labels import soft_cols

        targets = np.concatenate([targets, extra["label"].to_numpy()])
        if cfg.extra_soft:
            soft = np.full((len(targets), 8), np.nan)
            soft[len(tr):] = extra[soft_cols(cfg.fold)].to_numpy()
    return FoldData(CachedImages(tr_images, targets, cfg.aug, soft), targets, va, va_images)
