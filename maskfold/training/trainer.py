"""One fold's training: what trains the model, the epoch loop's steps, and validation."""
from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from maskfold.device import amp_dtype, autocast, resolve_device
from maskfold.forward import predict_probs, to_display, to_input
from maskfold.labels import NUM_CLASSES, TASKS, probs18, scores, task_scores
from maskfold.signals import stop_if_interrupted
from maskfold.training.mixing import mix
from maskfold.training.optim import make_optimizer, make_scheduler
from maskfold.training.options import TrainConfig


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Place:
    """Where this process trains: its device, and its rank among the torchrun processes."""
    device: str
    rank: int = 0
    world: int = 1
    backend: str | None = None  # nccl or gloo under torchrun (even for one process), else None

    @property
    def rank0(self) -> bool:
        return self.rank == 0


@dataclass
class Fold:
    """A fold being trained: the weights, what runs them, what updates them, and the record so far."""
    cfg: TrainConfig
    place: Place
    net: nn.Module  # the weights that are saved
    model: nn.Module  # what runs: the net, compiled and/or wrapped for several processes
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    crit: Callable  # (logits, class indices) -> the loss to minimise
    mean: list[float]
    std: list[float]
    amp: torch.dtype | None  # autocast dtype, None: full precision
    scaler: torch.amp.GradScaler | None = None  # fp16 only: bf16 needs none
    ema: nn.Module | None = None  # timm's ModelEmaV3 of `net`
    steps: int = 0  # optimizer steps taken
    shown: np.ndarray | None = None  # the first batch of this session as the model saw it (uint8 NHWC)
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"f1": -1.0, "epoch": -1})
    trained_on: dict | None = None  # the fold and person-to-fold map: which people these weights learnt from
    top: list = field(default_factory=list)  # --avg-best: (val F1, epoch, weights on the CPU) of the best epochs
    averaged: dict | None = None  # --avg-best's outcome: the epochs averaged, their F1, whether it was kept
    head: set = field(default_factory=set)  # ids of the head's parameters (what trains while the backbone is frozen)
    frozen: bool = False  # --freeze-epochs: this epoch moves the head alone


def build(cfg: TrainConfig, place: Place, net: nn.Module, crit: Callable, mean: list[float], std: list[float],
          steps: int) -> Fold:
    """The fold's model on its device, optimizer, schedule (`steps` optimizer steps per epoch), mixed precision
    and EMA, before any resume; the loss and the normalisation come from the script (losses.py, models.py)."""
    net = net.to(place.device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg.optimizer, net, cfg.lr, cfg.weight_decay, cfg.opt_kwargs, cfg.layer_decay)
    sched = make_scheduler(cfg.scheduler, opt, cfg.lr, cfg.epochs, steps, cfg.warmup_epochs, cfg.step_size,
                           cfg.step_gamma)
    amp = amp_dtype(place.device, cfg.amp, cfg.amp_dtype)
    scaler = torch.amp.GradScaler(place.device.split(":")[0]) if amp == torch.float16 else None
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(net, decay=cfg.ema, use_warmup=cfg.ema_warmup)  # warm-up: a short run moves its average
    fold = Fold(cfg, place, net, net, opt, sched, crit, mean, std, amp, scaler, ema)
    fold.head = {id(p) for p in head_parameters(net)}
    return fold


def head_parameters(net: nn.Module):
    """The parameters of the head (our task heads, or timm's classifier): all that trains under --freeze-epochs."""
    if hasattr(net, "heads") and hasattr(net, "backbone"):
        return list(net.heads.parameters())
    return list(net.get_classifier().parameters()) if hasattr(net, "get_classifier") else []


def wrap(fold: Fold) -> None:
    """Compile and/or wrap for DistributedDataParallel, after any resume has loaded the weights."""
    if fold.cfg.compile:
        fold.model = torch.compile(fold.net)
    if fold.place.backend is not None:
        from torch.nn.parallel import DistributedDataParallel

        dev = fold.place.device
        fold.model = DistributedDataParallel(fold.model, device_ids=[int(dev.split(":")[1])] if ":" in dev else None)


def mix_kind(cfg: TrainConfig, gen: torch.Generator) -> str | None:
    """This batch's mixing: CutMix with probability --cutmix, else Mixup with probability --mixup."""
    if not (cfg.cutmix or cfg.mixup):
        return None
    u = torch.rand(1, generator=gen).item()
    return "cutmix" if u < cfg.cutmix else "mixup" if u < cfg.cutmix + cfg.mixup else None


def optimizer_step(fold: Fold) -> None:
    """Clip, step (through the scaler for fp16), schedule, and move the EMA of the weights."""
    cfg = fold.cfg
    if cfg.clip_grad:
        if fold.scaler is not None:
            fold.scaler.unscale_(fold.opt)
        torch.nn.utils.clip_grad_norm_(fold.net.parameters(), cfg.clip_grad)
    if fold.frozen:  # the backbone's gradients dropped: the optimizer leaves a parameter without one untouched
        for p in fold.net.parameters():
            if id(p) not in fold.head:
                p.grad = None
    if fold.scaler is not None:
        fold.scaler.step(fold.opt)
        fold.scaler.update()
    else:
        fold.opt.step()
    fold.opt.zero_grad(set_to_none=True)
    fold.sched.step()
    fold.steps += 1
    if fold.ema is not None:
        fold.ema.update(fold.net, step=fold.steps)


def train_epoch(fold: Fold, loader, epoch: int) -> dict:
    cfg, dev = fold.cfg, fold.place.device
    fold.model.train()
    fold.frozen = epoch < cfg.freeze_epochs
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
    # Sums stay on the device: a .item() or .cpu() per step would stall a GPU's queue every step.
    total = torch.zeros((), dtype=torch.float64, device=dev)
    n, preds, ys, seen, batches, shown = 0, [], [], 0, len(loader), 0.0
    t_steady = time.time()
    # A bar on a terminal only (tmux): a log that captures stderr gets the one line per epoch, not carriage returns.
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr, leave=False,
               disable=None if fold.place.rank0 else True, mininterval=1, dynamic_ncols=True)
    waited, t_done = 0.0, time.perf_counter()  # time spent waiting for the loader's next batch, in steady state
    for step, (x, y) in enumerate(bar):
        stop_if_interrupted()
        waited += time.perf_counter() - t_done
        if step == 2 and batches > 4:  # steady state: after the first batches have warmed up workers and kernels
            t_steady, seen, waited = time.time(), 0, 0.0
        x = to_input(x, fold.mean, fold.std, dev, cfg.channels_last)
        y = y.to(dev)
        y_b, lam = y, 1.0
        kind = mix_kind(cfg, gen)
        if kind:
            x, y, y_b, lam = mix(kind, x, y, gen, cfg.cutmix_alpha, cfg.cutmix_mode, cfg.mixup_alpha)
        if fold.shown is None and fold.place.rank0:
            fold.shown = to_display(x[:32], fold.mean, fold.std)
        stepping = (step + 1) % cfg.accum_steps == 0 or step + 1 == batches
        with autocast(dev, fold.amp), sync_grads(fold, stepping):
            logits = fold.model(x)
            loss = fold.crit(logits, y)
            if lam != 1.0:
                loss = lam * loss + (1 - lam) * fold.crit(logits, y_b)
            scaled = loss / cfg.accum_steps if cfg.accum_steps > 1 else loss
            (fold.scaler.scale(scaled) if fold.scaler is not None else scaled).backward()
        if stepping:
            optimizer_step(fold)
        total += loss.detach() * len(y)
        n += len(y)
        seen += len(y)
        preds.append(probs18(logits.detach(), cfg.net_head).argmax(1))
        ys.append(y)
        if time.time() - shown > 2:  # the running loss, once every 2 s (each read waits for the device)
            bar.set_postfix(loss=f"{total.item() / n:.4f}", refresh=False)
            shown = time.time()
        t_done = time.perf_counter()
    s = scores(torch.cat(ys).cpu().numpy(), torch.cat(preds).cpu().numpy())  # waits for the last step
    f1 = s[f"f1_{cfg.only}"] if cfg.only else s["f1"]  # a task's model: the argmax of its task is its answer
    # images per second of all processes together (each trains its share of every batch under torchrun)
    rate = seen * fold.place.world / (time.time() - t_steady) if seen else None
    # loader_wait_ms: per image, the time this process waited for batches (the rest is the model's and the step's)
    return {"train_loss": total.item() / max(n, 1), "train_acc": s["acc"], "train_f1": f1, "img_per_s": rate,
            "loader_wait_ms": 1000 * waited / seen if seen else None}


def sync_grads(fold: Fold, stepping: bool):
    """Under torchrun, gradients are averaged across processes only on the batch that steps."""
    import contextlib

    no_sync = getattr(fold.model, "no_sync", None)
    return no_sync() if no_sync is not None and not stepping else contextlib.nullcontext()


def validate(fold: Fold, images: np.ndarray, labels: np.ndarray, ema: bool = False,
             tta: bool | str = False, net: nn.Module | None = None) -> tuple[dict, np.ndarray]:
    """Macro F1 of the whole validation fold (each process predicts a share under torchrun), of the weights,
    of their EMA or of `net` (--avg-best's average), with the TTA views `tta` names (maskfold.tta)
    or without."""
    place = fold.place
    mine = np.arange(place.rank, len(images), place.world)
    net = net if net is not None else fold.ema.module if ema else fold.model
    probs = predict_probs(net, fold.cfg.net_head, images[mine], fold.mean, fold.std, place.device,
                          fold.cfg.batch_size * 2, fold.amp, fold.cfg.channels_last, tta=tta)
    if place.world > 1:
        parts = [None] * place.world
        dist.all_gather_object(parts, (mine, probs))
        full = np.zeros((len(images), NUM_CLASSES))
        for idx, p in parts:
            full[idx] = p
        probs = full
    s = task_scores(labels, probs, fold.cfg.only)  # a task's model: that task's F1, accuracy and log loss
    tasks = {f"val_f1_{t}": s[f"f1_{t}"] for t in TASKS if f"f1_{t}" in s}
    return {"val_loss": s["loss"], "val_acc": s["acc"], "val_f1": s["f1"], **tasks}, probs


def note_precision(cfg: TrainConfig, device: str, dtype, log) -> None:
    """Say what --amp became."""
    if cfg.amp and dtype is None:
        log("--amp: off on a CPU, where autocast makes training slower (bf16 cost the demo model 7x); "
            "--amp-dtype bf16 or fp16 forces it")
    elif dtype is not None:
        name = "bf16" if "bfloat16" in str(dtype) else "fp16"
        where = "" if device.startswith("cuda") else ", forced on a CPU: expect it to be slower than float32"
        log(f"mixed precision: {name} autocast" + (" with a gradient scaler" if name == "fp16" else "") + where)


def stop_early(fold, epoch: int) -> bool:
    """--patience: rank 0 decides and every process under torchrun gets its answer, so that all leave the loop
    together instead of some waiting in the next all-reduce (each keeps the best epoch, but a fold resumed from
    an older checkpoint must not let one of them stop alone)."""
    cfg, place = fold.cfg, fold.place
    stop = bool(cfg.patience and fold.best["epoch"] > 0 and epoch - fold.best["epoch"] >= cfg.patience)
    if place.backend is None:
        return stop
    flag = torch.tensor([int(stop)], device=place.device)
    dist.broadcast(flag, 0)
    return bool(flag.item())


def setup_place(cfg: TrainConfig):
    """Device, rank and world size; under torchrun, one process per device."""
    import torch
    import torch.distributed as dist

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
