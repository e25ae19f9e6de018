"""Train one fold: folds.csv + a timm model name -> runs/<run>/fold<k>/.

    python train.py work/folds.csv --model efficientnet_b2 --fold 0 --loss focal --cutmix 0.5 --cutmix-mode vertical
    for k in 0 1 2 3 4; do python train.py work/folds.csv --model resnet50 --fold $k --resume --skip-done; done
    torchrun --nproc-per-node 4 train.py work/folds.csv --model efficientnet_b4 --fold 0 --amp

Writes best.pt, last.pt, history.csv, oof.csv, metrics.json, confusion.png, curves.png and
train.log per fold, config.json per run, and one row per finished fold in <out>/results.csv.
"""
from __future__ import annotations

import difflib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import typer
from tqdm import tqdm

import losses
import models
from data import NUM_CLASSES, PROB_COLS, TASKS, Device, UserError, age_label, append_csv, atomic_path, check_outside, \
    decode, encode, fail, read_table, resolve_device, scores, write_csv
from datasets import AUGS, CUTMIX_MODES, CachedImages, EpochSampler, cutmix, load_cache, to_input

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

OPTIMIZERS = ("sgd", "adam", "adamw", "madgrad")
SCHEDULERS = ("none", "step", "cyclic", "cosine", "onecycle")
# Options that change what a run learns: a new fold must agree with the run's earlier folds on these.
RUN_KEYS = ("model", "pretrained", "head", "task_weights", "loss", "focal_gamma", "smoothing", "optimizer", "lr",
            "weight_decay", "scheduler", "warmup_epochs", "epochs", "batch_size", "img_size", "aug", "cutmix",
            "cutmix_mode", "cutmix_alpha", "old_age", "seed", "drop_rate", "folds_csv")
FOLD_COLUMNS = ("path", "person", "age", "mask_label", "gender_label", "label", "fold")


def choose(value: str, valid, option: str) -> str:
    """A registry name, or one clear line with the valid names and the closest one."""
    if value in valid:
        return value
    close = difflib.get_close_matches(value, list(valid), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise UserError(f"{option} {value}: unknown; choose from {', '.join(valid)}{hint}")


def read_folds(path: Path, fold: int) -> pd.DataFrame:
    df = read_table(path, dtype={"id": str})
    missing = [c for c in FOLD_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (make it with split.py)")
    spans = df.groupby("person")["fold"].nunique()
    if (spans > 1).any():
        raise UserError(f"{path}: person {spans[spans > 1].index[0]} is in more than one fold, a leak; "
                        "re-split with split.py")
    folds = sorted(df["fold"].unique())
    if fold not in folds:
        raise UserError(f"--fold {fold}: {path} has folds {', '.join(map(str, folds))}")
    df["file"] = [str(path.parent / p) for p in df["path"]]
    absent = [f for f in df["file"] if not os.path.isfile(f)]
    if absent:
        raise UserError(f"{path}: {len(absent)} image(s) missing, first {absent[0]}")
    return df


def train_targets(df: pd.DataFrame, old_age: int) -> np.ndarray:
    """Training labels with ages >= old_age moved to the old band (the teams' 58/59 trick)."""
    return encode(df["mask_label"].to_numpy(), df["gender_label"].to_numpy(), age_label(df["age"].to_numpy(), old_age))


def make_optimizer(name: str, params, lr: float, wd: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    from madgrad import MADGRAD
    return MADGRAD(params, lr=lr, weight_decay=wd)


def make_scheduler(name: str, opt, lr: float, epochs: int, steps: int, warmup: int, step_size: int, step_gamma: float):
    """Schedulers step every iteration; epoch-based settings are converted to steps."""
    S = torch.optim.lr_scheduler
    total, warm = epochs * steps, warmup * steps
    if name == "onecycle":
        return S.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=max(warm / total, 0.05))
    main = {
        "none": lambda: S.LambdaLR(opt, lambda s: 1.0),
        "step": lambda: S.StepLR(opt, step_size=max(step_size * steps, 1), gamma=step_gamma),
        "cyclic": lambda: S.CyclicLR(opt, base_lr=lr / 10, max_lr=lr, step_size_up=max(steps, 1), mode="triangular2",
                                     cycle_momentum=False),
        "cosine": lambda: S.CosineAnnealingLR(opt, T_max=max(total - warm, 1), eta_min=lr * 0.01),
    }[name]()
    if not warm:
        return main
    return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.01, total_iters=warm), main], milestones=[warm])


class Criterion:
    """The chosen loss on 18 classes, or per task (weighted) for three heads."""

    def __init__(self, name, head, targets, gamma, smoothing, task_weights):
        self.head = head
        if head == "single":
            self.fn = losses.build(name, np.bincount(targets, minlength=NUM_CLASSES), gamma, smoothing)
        else:
            tasks = dict(zip(TASKS, decode(targets)))
            self.fns = {t: losses.build(name, np.bincount(tasks[t], minlength=n), gamma, smoothing)
                        for t, n in TASKS.items()}
            self.weights = dict(zip(TASKS, task_weights))

    def __call__(self, logits, y):
        if self.head == "single":
            return self.fn(logits, y)
        parts, ys = models.split_logits(logits), dict(zip(TASKS, decode(y)))
        return sum(self.weights[t] * self.fns[t](parts[t], ys[t]) for t in TASKS)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Log:
    """Lines to stderr and to train.log (jobs left in tmux); rank 0 only."""

    def __init__(self, path: Path | None):
        self.file = open(path, "a") if path else None

    def __call__(self, msg: str) -> None:
        if self.file is None:
            return
        tqdm.write(msg, file=sys.stderr)
        self.file.write(msg + "\n")
        self.file.flush()


def train_epoch(ctx, loader, epoch: int):
    net, opt, sched, crit = ctx["model"], ctx["opt"], ctx["sched"], ctx["crit"]
    net.train()
    gen = torch.Generator().manual_seed(ctx["seed"] * 7919 + epoch)
    # Sums stay on the device: a .item() or .cpu() per step would stall a GPU's queue every step.
    total = torch.zeros((), dtype=torch.float64, device=ctx["device"])
    n, preds, ys, seen, t_steady = 0, [], [], 0, None
    bar = tqdm(loader, desc=f"epoch {epoch + 1} train", file=sys.stderr, leave=False, disable=not ctx["rank0"])
    for step, (x, y) in enumerate(bar):
        if step == 2:  # steady state: after the first batches have warmed up workers and kernels
            t_steady, seen = time.time(), 0
        x = to_input(x, ctx["mean"], ctx["std"], ctx["device"], ctx["channels_last"])
        y = y.to(ctx["device"])
        y_b, lam = y, 1.0
        if ctx["cutmix"] and torch.rand(1, generator=gen).item() < ctx["cutmix"]:
            x, y, y_b, lam = cutmix(x, y, ctx["cutmix_alpha"], ctx["cutmix_mode"], gen)
        with models.autocast(ctx["device"], ctx["amp"]):
            logits = net(x)
            loss = crit(logits, y) if lam == 1.0 else lam * crit(logits, y) + (1 - lam) * crit(logits, y_b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.detach() * len(y)
        n += len(y)
        seen += len(y)
        preds.append(models.probs18(logits.detach(), ctx["head"]).argmax(1))
        ys.append(y)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{total.item() / n:.4f}")
    s = scores(torch.cat(ys).cpu().numpy(), torch.cat(preds).cpu().numpy())  # waits for the last step
    rate = seen / (time.time() - t_steady) if t_steady and seen else None
    return {"train_loss": total.item() / max(n, 1), "train_acc": s["acc"], "train_f1": s["f1"], "img_per_s": rate}


def validate(ctx, images: np.ndarray, labels: np.ndarray, batch_size: int) -> tuple[dict, np.ndarray]:
    rank, world = ctx["rank"], ctx["world"]
    mine = np.arange(rank, len(images), world)
    probs = models.predict_probs(ctx["model"], ctx["head"], images[mine], ctx["mean"], ctx["std"], ctx["device"],
                                 batch_size, ctx["amp"], ctx["channels_last"])
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (mine, probs))
        full = np.zeros((len(images), NUM_CLASSES))
        for idx, p in parts:
            full[idx] = p
        probs = full
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    s = scores(labels, probs.argmax(1))
    return {"val_loss": nll, "val_acc": s["acc"], "val_f1": s["f1"], **{f"val_f1_{t}": s[f"f1_{t}"] for t in TASKS}}, probs


def checkpoint(ctx, epoch: int, metric: dict, full: bool) -> dict:
    """A checkpoint that describes itself; `full` adds what --resume needs."""
    ck = {"model": ctx["model_name"], "head": ctx["head"], "img_size": list(ctx["img_size"]), "mean": ctx["mean"],
          "std": ctx["std"], "num_classes": NUM_CLASSES, "label_scheme": "mask*6+gender*3+age",
          "epoch": epoch, "metric": metric, "state_dict": ctx["net"].state_dict()}
    if full:
        ck.update(optimizer=ctx["opt"].state_dict(), scheduler=ctx["sched"].state_dict(),
                  torch_rng=torch.get_rng_state(), history=ctx["history"], best=ctx["best"])
    return ck


def save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_oof(path: Path, val: pd.DataFrame, probs: np.ndarray) -> None:
    oof = pd.DataFrame(probs, columns=PROB_COLS)
    oof.insert(0, "fold", val["fold"].to_numpy())
    oof.insert(0, "label", val["label"].to_numpy())
    oof.insert(0, "path", val["path"].to_numpy())
    write_csv(oof, path, float_format="%.6g")


def plots(fold_dir: Path, history: pd.DataFrame, labels: np.ndarray, probs: np.ndarray) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(history["epoch"], history["train_loss"], label="train")
    ax[0].plot(history["epoch"], history["val_loss"], label="val (NLL)")
    ax[1].plot(history["epoch"], history["train_f1"], label="train F1")
    ax[1].plot(history["epoch"], history["val_f1"], label="val F1")
    for a, t in zip(ax, ("loss", "macro F1")):
        a.set_xlabel("epoch")
        a.set_title(t)
        a.legend()
    fig.tight_layout()
    with atomic_path(fold_dir / "curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    cm = confusion_matrix(labels, probs.argmax(1), labels=range(NUM_CLASSES))
    fig, a = plt.subplots(figsize=(7, 6))
    a.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        if v:
            a.text(j, i, str(v), ha="center", va="center", fontsize=6)
    a.set_xlabel("predicted")
    a.set_ylabel("true (class = mask*6 + gender*3 + age)")
    a.set_xticks(range(NUM_CLASSES))
    a.set_yticks(range(NUM_CLASSES))
    fig.tight_layout()
    with atomic_path(fold_dir / "confusion.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def prepare_run(opts: dict, out: Path, run: str, fold: int, resume: bool, skip_done: bool, overwrite: bool):
    """Check the run folder; returns (fold_dir, resume_from or None, finished metrics or None)."""
    run_dir, fold_dir = out / run, out / run / f"fold{fold}"
    cfg_path = run_dir / "config.json"
    if cfg_path.is_file():
        old = json.loads(cfg_path.read_text())
        differ = [k for k in RUN_KEYS if old.get(k) != opts.get(k)]
        if differ and not overwrite:
            raise UserError(f"run {run_dir} was made with other options ({', '.join(differ)}); "
                            "pass --run NAME for a new run, or --overwrite")
    done = fold_dir / "metrics.json"
    if done.is_file() and not overwrite:
        if skip_done:
            return fold_dir, None, json.loads(done.read_text())
        raise UserError(f"{fold_dir} is finished (pass --skip-done to skip it, --overwrite to redo it)")
    last = fold_dir / "last.pt"
    if last.is_file() and not overwrite and not resume:
        raise UserError(f"{fold_dir} has an unfinished run (pass --resume to continue it, --overwrite to restart)")
    return fold_dir, (last if last.is_file() and resume and not overwrite else None), None


def setup_device(device: Device) -> tuple[str, int, int]:
    """(device, rank, world size); under torchrun, one process per device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = resolve_device(device) == "cuda"
    if world == 1:
        return ("cuda" if cuda else "cpu"), 0, 1
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    return (f"cuda:{local}" if cuda else "cpu"), dist.get_rank(), world


def make_loader(ds, batch_size: int, workers: int, sampler, pin: bool):
    """One loader per fold; its workers persist across epochs (EpochSampler brings each epoch's seed)."""
    from torch.utils.data import DataLoader

    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin,
                      drop_last=len(sampler) > batch_size, persistent_workers=workers > 0,
                      multiprocessing_context="fork" if workers else None)


@app.command()
def main(
    folds_csv: Annotated[Path, typer.Argument(help="folds.csv from split.py")],
    model: Annotated[str, typer.Option(help="any timm model name, e.g. resnet18, efficientnet_b2_pruned")],
    fold: Annotated[int, typer.Option(help="validation fold; the others train")] = 0,
    run: Annotated[Optional[str], typer.Option(help="run name (default: the model name)")] = None,
    out: Annotated[Path, typer.Option(help="folder of runs")] = Path("runs"),
    pretrained: Annotated[bool, typer.Option(help="start from ImageNet weights (downloads once)")] = True,
    head: Annotated[str, typer.Option(help="single: one 18-way head; multi: mask/gender/age heads")] = "single",
    task_weights: Annotated[str, typer.Option(help="multi head: loss weights of mask,gender,age")] = "1,1,1",
    loss: Annotated[str, typer.Option(help=f"one of {', '.join(losses.LOSSES)}")] = "ce",
    focal_gamma: Annotated[float, typer.Option(help="focal loss gamma")] = 2.0,
    smoothing: Annotated[float, typer.Option(help="label_smoothing loss: smoothing")] = 0.1,
    optimizer: Annotated[str, typer.Option(help=f"one of {', '.join(OPTIMIZERS)}")] = "adamw",
    lr: Annotated[float, typer.Option(help="learning rate (peak)")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="weight decay")] = 1e-4,
    scheduler: Annotated[str, typer.Option(help=f"one of {', '.join(SCHEDULERS)}")] = "cosine",
    warmup_epochs: Annotated[int, typer.Option(help="linear warm-up epochs")] = 0,
    step_size: Annotated[int, typer.Option(help="step scheduler: epochs between decays")] = 3,
    step_gamma: Annotated[float, typer.Option(help="step scheduler: decay factor")] = 0.5,
    epochs: Annotated[int, typer.Option(help="epochs")] = 10,
    batch_size: Annotated[int, typer.Option(help="batch size per process")] = 64,
    img_size: Annotated[tuple[int, int], typer.Option(help="training size, height width")] = (256, 192),
    aug: Annotated[str, typer.Option(help=f"augmentation preset: {', '.join(AUGS)}")] = "light",
    cutmix_p: Annotated[float, typer.Option("--cutmix", help="probability of CutMix per batch")] = 0.0,
    cutmix_mode: Annotated[str, typer.Option(help=f"CutMix region: {', '.join(CUTMIX_MODES)}")] = "box",
    cutmix_alpha: Annotated[float, typer.Option(help="CutMix Beta(a, a)")] = 1.0,
    old_age: Annotated[int, typer.Option(help="train ages >= this as the old band (60: no change)")] = 60,
    drop_rate: Annotated[float, typer.Option(help="dropout before the classifier")] = 0.0,
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    device: Annotated[Device, typer.Option(help="where to train")] = Device.auto,
    workers: Annotated[int, typer.Option(help="augmentation worker processes")] = min(8, os.cpu_count() or 1),
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="bf16 autocast (default: on for CUDA)")] = None,
    compile_model: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model")] = False,
    channels_last: Annotated[bool, typer.Option(help="channels_last memory format")] = True,
    resume: Annotated[bool, typer.Option(help="continue an unfinished fold from last.pt")] = False,
    skip_done: Annotated[bool, typer.Option(help="exit at once if the fold is finished")] = False,
    overwrite: Annotated[bool, typer.Option(help="redo a finished or unfinished fold")] = False,
):
    t0 = time.time()
    opts = {k: v for k, v in locals().items() if k in RUN_KEYS or k == "cutmix_p"}
    opts["cutmix"] = opts.pop("cutmix_p")
    opts["img_size"], opts["folds_csv"] = list(img_size), str(folds_csv.resolve())
    try:
        choose(loss, losses.LOSSES, "--loss")
        choose(optimizer, OPTIMIZERS, "--optimizer")
        choose(scheduler, SCHEDULERS, "--scheduler")
        choose(aug, AUGS, "--aug")
        choose(cutmix_mode, CUTMIX_MODES, "--cutmix-mode")
        choose(head, models.HEADS, "--head")
        weights = [float(w) for w in task_weights.split(",")]
        if len(weights) != 3:
            raise UserError("--task-weights: give three numbers, mask,gender,age")
        if epochs < 1 or batch_size < 1 or min(img_size) < 16 or not 0 <= cutmix_p <= 1:
            raise UserError("--epochs, --batch-size must be >= 1, --img-size >= 16, --cutmix in [0, 1]")
        if not folds_csv.is_file():
            raise UserError(f"{folds_csv}: no such file")
        df = read_folds(folds_csv, fold)
        check_outside(out, *{os.path.dirname(os.path.dirname(f)) for f in df["file"]})  # the image trees
        run = run or model
        fold_dir, resume_from, finished = prepare_run(opts, out, run, fold, resume, skip_done, overwrite)
        if finished is not None:
            print(f"{fold_dir} is finished; skipped", file=sys.stderr)
            print(json.dumps(finished))
            return
        dev, rank, world = setup_device(device)
        seed_all(seed)  # the same initial weights in every process and every run of this seed
        net = models.create(model, head, pretrained, drop_rate)
        ck = models.read_checkpoint(resume_from, resume=True) if resume_from else None
        if ck is not None:
            mine, theirs = (model, head, list(img_size)), (ck["model"], ck["head"], list(ck["img_size"]))
            if mine != theirs:
                raise UserError(f"{resume_from}: a checkpoint of {theirs[0]} ({theirs[1]} head, "
                                f"{theirs[2][0]}x{theirs[2][1]}), not of this run's {model} ({head} head, "
                                f"{img_size[0]}x{img_size[1]}); --overwrite restarts the fold")
            models.load_weights(net, ck, resume_from)
    except ValueError as e:
        fail(f"--task-weights: {e}")
    except UserError as e:
        fail(str(e))
    rank0 = rank == 0
    if rank0:
        if overwrite and fold_dir.exists():
            shutil.rmtree(fold_dir)
        fold_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / run / "config.json") as tmp:
            tmp.write_text(json.dumps(opts, indent=1))
    log = Log(fold_dir / "train.log" if rank0 else None)
    log(f"run {run} fold {fold}: {model} head={head} loss={loss} opt={optimizer} sched={scheduler} on {dev} x{world}")

    tr, va = df[df["fold"] != fold].reset_index(drop=True), df[df["fold"] == fold].reset_index(drop=True)
    t = time.time()
    tr_images, va_images = load_cache(tr["file"].tolist(), img_size), load_cache(va["file"].tolist(), img_size)
    log(f"cached {len(tr)} train + {len(va)} val images at {img_size[0]}x{img_size[1]} in {time.time() - t:.1f}s "
        f"({(tr_images.nbytes + va_images.nbytes) / 2**20:.0f} MiB)")
    targets = train_targets(tr, old_age)
    train_ds = CachedImages(tr_images, targets, aug)

    net = net.to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    mean, std = models.norm_stats(net)
    opt = make_optimizer(optimizer, net.parameters(), lr, weight_decay)
    steps = max(len(train_ds) // (batch_size * world), 1)
    sched = make_scheduler(scheduler, opt, lr, epochs, steps, warmup_epochs, step_size, step_gamma)
    ctx = {"net": net, "model": net, "opt": opt, "sched": sched, "head": head, "model_name": model,
           "img_size": img_size, "mean": mean, "std": std, "device": dev, "rank": rank, "world": world,
           "rank0": rank0, "seed": seed, "channels_last": channels_last, "cutmix": cutmix_p,
           "cutmix_mode": cutmix_mode, "cutmix_alpha": cutmix_alpha, "history": [],
           "best": {"f1": -1.0, "epoch": -1},
           "crit": Criterion(loss, head, targets, focal_gamma, smoothing, weights)}
    ctx["amp"] = amp if amp is not None else dev.startswith("cuda")
    start = 0
    if ck is not None:
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"])
        ctx["history"], ctx["best"], start = ck["history"], ck["best"], ck["epoch"]
        log(f"resumed from {resume_from} after epoch {start}")
    if compile_model:
        ctx["model"] = torch.compile(net)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        ctx["model"] = DistributedDataParallel(ctx["model"], device_ids=[int(dev.split(":")[1])] if ":" in dev else None)

    val_labels = va["label"].to_numpy()
    distributed = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler
        distributed = DistributedSampler(train_ds, world, rank, shuffle=True, seed=seed, drop_last=True)
    sampler = EpochSampler(len(train_ds), distributed)
    loader = make_loader(train_ds, batch_size, workers, sampler, dev.startswith("cuda"))
    for epoch in range(start, epochs):
        t = time.time()
        epoch_seed = seed * 1000 + epoch  # each epoch's randomness depends on (seed, epoch) only: resumable
        seed_all(epoch_seed)
        sampler.set_epoch(epoch, epoch_seed)
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], **train_epoch(ctx, loader, epoch)}
        v, probs = validate(ctx, va_images, val_labels, batch_size * 2)
        row.update(v, seconds=round(time.time() - t, 2))
        ctx["history"].append(row)
        if rank0:
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            if v["val_f1"] > ctx["best"]["f1"]:
                ctx["best"] = {"f1": v["val_f1"], "epoch": epoch + 1, **v}
                save(checkpoint(ctx, epoch + 1, v, full=False), fold_dir / "best.pt")
                write_oof(fold_dir / "oof.csv", va, probs)
            write_csv(pd.DataFrame(ctx["history"]), fold_dir / "history.csv")
            save(checkpoint(ctx, epoch + 1, v, full=True), fold_dir / "last.pt")
        if world > 1:
            dist.barrier()
    if not rank0:
        dist.destroy_process_group()
        return
    finish(ctx, fold_dir, out, run, fold, opts, va, t0, log)
    if world > 1:
        dist.destroy_process_group()


def finish(ctx, fold_dir: Path, out: Path, run: str, fold: int, opts: dict, va: pd.DataFrame, t0: float, log) -> None:
    history = pd.DataFrame(ctx["history"])
    best = ctx["best"]
    rates = history["img_per_s"].dropna()
    rate = float(rates.iloc[1:].mean() if len(rates) > 1 else rates.mean()) if len(rates) else None
    oof = pd.read_csv(fold_dir / "oof.csv")
    plots(fold_dir, history, oof["label"].to_numpy(), oof[PROB_COLS].to_numpy())
    metrics = {"run": run, "fold": fold, "best_epoch": best["epoch"], "f1": round(best["val_f1"], 5),
               "acc": round(best["val_acc"], 5), **{f"f1_{t}": round(best[f"val_f1_{t}"], 5) for t in TASKS},
               "val_loss": round(best["val_loss"], 5), "img_per_s": round(rate, 1) if rate else None,
               "minutes": round((time.time() - t0) / 60, 2)}
    result = {"run": run, "fold": fold, "model": opts["model"], "head": opts["head"], "loss": opts["loss"],
              "optimizer": opts["optimizer"], "scheduler": opts["scheduler"], "aug": opts["aug"],
              "cutmix": f"{opts['cutmix']}:{opts['cutmix_mode']}", "img_size": "x".join(map(str, opts["img_size"])),
              "epochs": opts["epochs"], "f1": metrics["f1"], "best_epoch": metrics["best_epoch"],
              "minutes": metrics["minutes"]}
    append_csv(pd.DataFrame([result]), out / "results.csv")  # one line per finished fold
    with atomic_path(fold_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    log(f"best epoch {best['epoch']}: val macro F1 {best['val_f1']:.4f}")
    print(json.dumps(metrics))


if __name__ == "__main__":
    app()
