"""What decides what a fold learns, beyond its options: the code that trains it (the scripts, models.py, losses.py,
this package and the libraries' versions), the bytes of every file an option names (--init-from,
--pretrained-file, --aug, --extra), the bytes of every photo it trains or validates on, and the precision and
device it computes with. Recorded in each fold's config.json as one digest with its parts: a finished fold of
another run is copied instead of trained again only where every part is the same (admission.twin_fold), so a
copy is provably the same training. Threads and loader workers are left out: they change neither the draws
(augmentation is seeded per photo) nor the recipe, only the last bits of the floats' sums."""
from __future__ import annotations

import hashlib
import json
import sys
from importlib import metadata
from pathlib import Path

from maskfold.probs import sha256

LIBRARIES = ("torch", "torchvision", "timm", "albumentations", "numpy", "opencv-python-headless", "pillow",
             "scikit-learn")
OPTION_FILES = ("init_from", "pretrained_file", "aug", "extra")
ROOT = Path(__file__).resolve().parents[2]


def code_files() -> list[Path]:
    """The source that trains a fold: train.py, models.py and losses.py as imported, and every module of the
    package."""
    mine = [ROOT / "train.py"]
    for name in ("models", "losses"):
        module = sys.modules.get(name)
        mine.append(Path(module.__file__).resolve() if module is not None and getattr(module, "__file__", None)
                    else ROOT / f"{name}.py")
    return mine + sorted((ROOT / "maskfold").rglob("*.py"))


def code_digest() -> str:
    h = hashlib.sha256()
    for f in code_files():
        name = str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else f.name
        h.update(f"{name}\0{sha256(f) if f.is_file() else 'absent'}\n".encode())
    return h.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out | {"python": sys.version.split()[0]}


def images_digest(files: list[str]) -> str:
    """Every photo's path and bytes (crops made again at the same paths are other photos)."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f"{f}\0{sha256(Path(f))}\n".encode())
    return h.hexdigest()[:16]


def learning_record(cfg, files: list[str], numerics: dict) -> dict:
    """The parts, and their digest (`digest`): what a twin must share."""
    named = {}
    for name in OPTION_FILES:
        value = getattr(cfg, name, None)
        if value is not None and Path(value).is_file():
            named[name] = sha256(Path(value))[:16]
    parts = {"code": code_digest(), "libraries": library_versions(), "files": named,
             "images": images_digest(files), "numerics": numerics}
    return {**parts, "digest": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]}


def numerics(cfg) -> dict:
    """The device kind and precision a fold computes with, as train.py resolves them."""
    from maskfold.device import amp_dtype, resolve_device

    device = resolve_device(cfg.device)
    dtype = amp_dtype(device, cfg.amp, getattr(cfg.amp_dtype, "value", cfg.amp_dtype))
    return {"device": device, "amp": str(dtype).replace("torch.", "") if dtype is not None else None,
            "channels_last": cfg.channels_last, "compile": cfg.compile}


def what_differs(mine: dict, theirs: dict | None) -> str:
    """'the code', 'the photos', ...: which parts of two learning records differ, for the line that says why a
    fold that looks like a twin is trained."""
    if not theirs:
        return "what it learnt from (it has no record of it)"
    words = {"code": "the code (train.py, models.py, losses.py or the package)", "libraries": "a library's version",
             "files": "the content of a file an option names", "images": "the photos' content",
             "numerics": "the device or precision"}
    return ", ".join(w for k, w in words.items() if mine.get(k) != theirs.get(k)) or "its record"
