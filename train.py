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
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from maskfold.cli import Interrupted, UserError, choose, command, make_app, result
from maskfold.files import check_outside
from maskfold.folds import folds_digest, read_folds
from maskfold.labels import task_targets
from maskfold.threads import set_threads
from maskfold.training.admission import copy_twin, fold_facts, fold_lock, prepare_fold, start_fold_dir, twin_fold
from maskfold.training.loop import finish, fit, interrupted_in
from maskfold.training.options import FoldFacts, TrainConfig
from maskfold.training.tracking import Log, Tracker, check_wandb
from maskfold.training.weights import create_model
from maskfold.tta import parse as parse_tta

app = make_app()


def check(cfg: TrainConfig) -> None:
    """The options' rules, and names that must be in the registries of losses.py, models.py and the package."""
    from maskfold.training.augment import AUGS, check_aug_file, is_aug_file
    from maskfold.training.optim import SCHEDULERS, check_optimizer, optimizer_names

    import models
    from losses import LOSSES

    for value, valid, option in ((cfg.loss, LOSSES, "--loss"), (cfg.optimizer, optimizer_names(), "--optimizer"),
                                 (cfg.scheduler, SCHEDULERS, "--scheduler"), (cfg.head, ("single", "multi"), "--head")):
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
    if cfg.only and cfg.head != "single":
        raise UserError(f"--task {cfg.only} trains that task's head alone: drop --head {cfg.head}")
    if cfg.ordinal_age < 0 or cfg.ordinal_age and cfg.only in ("mask", "gender"):
        raise UserError(f"--ordinal-age {cfg.ordinal_age}: a weight >= 0 of the age bands' order, for a model that "
                        "answers the age (not --task mask or gender)")
    if cfg.only and weights != [1.0, 1.0, 1.0]:
        raise UserError(f"--task-weights weighs the three heads of --head multi: --task {cfg.only} has one")
    parse_tta(cfg.oof_tta, "--oof-tta")
    if not (isinstance(cfg.fold, int) and cfg.fold >= 0 or cfg.final):
        raise UserError(f"--fold {cfg.fold}: a fold number (0, 1, ...) or all")
    if cfg.final:
        for flag, given in (("--patience", cfg.patience), ("--avg-best", cfg.avg_best),
                            ("--extra-soft", cfg.extra_soft)):
            if given:
                raise UserError(f"--fold all trains on every person with no validation to go by: {flag} needs "
                                "one" + (" (its soft labels are each fold's)" if flag == "--extra-soft" else "")
                                + f"; drop it ({flag.replace('--', '--no-') if flag == '--extra-soft' else flag + ' 0'}"
                                + " where a --config file sets it)")
    if not 0 <= cfg.freeze_epochs < cfg.epochs:
        raise UserError(f"--freeze-epochs {cfg.freeze_epochs}: 0 (off) up to --epochs - 1 ({cfg.epochs - 1}), so that "
                        "the backbone trains too")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.accum_steps < 1 or min(cfg.img_size) < 16:
        raise UserError("--epochs, --batch-size and --accum-steps must be >= 1, --img-size >= 16")
    if not (0 <= cfg.cutmix and 0 <= cfg.mixup and cfg.cutmix + cfg.mixup <= 1):
        raise UserError("--cutmix and --mixup are probabilities that add up to at most 1")
    if not 0 <= cfg.ema < 1 or cfg.clip_grad < 0 or cfg.patience < 0:
        raise UserError("--ema must be in [0, 1), --clip-grad and --patience non-negative")
    if not 0 < cfg.epoch_fraction <= 1 or cfg.avg_best < 0 or cfg.avg_best == 1:
        raise UserError("--epoch-fraction must be in (0, 1], --avg-best 0 (off) or 2 and more")
    if cfg.layer_decay is not None and not 0 < cfg.layer_decay <= 1 or not 0 <= cfg.drop_path < 1:
        raise UserError("--layer-decay must be in (0, 1], --drop-path in [0, 1)")
    check_optimizer(cfg.optimizer, cfg.opt_kwargs, cfg.lr, cfg.weight_decay, cfg.layer_decay)
    if cfg.workers < 0 or (cfg.threads is not None and cfg.threads < 1):
        raise UserError("--workers must be >= 0 and --threads >= 1")
    if cfg.extra_soft and cfg.extra is None:
        raise UserError("--extra-soft draws the labels of --extra's photos: give --extra pseudo.csv")
    if cfg.init_from is not None and not cfg.init_from.is_file():
        raise UserError(f"--init-from {cfg.init_from}: no such checkpoint")
    check_wandb(cfg.wandb)


def final_words(cfg: TrainConfig) -> str:
    """What the final model (--fold all) trains for, beside the epochs its run's K folds chose by validation."""
    import statistics

    from maskfold.runs import read_json, run_folds

    try:
        folds = run_folds(cfg.run_dir)
        best = [read_json(cfg.run_dir / f"fold{k}" / "metrics.json").get("best_epoch") for k in sorted(folds.finished)]
    except UserError:
        best = []
    best = [b for b in best if b]
    chose = (f"its run's folds chose epoch {', '.join(map(str, best))} (median {statistics.median(best):g}) of "
             f"their {read_json(cfg.run_dir / 'config.json').get('epochs', '?')}") if best else \
        "its run has no finished fold to compare with"
    epochs = f"{cfg.epochs} epoch" + ("s" if cfg.epochs != 1 else "")
    return f"--fold all: every person trains for {epochs}, no validation (the score is the K-fold CV's); {chose}"


def train_fold(cfg: TrainConfig, df: pd.DataFrame, extra: pd.DataFrame | None, state, facts: FoldFacts,
               t0: float, place) -> None:
    """Set up the fold's data, model and loop in this process, train it, and finish it on rank 0."""
    from maskfold.training import checkpoint, trainer
    from maskfold.training.data import fold_data, make_loader

    import losses
    import models

    _, threads = set_threads(cfg.threads, cfg.workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    net, ck = create_model(cfg, state.resume_from, facts.folds_digest, models.create)
    if place.rank0:
        start_fold_dir(cfg, df["fold"].nunique(), facts)
    log = Log(cfg.fold_dir / "train.log" if place.rank0 else None)
    start = (f"from {cfg.init_from}" if cfg.init_from else f"from ImageNet weights ({cfg.pretrained_file})"
             if cfg.pretrained_file else "from the hub's ImageNet weights" if cfg.pretrained else "from scratch")
    log(f"run {cfg.run_name} fold {cfg.fold}: {cfg.model} {start}, head={cfg.net_head} loss={cfg.loss} "
        f"opt={cfg.optimizer} sched={cfg.scheduler} on {place.device} x{place.world}"
        + (f" ({place.backend})" if place.backend else "")
        + f"; {threads}, {cfg.workers} loader worker{'s' if cfg.workers != 1 else ''}")
    if cfg.final:
        log(final_words(cfg))
    data = fold_data(cfg, df, extra, log)
    loader, sampler = make_loader(data.train, cfg, place, cfg.seed, task_targets(data.targets, cfg.only))
    batches = max(len(loader), 1)
    if not sampler.plain:
        log(f"sampler {cfg.sampler.value}: {len(sampler)} photos drawn an epoch (per process) of {len(data.train)}")
    crit = losses.Criterion(cfg.loss, cfg.net_head, data.targets, cfg.focal_gamma, cfg.smoothing,
                            [float(w) for w in cfg.task_weights.split(",")], cfg.ordinal_age)
    mean, std = models.norm_stats(net)
    fold = trainer.build(cfg, place, net, crit, mean, std, steps=-(-batches // cfg.accum_steps))
    fold.trained_on = {"fold": cfg.fold, "folds_digest": facts.folds_digest}  # checked by a later --init-from
    trainer.note_precision(cfg, place.device, fold.amp, log)
    start = checkpoint.restore(fold, ck) if ck is not None else 0
    if ck is not None:
        log(f"resumed from {state.resume_from} after epoch {start}")
    trainer.wrap(fold)
    tracker = Tracker(cfg.fold_dir, cfg.record(), f"{cfg.run_name}/fold{cfg.fold}", cfg.wandb) if place.rank0 else None
    try:
        fit(fold, loader, sampler, data.val, data.val_images, start, log, tracker)
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


def decide(cfg: TrainConfig, facts: FoldFacts, files: list[str], folds_total: int) -> tuple[str, object, FoldFacts]:
    """What this fold does, decided once (rank 0, under the fold's lock): ("finished", metrics), ("copied",
    metrics) or ("train", FoldState), with the fold's facts and, unless it is finished, its learning record (the
    code, the files' and photos' bytes: `files`)."""
    from maskfold.training.learning import learning_record, numerics

    state = prepare_fold(cfg, facts)
    if state.finished is not None:
        print(f"{cfg.fold_dir} is finished; skipped", file=sys.stderr)
        return "finished", state.finished, facts
    facts = replace(facts, learning=learning_record(cfg, files, numerics(cfg)))
    twin = twin_fold(cfg, facts) if state.resume_from is None and not cfg.overwrite else None
    if twin is not None:
        return "copied", copy_twin(cfg, twin, folds_total, facts), facts
    return "train", state, facts


def agreed(place, decision):
    """Rank 0's decision, made once and sent to every process of a torchrun (each else would decide alone: one
    copying a twin while another finds the fold finished); a refusal reaches them all as the same error."""
    import torch.distributed as dist

    if place.backend is None:
        return decision()
    box = [None]
    if place.rank0:
        try:
            box = [decision()]
        except UserError as e:
            box = [e]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], UserError):
        raise box[0] if place.rank0 else SystemExit(2)  # rank 0 says it in one line; the others end with it
    return box[0]


@command(app, TrainConfig, check)
def main(cfg: TrainConfig):
    """Train one fold of a run: folds.csv + a timm model name -> runs/<run>/fold<k>/."""
    from maskfold.training.trainer import setup_place

    t0 = time.time()
    df = read_folds(cfg.folds_csv, cfg.fold)
    check_outside(cfg.out, *{os.path.dirname(os.path.dirname(f)) for f in df["file"]})  # the image trees
    extra = record = None
    if cfg.extra is not None:
        from maskfold.labelling.pseudo_labels import read_extra

        extra, record = read_extra(cfg.extra, cfg.fold, df, folds_digest(df), cfg.extra_soft)
        check_outside(cfg.out, Path(record["images"]))
    facts = fold_facts(cfg, df, extra, record)
    place = setup_place(cfg)  # under torchrun: the process group, before anything is decided
    try:
        # Rank 0 alone holds the fold's lock and decides; the other processes of a torchrun follow its decision.
        with fold_lock(cfg.run_dir, cfg.fold_dir.name) if place.rank0 else contextlib.nullcontext():
            files = df["file"].tolist() + (extra["file"].tolist() if extra is not None else [])
            kind, what, facts = agreed(place, lambda: decide(cfg, facts, files, df["fold"].nunique()))
            if kind != "train":
                return result(what) if place.rank0 else None
            train_fold(cfg, df, extra, what, facts, t0, place)
    finally:
        if place.backend is not None:
            import torch.distributed as dist

            dist.destroy_process_group()


if __name__ == "__main__":
    app()
