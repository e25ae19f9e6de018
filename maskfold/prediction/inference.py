"""The inference loops: 18-class probabilities of cached images a batch at a time, with TTA views, and of many
checkpoints over eval files decoded once per image size, the next chunk read ahead."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from maskfold.forward import predict_probs
from maskfold.labels import NUM_CLASSES


def predict_all(nets, files: list[Path], batch_size: int, dev: str, amp, tta: tuple, chunk: int = 512,
                each: bool = False):
    """Summed probabilities of every checkpoint (`each`: one array per checkpoint, stacked). Images are decoded
    once per image size, a chunk at a time, the next chunk in the background while the checkpoints run on this
    one, by the cores torch's threads leave free (on a CPU; one at least; the first chunk by all of them)."""
    from concurrent.futures import ThreadPoolExecutor

    from maskfold.images import load_cache, read_ahead
    from maskfold.threads import usable_cores

    sizes = sorted({tuple(ck["img_size"]) for _, ck in nets})
    probs = np.zeros((len(nets), len(files), NUM_CLASSES))
    free = max(1, usable_cores() - torch.get_num_threads()) if dev == "cpu" else None

    def decode(start):  # the first chunk has no inference to overlap: every core decodes it
        return {size: load_cache(files[start:start + chunk], size, None if start == 0 else free) for size in sizes}

    with ThreadPoolExecutor(1) as ahead, tqdm(total=len(files) * len(nets), desc="predict", unit="img",
                                              file=sys.stderr, disable=None, mininterval=1) as bar:
        for start, caches in read_ahead(ahead, range(0, len(files), chunk), decode):
            for i, (net, ck) in enumerate(nets):
                cache = caches[tuple(ck["img_size"])]
                probs[i, start:start + len(cache)] = predict_probs(
                    net, ck["head"], cache, ck["mean"], ck["std"], dev, batch_size, amp, tta=tta)
                bar.update(len(cache))
    return probs if each else probs.sum(0)


def warm_up(nets, batch_size: int, n: int, dev: str, amp) -> None:
    """One batch of blanks per model: kernel choice and memory pools are start-up costs, not the rate's."""
    for net, ck in nets:
        blank = np.zeros((min(batch_size, n), *ck["img_size"], 3), np.uint8)
        predict_probs(net, ck["head"], blank, ck["mean"], ck["std"], dev, batch_size, amp)
