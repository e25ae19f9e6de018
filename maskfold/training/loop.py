"""A fold's epochs: train, validate (the EMA too), keep the best, save what --resume needs after each; then
finish it: plots, metrics.json and the run's rows."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from maskfold.blending.oof import write_oof
from maskfold.files import append_csv, write_csv, write_json
from maskfold.labels import PROB_COLS, TASKS
from maskfold.training.options import TrainConfig
from maskfold.training.results import results_row, rounded, write_summaries
from maskfold.training.tracking import Log, epoch_line, eta
from maskfold.tta import parse as parse_tta


def fit(fold, loader, sampler, va: pd.DataFrame, va_images: np.ndarray, start: int, log: Log, tracker) -> None:
    """The epochs: train, validate (the EMA too), keep the best, save what --resume needs after each; stop
    early after --patience epochs without a better val F1. The final model (--fold all) only trains: the last
    epoch's weights (their EMA's with --ema) become its best.pt."""
    from maskfold.training import averaging, checkpoint, trainer

    cfg = fold.cfg
    for epoch in range(start, cfg.epochs):
        if trainer.stop_early(fold, epoch):
            log(f"early stop: no better val F1 in the {cfg.patience} epoch(s) after epoch {fold.best['epoch']}")
            break
        t = time.time()
        row = train_one(fold, loader, sampler, epoch)
        if cfg.final:  # nothing to validate on
            row["seconds"] = round(time.time() - t, 2)
            fold.history.append(row)
            fold.best = {"epoch": epoch + 1, "ema": fold.ema is not None}
            keep_epoch(fold, row, {}, start, epoch, log, tracker)
            continue
        v, probs = trainer.validate(fold, va_images, va["label"].to_numpy())
        winner, from_ema = (v, probs), False
        if fold.ema is not None:
            ve, pe = trainer.validate(fold, va_images, va["label"].to_numpy(), ema=True)
            row.update(val_f1_ema=ve["val_f1"], val_loss_ema=ve["val_loss"])
            if ve["val_f1"] > v["val_f1"]:
                winner, from_ema = (ve, pe), True
        row.update(v, seconds=round(time.time() - t, 2))
        fold.history.append(row)
        best_v, best_p = winner
        averaging.remember(fold, epoch + 1, best_v["val_f1"], fold.ema.module if from_ema else fold.net)
        better = best_v["val_f1"] > fold.best["f1"]  # the same in every process: validation is gathered
        if better:
            fold.best = {"f1": best_v["val_f1"], "epoch": epoch + 1, "ema": from_ema, **best_v}
            if parse_tta(cfg.oof_tta, "--oof-tta"):  # out-of-fold answers made as predict.py makes the submission's
                best_p = trainer.validate(fold, va_images, va["label"].to_numpy(), ema=from_ema, tta=cfg.oof_tta)[1]
        if fold.place.rank0 and better:
            checkpoint.save(checkpoint.make(fold, epoch + 1, best_v, full=False, ema=from_ema),
                            cfg.fold_dir / "best.pt")
            write_oof(cfg.fold_dir / "oof.csv", va, best_p)
        keep_epoch(fold, row, v, start, epoch, log, tracker)
    if cfg.final:
        if fold.place.rank0:
            ck = checkpoint.make(fold, len(fold.history), {}, full=False, ema=fold.ema is not None)
            checkpoint.save(ck, cfg.fold_dir / "best.pt")
        return
    average_best(fold, va, va_images, log)


def train_one(fold, loader, sampler, epoch: int) -> dict:
    """One epoch's training, its randomness seeded by (seed, epoch) only (resumable): its row of history.csv."""
    from maskfold.training import trainer

    epoch_seed = fold.cfg.seed * 1000 + epoch
    trainer.seed_all(epoch_seed)
    sampler.set_epoch(epoch, epoch_seed)
    lr = max(g["lr"] for g in fold.opt.param_groups)  # the head's, with --layer-decay
    frozen = {"frozen": epoch < fold.cfg.freeze_epochs} if fold.cfg.freeze_epochs else {}  # --freeze-epochs
    return {"epoch": epoch + 1, "lr": lr, **frozen, **trainer.train_epoch(fold, loader, epoch)}


def keep_epoch(fold, row: dict, metric: dict, start: int, epoch: int, log: Log, tracker) -> None:
    """After an epoch, on rank 0: its line, its scalars (and the first batch), history.csv and last.pt (what
    --resume needs); every process under torchrun waits for it."""
    import torch.distributed as dist

    from maskfold.training import checkpoint

    cfg = fold.cfg
    if fold.place.rank0:
        log(epoch_line(row, cfg.epochs, eta(fold.history[start:], cfg.epochs - epoch - 1)))
        tracker.epoch(row)
        if epoch == start and fold.shown is not None:
            tracker.batch(fold.shown)
        write_csv(pd.DataFrame(fold.history), cfg.fold_dir / "history.csv")
        checkpoint.save(checkpoint.make(fold, epoch + 1, metric, full=True), cfg.fold_dir / "last.pt")
    if fold.place.backend is not None:
        dist.barrier()


def average_best(fold, va: pd.DataFrame, va_images: np.ndarray, log: Log) -> None:
    """--avg-best N: the N best epochs' weights averaged become best.pt (and oof.csv its answers) when the average
    validates better than the best epoch alone; what was averaged and how it scored goes to metrics.json."""
    from maskfold.training import averaging, checkpoint, trainer

    made = averaging.averaged_net(fold)
    if made is None:
        return
    net, epochs = made
    net.to(fold.place.device)
    labels = va["label"].to_numpy()
    v, probs = trainer.validate(fold, va_images, labels, net=net)
    kept = v["val_f1"] > fold.best["f1"]
    fold.averaged = {"epochs": epochs, "f1": round(v["val_f1"], 5), "best_epoch_f1": round(fold.best["f1"], 5),
                     "kept": kept}
    log(f"--avg-best {fold.cfg.avg_best}: epochs {', '.join(map(str, epochs))} averaged: val macro F1 "
        f"{v['val_f1']:.4f} against {fold.best['f1']:.4f} of epoch {fold.best['epoch']} alone; "
        + ("the average is the fold's checkpoint" if kept else "the best epoch stays the fold's checkpoint"))
    if not kept:
        return
    fold.best = {"f1": v["val_f1"], "epoch": fold.best["epoch"], "ema": False, "averaged": epochs, **v}
    if parse_tta(fold.cfg.oof_tta, "--oof-tta"):
        probs = trainer.validate(fold, va_images, labels, tta=fold.cfg.oof_tta, net=net)[1]
    if fold.place.rank0:
        ck = checkpoint.make(fold, max(epochs), v, full=False, weights=net)
        checkpoint.save(ck | {"averaged_epochs": epochs}, fold.cfg.fold_dir / "best.pt")
        write_oof(fold.cfg.fold_dir / "oof.csv", va, probs)


def gpu_peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def mean_after_first(history: pd.DataFrame, col: str) -> float | None:
    """An epoch rate's mean, the first epoch left out where there are more (it starts the workers)."""
    v = history[col].dropna() if col in history else pd.Series(dtype=float)
    return float(v.iloc[1:].mean() if len(v) > 1 else v.mean()) if len(v) else None


def finish(fold, t0: float, log: Log) -> dict:
    """Plots, metrics.json (the mark of a finished fold, written last) and the run's results.csv row. The final
    model (--fold all) has no validation: no oof.csv nor confusion.png, and no F1 (its score is the K-fold CV's)."""
    import torch

    from maskfold.pages import charts

    cfg, best = fold.cfg, fold.best
    history = pd.DataFrame(fold.history)
    rate = mean_after_first(history, "img_per_s")
    charts.save_png(charts.curves(history), cfg.fold_dir / "curves.png")
    if not cfg.final:
        oof = pd.read_csv(cfg.fold_dir / "oof.csv")
        charts.save_png(charts.confusion(oof["label"].to_numpy(), oof[PROB_COLS].to_numpy().argmax(1),
                                         task=cfg.only), cfg.fold_dir / "confusion.png")
    metrics = {"run": cfg.run_name, "fold": cfg.fold, "task": getattr(cfg.task, "value", cfg.task),
               "best_epoch": best["epoch"], "f1": rounded(best.get("val_f1"), 5),
               "acc": rounded(best.get("val_acc"), 5),
               # a task's model scores its own task only, the final model none: the others' F1 are None
               **{f"f1_{t}": rounded(best.get(f"val_f1_{t}"), 5) for t in TASKS},
               "val_loss": rounded(best.get("val_loss"), 5), "img_per_s": round(rate, 1) if rate else None,
               "minutes": round((time.time() - t0) / 60, 2), "epochs_run": len(history),
               "best_is_ema": bool(best.get("ema", False)), "gpu_peak_gib": gpu_peak_gib(fold.place.device),
               "avg_best": fold.averaged, "threads": torch.get_num_threads(),
               **({"train_f1": rounded(history["train_f1"].iloc[-1], 5)} if cfg.final else {}),
               "loader_wait_ms": rounded(mean_after_first(history, "loader_wait_ms"), 3)}
    append_csv(pd.DataFrame([results_row(cfg, metrics)]), cfg.out / "results.csv")  # one line per finished fold
    write_json(cfg.fold_dir / "metrics.json", metrics)
    summary = write_summaries(cfg.out)
    if cfg.final:
        epochs = f"{len(history)} epoch" + ("s" if len(history) != 1 else "")
        log(f"final model: {epochs} on every person ({cfg.fold_dir / 'best.pt'}); no validation: its score is the "
            f"K-fold CV's (runs compared in {summary})")
    else:
        log(f"best epoch {best['epoch']}: val macro F1 {best['val_f1']:.4f}; runs compared in {summary}")
    files = ["best.pt", "last.pt", *([] if cfg.final else ["oof.csv"]), "history.csv", "metrics.json",
             "config.json", "curves.png", *([] if cfg.final else ["confusion.png"]), "train.log", "tensorboard"]
    return metrics | {"files": [str(cfg.fold_dir / f) for f in files] + [str(cfg.out / "results.csv"), str(summary)]}


def interrupted_in(cfg: TrainConfig, done: int, resumed: bool) -> str:
    """What a Ctrl-C in the epochs leaves, and the command that carries on."""
    where = f"interrupted in epoch {done + 1} of {cfg.fold_dir}; "
    if done or resumed:
        return where + f"last.pt holds epoch {done or 'the last one finished'}: the same command with --resume " \
                       "continues from there"
    return where + "no epoch was finished: the same command starts it again"
