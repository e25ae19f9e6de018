"""Models: any timm backbone with one 18-way head or three task heads (mask 3, gender 2, age 3)."""
from __future__ import annotations

import difflib

import torch
import torch.nn as nn

from maskfold.cli import UserError
from maskfold.labels import NUM_CLASSES, TASKS

HEADS = {"single": NUM_CLASSES, "multi": sum(TASKS.values())}


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


def create(name: str, head: str, pretrained: bool, drop_rate: float = 0.0) -> nn.Module:
    import timm

    if head not in HEADS:
        raise UserError(f"--head {head}: unknown; choose from {', '.join(HEADS)}")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (closest: {', '.join(close)})" if close else ""
        raise UserError(f"--model {name}: not a timm model{hint}")
    num_classes = NUM_CLASSES if head == "single" else 0
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate)
    except Exception as e:  # hub errors come in many types: offline, proxy, missing file
        if not pretrained:
            raise
        raise UserError(f"--model {name}: could not load pretrained weights ({type(e).__name__}); "
                        "offline or no weights published? pass --no-pretrained to train from scratch") from None
    return model if head == "single" else MultiHead(model)


def norm_stats(model: nn.Module) -> tuple[list[float], list[float]]:
    """The input normalisation the backbone was pretrained with (ImageNet's where it says none)."""
    cfg = getattr(model.backbone if isinstance(model, MultiHead) else model, "pretrained_cfg", {}) or {}
    return list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))
