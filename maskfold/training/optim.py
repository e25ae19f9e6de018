"""Optimizers from timm's factory (every name `timm.optim.list_optimizers()` knows: sgd, adamw, madgrad, adamp,
lion, lamb, adabelief, ...) over timm's parameter groups (no weight decay on biases and norms; with --layer-decay,
a learning rate that shrinks layer by layer from the head down), and learning-rate schedules by plain name.

Every schedule steps once per batch; epoch-based settings are converted to steps.
"""
from __future__ import annotations

import ast

import torch

from maskfold.cli import UserError

S = torch.optim.lr_scheduler


def optimizer_names() -> list[str]:
    from timm.optim import list_optimizers

    return list_optimizers()


def parse_kwargs(spec: str | None) -> dict:
    """--opt-kwargs 'betas=(0.9,0.99) eps=1e-6': space-separated key=value pairs, each value a Python literal (a
    word that is none stays a string)."""
    out = {}
    for part in (spec or "").split():
        key, eq, value = part.partition("=")
        if not eq or not key.isidentifier():
            raise UserError(f"--opt-kwargs {spec}: {part} is not key=value (e.g. 'betas=(0.9,0.99) eps=1e-6')")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def param_groups(net: torch.nn.Module, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """timm's groups: biases, norm weights and the backbone's own no-decay names (ViT's pos_embed, cls_token) without
    weight decay; with `layer_decay`, each layer at lr x layer_decay ** (its depth below the head). A single head
    is the backbone's own top layer; our task heads (models.MultiHead) stand in that place, so every backbone
    layer below them has the rate it has under a single head."""
    from timm.optim._param_groups import param_groups_layer_decay, param_groups_weight_decay

    backbone, heads = (net.backbone, net.heads) if hasattr(net, "heads") and hasattr(net, "backbone") else (net, None)
    skip = set(backbone.no_weight_decay()) if hasattr(backbone, "no_weight_decay") else set()
    if layer_decay is None:  # names as `net` spells them: the backbone's under backbone. in a MultiHead
        return param_groups_weight_decay(net, weight_decay=weight_decay,
                                         no_weight_decay_list=skip | {f"backbone.{n}" for n in skip} if heads else skip)
    groups = param_groups_layer_decay(backbone, weight_decay=weight_decay, no_weight_decay_list=skip,
                                      layer_decay=layer_decay)
    if heads is not None:  # the backbone's top layer is one below the heads, as it is below a single head
        groups = [dict(g, lr_scale=g["lr_scale"] * layer_decay) for g in groups]
        groups += [dict(g, lr_scale=1.0) for g in param_groups_weight_decay(heads, weight_decay=weight_decay)]
    return groups


# create_optimizer_v2's own arguments: timm takes them out of the optimizer's settings, so --opt-kwargs must not
# carry them. Each is another option's, or our fixed choice; momentum and foreach go through where they apply.
FACTORY_OWN = {"lr": "--lr", "weight_decay": "--weight-decay", "layer_decay": "--layer-decay",
               "opt": "--optimizer", "filter_bias_and_bn": "biases and norm weights never get weight decay here",
               "layer_decay_min_scale": "--layer-decay", "layer_decay_no_opt_scale": "--layer-decay",
               "param_group_fn": "the groups are train.py's", "fallback_list": "the groups are train.py's",
               "fallback_no_weight_decay": "the groups are train.py's", "model_or_params": "the groups are train.py's"}


def make_optimizer(name: str, net: torch.nn.Module, lr: float, wd: float, kwargs: str | None = None,
                   layer_decay: float | None = None) -> torch.optim.Optimizer:
    """timm's optimizer `name` at `lr` (each group at lr x its lr_scale). Every --opt-kwargs setting must reach the
    optimizer: one that timm's factory would take as its own argument or drop (momentum for adamw, eps for sgd) is
    refused in one line."""
    from timm.optim import create_optimizer_v2

    given = parse_kwargs(kwargs)
    own = sorted(k for k in given if k in FACTORY_OWN)
    if own:
        raise UserError(f"--opt-kwargs {kwargs}: {own[0]} is not an optimizer setting ({FACTORY_OWN[own[0]]})")
    groups = param_groups(net, wd, layer_decay)
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    try:
        opt = create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=wd, **given)
    except TypeError as e:  # a keyword the optimizer does not take
        raise UserError(f"--opt-kwargs {kwargs}: {name} refuses it ({e})") from None
    for key, value in given.items():
        taken = opt.defaults.get(key, object())
        if key not in opt.defaults or not same_value(taken, value):
            raise UserError(f"--opt-kwargs {kwargs}: {name} has no setting {key} (timm's factory would drop it"
                            + (f"; it holds {key}={taken!r}" if key in opt.defaults else "") + "): leave it out")
    for g in opt.param_groups:  # the factory sets every group's lr to `lr`; the layer's scale comes back
        g["lr"] = lr * g.get("lr_scale", 1.0)
    return opt


def same_value(a, b) -> bool:
    """A setting as the optimizer holds it against the one given (a tuple may come back as a list)."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def check_optimizer(name: str, kwargs: str | None, lr: float, wd: float, layer_decay: float | None) -> None:
    """The optimizer with its settings, built once over a small layer before any fold is written: every refusal
    of make_optimizer comes before train.py writes anything."""
    import warnings

    with warnings.catch_warnings():  # timm's word that layer decay has no layers here: true of this small net
        warnings.simplefilter("ignore")
        make_optimizer(name, torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), lr, wd, kwargs,
                       layer_decay)


def cosine(span: int, floor: float = 0.01):
    """A half cosine from each group's peak down to `floor` of it over `span` steps, then flat."""
    import math

    return lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, span) / span))


# (optimizer, peak lrs of its groups, total steps, warm-up steps, steps per epoch, step-size epochs, step gamma)
SCHEDULERS = {
    "none": lambda opt, lrs, total, warm, steps, size, gamma: S.LambdaLR(opt, lambda s: 1.0),
    "step": lambda opt, lrs, total, warm, steps, size, gamma: S.StepLR(opt, step_size=max(size * steps, 1),
                                                                       gamma=gamma),
    "cyclic": lambda opt, lrs, total, warm, steps, size, gamma: S.CyclicLR(
        opt, base_lr=[lr / 10 for lr in lrs], max_lr=lrs, step_size_up=max(steps, 1), mode="triangular2",
        cycle_momentum=False),
    "cosine": lambda opt, lrs, total, warm, steps, size, gamma: S.LambdaLR(opt, cosine(max(total - warm, 1))),
    "onecycle": lambda opt, lrs, total, warm, steps, size, gamma: S.OneCycleLR(
        opt, max_lr=lrs, total_steps=total, pct_start=max(warm / total, 0.05)),
}


def make_scheduler(name: str, opt, lr: float, epochs: int, steps: int, warmup: int, step_size: int,
                   step_gamma: float):
    """The schedule `name` over epochs x steps batches, after a linear warm-up of `warmup` epochs
    (onecycle warms up by itself); each parameter group keeps its own peak (--layer-decay)."""
    total, warm = epochs * steps, warmup * steps
    lrs = [g["lr"] for g in opt.param_groups]
    main = SCHEDULERS[name](opt, lrs, total, warm, steps, step_size, step_gamma)
    if not warm or name == "onecycle":
        return main
    return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.01, total_iters=warm), main], milestones=[warm])
