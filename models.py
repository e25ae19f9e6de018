"""Models: any timm backbone with one 18-way head, three task heads (mask 3, gender 2, age 3), or the head of one
task alone (train.py --task)."""
from __future__ import annotations

import difflib
from pathlib import Path

import torch
import torch.nn as nn

from maskfold.cli import UserError
from maskfold.labels import NUM_CLASSES, TASKS

HEADS = {"single": NUM_CLASSES, "multi": sum(TASKS.values()), **TASKS}  # a task's name: that task's head alone


class MultiHead(nn.Module):
    """The seed's "mutually exclusive" tasks: one backbone, a head per task."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        # Some backbones (MobileNetV3, LCNet) put a wider layer after pooling than num_features says.
        width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.heads = nn.ModuleDict({t: nn.Linear(width, n) for t, n in TASKS.items()})

    def forward(self, x):
        f = self.backbone(x)
        return torch.cat([self.heads[t](f) for t in TASKS], dim=1)


def check_name(name: str) -> None:
    """A timm model name, or one line with the closest ones (train.py asks before it reads any data)."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (closest: {', '.join(close)})" if close else ""
        raise UserError(f"--model {name}: not a timm model{hint}")


def create(name: str, head: str, pretrained: bool, drop_rate: float = 0.0, pretrained_file: Path | None = None,
           drop_path: float = 0.0) -> nn.Module:
    """timm's `name` with our head; ImageNet weights from `pretrained_file` (a state dict of that model, .pth or
    .safetensors), else, with `pretrained`, from the hub or its local cache; `drop_path`: timm's stochastic depth
    (drop_path_rate)."""
    import timm

    if head not in HEADS:
        raise UserError(f"--head {head}: unknown; choose from {', '.join(HEADS)}")
    check_name(name)
    num_classes = 0 if head == "multi" else HEADS[head]
    kw = dict(num_classes=num_classes, drop_rate=drop_rate)
    if drop_path:
        kw["drop_path_rate"] = drop_path
    if pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            raise UserError(f"--pretrained-file {pretrained_file}: no such file")
        kw["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
    elif pretrained:
        hub_or_cache_only()
    try:
        model = timm.create_model(name, pretrained=pretrained or pretrained_file is not None, **kw)
    except TypeError as e:
        if drop_path and "drop_path_rate" in str(e):
            raise UserError(f"--drop-path: {name} has no stochastic depth (timm's drop_path_rate)") from None
        raise
    except Exception as e:  # hub errors come in many types: offline, proxy, missing file
        if not (pretrained or pretrained_file):
            raise
        source = f"--pretrained-file {pretrained_file}" if pretrained_file else "the hub (offline?) or its cache"
        raise UserError(f"--model {name}: could not load pretrained weights from {source} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else ''}); pass --pretrained-file PATH (the "
                        "weights fetched once where there is internet) or --no-pretrained to train from scratch"
                        ) from None
    return MultiHead(model) if head == "multi" else model


def hub_or_cache_only() -> None:
    """Where the hub cannot be reached within 3 s, load weights from its local cache only: without this the
    hub's client retries for about a minute before it fails."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True


def norm_stats(model: nn.Module) -> tuple[list[float], list[float]]:
    """The input normalisation the backbone was pretrained with (ImageNet's where it says none)."""
    cfg = getattr(model.backbone if isinstance(model, MultiHead) else model, "pretrained_cfg", {}) or {}
    return list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))
