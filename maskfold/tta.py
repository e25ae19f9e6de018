"""Test-time augmentation: views of a normalised batch whose class probabilities are averaged with the
image's own. Each family of views is named on the command line (`--tta flip,shift`); they work on the
device, on the batch as the model sees it (torch is imported where a view is made)."""
from __future__ import annotations

from maskfold.cli import UserError, choose


def affine(x, scale: float = 1.0, tx: float = 0.0, ty: float = 0.0):
    """The batch zoomed by `scale` (>1: closer) and moved by tx, ty (shares of the width and height),
    edges repeated where the view leaves the image."""
    import torch
    import torch.nn.functional as F

    theta = torch.tensor([[1 / scale, 0, -2 * tx], [0, 1 / scale, -2 * ty]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


VIEWS = {
    "flip": lambda x: [x.flip(3)],  # faces are left-right symmetric, labels are not
    "shift": lambda x: [affine(x, tx=0.06), affine(x, tx=-0.06)],
    "scale": lambda x: [affine(x, scale=1.1), affine(x, scale=0.9)],
}
PASSES = {"flip": 1, "shift": 2, "scale": 2}


def parse(spec: str | bool | list | tuple, option: str = "--tta") -> tuple[str, ...]:
    """'flip,shift' -> ('flip', 'shift'); 'none' or '' -> (); True/False: the flip or nothing (older records)."""
    if isinstance(spec, bool):
        return ("flip",) if spec else ()
    names = list(spec) if isinstance(spec, (list, tuple)) else [s.strip() for s in spec.split(",") if s.strip()]
    if names in ([], ["none"]):
        return ()
    for n in names:
        choose(n, VIEWS, option)
    if len(set(names)) < len(names):
        raise UserError(f"{option} {','.join(names)}: a view named twice")
    return tuple(names)


def passes(names: tuple[str, ...]) -> int:
    """Forward passes per image: the image itself and each view."""
    return 1 + sum(PASSES[n] for n in names)


def views(x, names: tuple[str, ...]) -> list:
    return [x] + [v for n in names for v in VIEWS[n](x)]
