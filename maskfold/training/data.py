"""The training data path: decode once into RAM, augment in workers, normalise on the device.

Images are kept as uint8 at training size (18,900 crops at 256x192 take 2.8 GB), so
an epoch costs augmentation only, never JPEG decoding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from maskfold.signals import loader_worker
from maskfold.training.augment import build_aug
from maskfold.training.options import TrainConfig


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
    is a permutation seeded by the epoch seed alone (or a DistributedSampler's share, under torchrun).
    With `weights` (--sampler balanced or sqrt) an epoch is `draws` indices drawn with replacement by those
    weights, and with `draws` < n alone (--epoch-fraction) the first `draws` of the permutation; every process
    under torchrun makes the same draw from the epoch seed and takes every world-th of it from its rank on, so
    the processes share one draw and no slot of it is trained twice."""

    def __init__(self, n: int, distributed=None, weights: torch.Tensor | None = None, draws: int | None = None,
                 rank: int = 0, world: int = 1):
        self.n, self.distributed, self.seed = n, distributed, 0
        self.weights, self.draws, self.rank, self.world = weights, draws or n, rank, world

    @property
    def plain(self) -> bool:
        return self.weights is None and self.draws == self.n

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.seed = seed
        if self.distributed is not None:
            self.distributed.set_epoch(epoch)

    def __iter__(self):
        if self.distributed is not None:  # make_loader gives one for a plain epoch only
            order = list(self.distributed)
        else:
            g = torch.Generator().manual_seed(self.seed)
            torch.empty((), dtype=torch.int64).random_(generator=g)  # the draw a seeded DataLoader makes first
            if self.weights is None:
                order = torch.randperm(self.n, generator=g)[:self.draws].tolist()
            else:
                order = torch.multinomial(self.weights, self.draws, replacement=True, generator=g).tolist()
            if self.world > 1:
                order = order[self.rank::self.world][:len(self)]
        return iter([(self.seed, i) for i in order])

    def __len__(self) -> int:
        if self.distributed is not None:
            return len(self.distributed)
        return self.draws // self.world if self.world > 1 else self.draws


def sampling_weights(targets: np.ndarray, kind: str) -> torch.Tensor | None:
    """Each photo's chance to be drawn: uniform (None), balanced (1 / its class's count: every class drawn as
    often), sqrt (1 / the square root of its class's count: half way)."""
    if kind == "uniform":
        return None
    counts = np.bincount(targets, minlength=int(targets.max()) + 1).astype(np.float64)
    w = 1.0 / counts[targets] if kind == "balanced" else 1.0 / np.sqrt(counts[targets])
    return torch.as_tensor(w / w.sum(), dtype=torch.float64)


def make_loader(ds, cfg: TrainConfig, place, seed: int, targets: np.ndarray | None = None):
    """One loader per fold; its workers persist across epochs (EpochSampler brings each epoch's seed and, with
    --sampler or --epoch-fraction, its draw)."""
    from torch.utils.data import DataLoader

    distributed = None
    kind = getattr(cfg.sampler, "value", cfg.sampler)
    weights = sampling_weights(np.asarray(targets), kind)
    draws = max(int(round(cfg.epoch_fraction * len(ds))), 1)
    if place.world > 1 and weights is None and draws == len(ds):
        from torch.utils.data.distributed import DistributedSampler
        distributed = DistributedSampler(ds, place.world, place.rank, shuffle=True, seed=seed, drop_last=True)
    sampler = EpochSampler(len(ds), distributed, weights, draws, place.rank, place.world)
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
    from maskfold.labels import train_targets

    held = np.zeros(len(df), bool) if cfg.final else (df["fold"] == cfg.fold).to_numpy()  # --fold all: none held out
    tr, va = df[~held].reset_index(drop=True), df[held].reset_index(drop=True)
    t = time.time()
    extra_files = extra["file"].tolist() if extra is not None else []
    tr_images = load_cache(tr["file"].tolist() + extra_files, cfg.img_size)
    va_images = load_cache(va["file"].tolist(), cfg.img_size)
    added = f" (+ {len(extra_files)} pseudo-labelled from {cfg.extra})" if extra is not None else ""
    every = " (--fold all: every person trains)" if cfg.final else ""
    log(f"cached {len(tr)} train{added} + {len(va)} val{every} images at {cfg.img_size[0]}x{cfg.img_size[1]} in "
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
