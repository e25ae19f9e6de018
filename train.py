"""Train one fold: folds.csv + a timm model name -> runs/<run>/fold<k>/.

    python train.py work/folds.csv --model efficientnet_b2 --fold 0 --loss focal --cutmix 0.5 --cutmix-mode vertical
    for k in 0 1 2 3 4; do python train.py work/folds.csv --model resnet50 --fold $k --resume --skip-done; done
    torchrun --nproc-per-node 4 train.py work/folds.csv --model efficientnet_b4 --fold 0 --amp

Writes best.pt, last.pt, history.csv, oof.csv, metrics.json, config.json, confusion.png,
curves.png and train.log per fold, config.json per run, and one row per finished fold in
<out>/results.csv.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from maskfold.blending.oof import write_oof
from maskfold.cli import Interrupted, UserError, choose, command, make_app, result
from maskfold.device import AMP_DTYPES, resolve_device
from maskfold.files import append_csv, check_outside, write_csv, write_json
from maskfold.images import describe_folder
from maskfold.labels import PROB_COLS, TASKS
from maskfold.prediction.tta import parse as parse_tta
from maskfold.runs import (
    fold_lock,
    folds_digest,
    labels_digest,
    prepare_fold,
    read_folds,
    results_row,
    twin_fold,
    write_summaries,
)
from maskfold.signals import loader_worker
from maskfold.training.config import TrainConfig
from maskfold.training.progress import Log, epoch_line, eta
from maskfold.training.tracking import Tracker, check_wandb

app = make_app()


def check_options(cfg: TrainConfig) -> None:
    from maskfold.training.datasets import AUGS, CUTMIX_MODES, check_aug_file, is_aug_file
    from maskfold.training.optim import OPTIMIZERS, SCHEDULERS

    import models
    from losses import LOSSES

    for value, valid, option in ((cfg.loss, LOSSES, "--loss"), (cfg.optimizer, OPTIMIZERS, "--optimizer"),
                                 (cfg.scheduler, SCHEDULERS, "--scheduler"),
                                 (cfg.cutmix_mode, CUTMIX_MODES, "--cutmix-mode"), (cfg.head, models.HEADS, "--head")):
        choose(value, valid, option)
    models.check_name(cfg.model)
    if is_aug_file(cfg.aug):
        check_aug_file(cfg.aug, cfg.img_size)  # loads and keeps the crop's size and type, or one line
    else:
        choose(cfg.aug, AUGS, "--aug")
    try:
        weights = [float(w) for w in cfg.task_weights.split(",")]
    except ValueError:
        raise UserError(f"--task-weights {cfg.task_weights}: not numbers") from None
    if len(weights) != 3:
        raise UserError("--task-weights: give three numbers, mask,gender,age")
    choose(cfg.amp_dtype, AMP_DTYPES, "--amp-dtype")
    parse_tta(cfg.oof_tta, "--oof-tta")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.accum_steps < 1 or min(cfg.img_size) < 16:
        raise UserError("--epochs, --batch-size and --accum-steps must be >= 1, --img-size >= 16")
    if not (0 <= cfg.cutmix and 0 <= cfg.mixup and cfg.cutmix + cfg.mixup <= 1):
        raise UserError("--cutmix and --mixup are probabilities that add up to at most 1")
    if not 0 <= cfg.ema < 1 or cfg.clip_grad < 0 or cfg.patience < 0:
        raise UserError("--ema must be in [0, 1), --clip-grad and --patience non-negative")
    if cfg.extra_soft and cfg.extra is None:
        raise UserError("--extra-soft draws the labels of --extra's photos: give --extra pseudo.csv")
    if cfg.init_from is not None and not cfg.init_from.is_file():
        raise UserError(f"--init-from {cfg.init_from}: no such checkpoint")


def setup_place(cfg: TrainConfig):
    """Device, rank and world size; under torchrun, one process per device."""
    import torch
    import torch.distributed as dist

    from maskfold.training.trainer import Place

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = resolve_device(cfg.device) == "cuda"
    if world == 1 and "LOCAL_RANK" not in os.environ:  # not started by torchrun
        return Place("cuda" if cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend)
    return Place(f"cuda:{local}" if cuda else "cpu", dist.get_rank(), world, backend)


def trained_on(source: Path, ck: dict) -> dict | None:
    """The fold and person-to-fold map a checkpoint was trained with: its own record, or its fold's config.json."""
    if ck.get("trained_on"):
        return ck["trained_on"]
    beside = source.parent / "config.json"
    try:
        c = json.loads(beside.read_text()) if beside.is_file() else {}
    except (OSError, ValueError):
        c = {}
    return {"fold": c["fold"], "folds_digest": c["folds_digest"]} if "fold" in c and "folds_digest" in c else None


def check_init_from(cfg: TrainConfig, ck: dict, digest: str) -> None:
    """--init-from must not bring in weights that trained on this fold's validation people: that would leak them
    into its CV."""
    seen = trained_on(cfg.init_from, ck)
    if seen is None:
        print(f"note: --init-from {cfg.init_from}: no record of the people it trained on (a checkpoint from "
              f"elsewhere?): make sure none of fold {cfg.fold}'s validation people were among them", file=sys.stderr)
        return
    if seen["folds_digest"] != digest:
        raise UserError(f"--init-from {cfg.init_from}: trained on another person-to-fold map than {cfg.folds_csv}, so "
                        f"perhaps on fold {cfg.fold}'s validation people (a leak into its CV); start fold {cfg.fold} "
                        "from a checkpoint of a run split from this folds.csv")
    if seen["fold"] != cfg.fold:
        raise UserError(f"--init-from {cfg.init_from}: trained with fold {seen['fold']} held out, so on fold "
                        f"{cfg.fold}'s validation people (a leak into its CV); start fold {cfg.fold} from fold "
                        f"{cfg.fold}'s own checkpoint (runs/<run>/fold{cfg.fold}/best.pt)")


def create_model(cfg: TrainConfig, resume_from: Path | None, digest: str):
    """The fold's network: with the weights of the checkpoint it resumes from, or of --init-from (each
    checked to be of this run's model and head; --init-from, to have not trained on this fold's people)."""
    from maskfold.training import checkpoint
    from maskfold.training.trainer import seed_all

    import models

    seed_all(cfg.seed)  # the same initial weights in every process and every run of this seed
    net = models.create(cfg.model, cfg.head, cfg.pretrained, cfg.drop_rate, cfg.pretrained_file)
    source = resume_from or cfg.init_from
    if source is None:
        return net, None
    resume = resume_from is not None
    ck = checkpoint.read(source, resume=resume)
    mine = (cfg.model, cfg.head, list(cfg.img_size) if resume else None)  # --init-from may change the size
    theirs = (ck["model"], ck["head"], list(ck["img_size"]) if resume else None)
    if mine != theirs:
        fix = "--overwrite restarts the fold" if resume else "start from a checkpoint of this model"
        raise UserError(f"{source}: a checkpoint of {describe(*theirs)}, not of this run's {describe(*mine)}; {fix}")
    if not resume:
        check_init_from(cfg, ck, digest)
    checkpoint.load_weights(net, ck, source)
    return net, ck if resume else None


def describe(model: str, head: str, size: list[int] | None) -> str:
    """'resnet18 (multi head, 256x192)': what a checkpoint is, for the line that refuses it."""
    return f"{model} ({head} head" + (f", {size[0]}x{size[1]}" if size else "") + ")"


def start_fold_dir(cfg: TrainConfig, folds_total: int, facts: dict) -> None:
    if cfg.overwrite and cfg.fold_dir.exists():
        shutil.rmtree(cfg.fold_dir)
    cfg.fold_dir.mkdir(parents=True, exist_ok=True)
    from maskfold.training.config import RUN_RECORD

    record = cfg.record()
    write_json(cfg.run_dir / "config.json", {k: record[k] for k in RUN_RECORD})
    write_json(cfg.fold_dir / "config.json", {**record, **facts, "folds_total": folds_total})


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


def fit(fold, loader, sampler, va: pd.DataFrame, va_images: np.ndarray, start: int, log: Log, tracker) -> None:
    """The epochs: train, validate (the EMA too), keep the best, save what --resume needs after each; stop
    early after --patience epochs without a better val F1."""
    import torch.distributed as dist

    from maskfold.training import checkpoint, trainer

    cfg = fold.cfg
    for epoch in range(start, cfg.epochs):
        if trainer.stop_early(fold, epoch):
            log(f"early stop: no better val F1 in the {cfg.patience} epoch(s) after epoch {fold.best['epoch']}")
            break
        t = time.time()
        epoch_seed = cfg.seed * 1000 + epoch  # each epoch's randomness depends on (seed, epoch) only: resumable
        trainer.seed_all(epoch_seed)
        sampler.set_epoch(epoch, epoch_seed)
        row = {"epoch": epoch + 1, "lr": fold.opt.param_groups[0]["lr"], **trainer.train_epoch(fold, loader, epoch)}
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
        better = best_v["val_f1"] > fold.best["f1"]  # the same in every process: validation is gathered
        if better:
            fold.best = {"f1": best_v["val_f1"], "epoch": epoch + 1, "ema": from_ema, **best_v}
            if parse_tta(cfg.oof_tta, "--oof-tta"):  # out-of-fold answers made as predict.py makes the submission's
                best_p = trainer.validate(fold, va_images, va["label"].to_numpy(), ema=from_ema, tta=cfg.oof_tta)[1]
        if fold.place.rank0:
            log(epoch_line(row, cfg.epochs, eta(fold.history[start:], cfg.epochs - epoch - 1)))
            tracker.epoch(row)
            if epoch == start and fold.shown is not None:
                tracker.batch(fold.shown)
            if better:
                checkpoint.save(checkpoint.make(fold, epoch + 1, best_v, full=False, ema=from_ema),
                                cfg.fold_dir / "best.pt")
                write_oof(cfg.fold_dir / "oof.csv", va, best_p)
            write_csv(pd.DataFrame(fold.history), cfg.fold_dir / "history.csv")
            checkpoint.save(checkpoint.make(fold, epoch + 1, v, full=True), cfg.fold_dir / "last.pt")
        if fold.place.backend is not None:
            dist.barrier()


def gpu_peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def finish(fold, t0: float, log: Log) -> dict:
    """Plots, metrics.json (the mark of a finished fold, written last) and the run's results.csv row."""
    from maskfold.pages import charts

    cfg, best = fold.cfg, fold.best
    history = pd.DataFrame(fold.history)
    rates = history["img_per_s"].dropna()
    rate = float(rates.iloc[1:].mean() if len(rates) > 1 else rates.mean()) if len(rates) else None
    oof = pd.read_csv(cfg.fold_dir / "oof.csv")
    charts.save_png(charts.curves(history), cfg.fold_dir / "curves.png")
    charts.save_png(charts.confusion(oof["label"].to_numpy(), oof[PROB_COLS].to_numpy().argmax(1)),
                   cfg.fold_dir / "confusion.png")
    metrics = {"run": cfg.run_name, "fold": cfg.fold, "best_epoch": best["epoch"], "f1": round(best["val_f1"], 5),
               "acc": round(best["val_acc"], 5), **{f"f1_{t}": round(best[f"val_f1_{t}"], 5) for t in TASKS},
               "val_loss": round(best["val_loss"], 5), "img_per_s": round(rate, 1) if rate else None,
               "minutes": round((time.time() - t0) / 60, 2), "epochs_run": len(history),
               "best_is_ema": bool(best.get("ema", False)), "gpu_peak_gib": gpu_peak_gib(fold.place.device)}
    append_csv(pd.DataFrame([results_row(cfg, metrics)]), cfg.out / "results.csv")  # one line per finished fold
    write_json(cfg.fold_dir / "metrics.json", metrics)
    summary = write_summaries(cfg.out)
    log(f"best epoch {best['epoch']}: val macro F1 {best['val_f1']:.4f}; runs compared in {summary}")
    files = ["best.pt", "last.pt", "oof.csv", "history.csv", "metrics.json", "config.json", "curves.png",
             "confusion.png", "train.log", "tensorboard"]
    return metrics | {"files": [str(cfg.fold_dir / f) for f in files] + [str(cfg.out / "results.csv"), str(summary)]}


def train_fold(cfg: TrainConfig, df: pd.DataFrame, extra: pd.DataFrame | None, state, facts: dict,
               t0: float) -> None:
    """Set up the fold's data, model and loop in this process, train it, and finish it on rank 0."""
    import torch.distributed as dist

    from maskfold.images import load_cache
    from maskfold.training import checkpoint, trainer
    from maskfold.training.datasets import CachedImages

    import losses
    import models

    place = setup_place(cfg)
    net, ck = create_model(cfg, state.resume_from, facts["folds_digest"])
    if place.rank0:
        start_fold_dir(cfg, df["fold"].nunique(), facts)
    log = Log(cfg.fold_dir / "train.log" if place.rank0 else None)
    log(f"run {cfg.run_name} fold {cfg.fold}: {cfg.model} head={cfg.head} loss={cfg.loss} opt={cfg.optimizer} "
        f"sched={cfg.scheduler} on {place.device} x{place.world}" + (f" ({place.backend})" if place.backend else ""))
    tr, va = (df[df["fold"] != cfg.fold].reset_index(drop=True), df[df["fold"] == cfg.fold].reset_index(drop=True))
    t = time.time()
    extra_files = extra["file"].tolist() if extra is not None else []
    tr_images = load_cache(tr["file"].tolist() + extra_files, cfg.img_size)  # pseudo-labelled photos train only
    va_images = load_cache(va["file"].tolist(), cfg.img_size)
    added = f" (+ {len(extra_files)} pseudo-labelled from {cfg.extra})" if extra is not None else ""
    log(f"cached {len(tr)} train{added} + {len(va)} val images at {cfg.img_size[0]}x{cfg.img_size[1]} in "
        f"{time.time() - t:.1f}s ({(tr_images.nbytes + va_images.nbytes) / 2**20:.0f} MiB)")
    targets = trainer.train_targets(tr, cfg.old_age)
    soft = None
    if extra is not None:
        from maskfold.labelling.pseudo_labels import soft_cols

        targets = np.concatenate([targets, extra["label"].to_numpy()])
        if cfg.extra_soft:
            soft = np.full((len(targets), 8), np.nan)
            soft[len(tr):] = extra[soft_cols(cfg.fold)].to_numpy()
    train_ds = CachedImages(tr_images, targets, cfg.aug, soft)
    batches = max(len(train_ds) // (cfg.batch_size * place.world), 1)
    crit = losses.Criterion(cfg.loss, cfg.head, targets, cfg.focal_gamma, cfg.smoothing,
                            [float(w) for w in cfg.task_weights.split(",")])
    mean, std = models.norm_stats(net)
    fold = trainer.build(cfg, place, net, crit, mean, std, steps=-(-batches // cfg.accum_steps))
    fold.trained_on = {"fold": cfg.fold, "folds_digest": facts["folds_digest"]}  # checked by a later --init-from
    trainer.note_precision(cfg, place.device, fold.amp, log)
    start = checkpoint.restore(fold, ck) if ck is not None else 0
    if ck is not None:
        log(f"resumed from {state.resume_from} after epoch {start}")
    trainer.wrap(fold)
    loader, sampler = make_loader(train_ds, cfg, place, cfg.seed)
    tracker = Tracker(cfg.fold_dir, cfg.record(), f"{cfg.run_name}/fold{cfg.fold}", cfg.wandb) if place.rank0 else None
    try:
        fit(fold, loader, sampler, va, va_images, start, log, tracker)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_in(cfg, len(fold.history), resumed=ck is not None)) from None
    if place.rank0:
        try:
            metrics = finish(fold, t0, log)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted while finishing {cfg.fold_dir}: every epoch is saved in last.pt; the same "
                              "command with --resume finishes it") from None
        tracker.close({k: v for k, v in metrics.items() if k != "files"})
        result(metrics)
    if place.backend is not None:
        dist.destroy_process_group()


def copy_twin(cfg: TrainConfig, twin: Path, folds_total: int, facts: dict) -> dict:
    """The fold as `twin` left it, copied instead of trained again: it learnt from the same labels with the same
    options (a round whose fixes or pseudo-labels changed nothing)."""
    start_fold_dir(cfg, folds_total, {**facts, "copied_from": str(twin.resolve())})
    for f in twin.iterdir():
        if f.name == "config.json":
            continue
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, cfg.fold_dir / f.name)
    metrics = {**json.loads((twin / "metrics.json").read_text()), "run": cfg.run_name}
    append_csv(pd.DataFrame([results_row(cfg, metrics)]), cfg.out / "results.csv")
    write_json(cfg.fold_dir / "metrics.json", metrics)  # written last: the mark of a finished fold
    summary = write_summaries(cfg.out)
    print(f"note: {twin} learnt from the same labels and training targets with the same options (the fixes or "
          f"pseudo-labels of this round change nothing for fold {cfg.fold}): copied to {cfg.fold_dir} instead of "
          "trained again (--overwrite trains it)", file=sys.stderr)
    return metrics | {"copied_from": str(twin), "files": [str(cfg.fold_dir), str(cfg.out / "results.csv"),
                                                          str(summary)]}


def interrupted_in(cfg: TrainConfig, done: int, resumed: bool) -> str:
    """What a Ctrl-C in the epochs leaves, and the command that carries on."""
    where = f"interrupted in epoch {done + 1} of {cfg.fold_dir}; "
    if done or resumed:
        return where + f"last.pt holds epoch {done or 'the last one finished'}: the same command with --resume " \
                       "continues from there"
    return where + "no epoch was finished: the same command starts it again"


@command(app, TrainConfig)
def main(cfg: TrainConfig):
    """Train one fold of a run: folds.csv + a timm model name -> runs/<run>/fold<k>/."""
    t0 = time.time()
    check_options(cfg)
    check_wandb(cfg.wandb)
    df = read_folds(cfg.folds_csv, cfg.fold)
    check_outside(cfg.out, *{os.path.dirname(os.path.dirname(f)) for f in df["file"]})  # the image trees
    from maskfold.training.trainer import train_targets

    facts = {"folds_digest": folds_digest(df), "processes": int(os.environ.get("WORLD_SIZE", "1")),
             "images": describe_folder(Path(df["file"].iloc[0]).parent.parent, df["file"].tolist()),
             "labels_digest": labels_digest(df, train_targets(df, cfg.old_age))}
    extra = None
    if cfg.extra is not None:
        from maskfold.labelling.pseudo_labels import read_extra

        extra, record = read_extra(cfg.extra, cfg.fold, df, facts["folds_digest"], cfg.extra_soft)
        check_outside(cfg.out, Path(record["images"]))
        facts.update(extra_digest=record["sha256"][:16], extra_rows=len(extra))
    from maskfold.training.datasets import aug_record

    facts.update(aug_record(cfg.aug))  # an --aug file's pipeline itself: a run's folds must share it
    # Rank 0 alone holds the fold's lock: the other processes of a torchrun start with it and end with it.
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with fold_lock(cfg.run_dir, cfg.fold) if rank0 else contextlib.nullcontext():
        state = prepare_fold(cfg, facts)
        if state.finished is not None:
            print(f"{cfg.fold_dir} is finished; skipped", file=sys.stderr)
            return result(state.finished)
        twin = twin_fold(cfg, facts) if state.resume_from is None and not cfg.overwrite else None
        if twin is not None:
            return result(copy_twin(cfg, twin, df["fold"].nunique(), facts))
        train_fold(cfg, df, extra, state, facts, t0)


if __name__ == "__main__":
    app()
