"""train.py with a stopwatch on each phase of a training step (CPU only: on a GPU the calls return before the work
is done), per image of the last epoch: waiting for the loader, moving and normalising the batch, forward, the
loss, backward, the optimizer step, and the rest of the loop.

    python bench/train_phases.py work/folds.csv --model mobilenetv3_small_100 --epochs 3 ...   # train.py's options

Prints train.py's own output, then one JSON line of the phases (ms per image) last.
"""
from __future__ import annotations

import collections
import json
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPENT: dict[str, float] = collections.defaultdict(float)
LAST: dict[str, float] = {}


def timed(name: str, fn):
    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            SPENT[name] += time.perf_counter() - t
    return wrapper


class Bar:
    """tqdm's place in train_epoch: the loader's iterator, with the wait for each batch timed."""

    def __init__(self, it, **kw):
        self.it = it

    def set_postfix(self, **kw):
        pass

    def __iter__(self):
        it = iter(self.it)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            SPENT["loader_wait"] += time.perf_counter() - t
            yield batch


def main() -> None:
    import torch

    from maskfold.training import trainer

    trainer.optimizer_step = timed("optimizer", trainer.optimizer_step)
    trainer.to_input = timed("to_input", trainer.to_input)
    trainer.tqdm = Bar
    build = trainer.build

    def built(*a, **kw):  # the model's forward and the loss of the fold train.py builds
        fold = build(*a, **kw)
        fold.net.forward = timed("forward", fold.net.forward)
        fold.crit = timed("loss", fold.crit)
        return fold

    trainer.build = built
    torch.Tensor.backward = timed("backward", torch.Tensor.backward)
    epoch_of = trainer.train_epoch

    def epoch(fold, loader, e):
        SPENT.clear()
        t = time.perf_counter()
        row = epoch_of(fold, loader, e)
        total = time.perf_counter() - t
        n = max(len(loader) * fold.cfg.batch_size, 1)
        LAST.clear()
        LAST.update({k: round(1000 * v / n, 3) for k, v in SPENT.items()})
        LAST["total"] = round(1000 * total / n, 3)
        LAST["rest"] = round(LAST["total"] - sum(v for k, v in LAST.items() if k != "total"), 3)
        return row

    trainer.train_epoch = epoch
    sys.argv = [str(ROOT / "train.py"), *sys.argv[1:]]
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    if LAST:
        print(json.dumps({"ms_per_image_last_epoch": LAST, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
