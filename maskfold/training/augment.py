"""A training photo's augmentation: the presets, or an albumentations pipeline saved in a file, checked to keep
the cached crop's size and type, and recorded in the run.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # else its import asks the network for a newer version
import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402

FLIP = [A.HorizontalFlip(p=0.5)]


class TorchvisionPolicy(A.ImageOnlyTransform):
    """torchvision's automatic augmentation policies (RandAugment, TrivialAugmentWide) on the cached uint8 crop, as a
    step of an albumentations pipeline: each call draws its torch seed from the pipeline's own generator, so the
    augmentation stays seeded per (epoch, photo) whichever worker draws it."""

    def __init__(self, policy: str = "randaugment", num_ops: int = 2, magnitude: int = 9, p: float = 1.0):
        super().__init__(p=p)
        self.policy, self.num_ops, self.magnitude = policy, num_ops, magnitude
        from torchvision.transforms import v2

        self.op = v2.RandAugment(num_ops=num_ops, magnitude=magnitude) if policy == "randaugment" else \
            v2.TrivialAugmentWide()

    def get_params(self):
        return {"torch_seed": self.py_random.randrange(2**31)}

    def apply(self, img, torch_seed: int = 0, **params):
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed)
            out = self.op(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
        return out.permute(1, 2, 0).numpy()

    def get_transform_init_args_names(self):
        return ("policy", "num_ops", "magnitude")


CUTOUT = A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.2, 0.4), hole_width_range=(0.2, 0.4), p=0.5)


# Presets; a name, or the path of a pipeline saved by albumentations (A.save, .json or .yaml) with --aug FILE.
# The four face presets each add one family of what competitors use on faces to the flip.
AUGS = {
    "none": lambda: [],
    "light": lambda: [*FLIP, A.Affine(scale=(0.92, 1.08), translate_percent=(-0.04, 0.04), rotate=(-8, 8), p=0.7),
                      A.RandomBrightnessContrast(0.15, 0.15, p=0.5)],
    # The team baseline of COMPETITION.md (Resize is the cache's, Normalize the device's).
    "seed": lambda: [A.ColorJitter(brightness=(0.2, 3), contrast=(0.2, 3), saturation=(0.2, 3), hue=(-0.3, 0.3),
                                   p=1.0), *FLIP],
    "ssr": lambda: [*FLIP, A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), rotate=(-15, 15), p=0.8)],
    "dropout": lambda: [*FLIP, A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.08, 0.2),
                                               hole_width_range=(0.08, 0.2), p=0.5)],
    "noise": lambda: [*FLIP, A.GaussNoise(std_range=(0.02, 0.08), p=0.5), A.GaussianBlur(blur_limit=(3, 5), p=0.2)],
    "colour": lambda: [*FLIP, A.ColorJitter(0.25, 0.25, 0.25, 0.05, p=0.8), A.ToGray(p=0.1)],
    "strong": lambda: [*FLIP, A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), rotate=(-15, 15), p=0.8),
                       A.ColorJitter(0.25, 0.25, 0.25, 0.05, p=0.8),
                       A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
                       A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.08, 0.2),
                                       hole_width_range=(0.08, 0.2), p=0.5)],
    # The fine-tuners' automatic policies (torchvision's): RandAugment (2 ops at magnitude 9) with Cutout (one hole,
    # a fifth to two fifths of each side, half the time), and TrivialAugment (one op at a random strength).
    "randaugment": lambda: [*FLIP, TorchvisionPolicy("randaugment"), CUTOUT],
    "trivialaugment": lambda: [*FLIP, TorchvisionPolicy("trivialaugment")],
}


AUG_FILES = (".json", ".yaml", ".yml")


def is_aug_file(aug: str) -> bool:
    return aug.lower().endswith(AUG_FILES)


def build_aug(aug: str):
    """The training augmentation: a preset's Compose, or the pipeline saved in a file (None: nothing to do). A
    file that does not load is one line naming it."""
    if not is_aug_file(aug):
        steps = AUGS[aug]()
        return A.Compose(steps) if steps else None
    from maskfold.cli import UserError

    path = Path(aug)
    if not path.is_file():
        raise UserError(f"--aug {aug}: no such file")
    try:
        tf = A.load(str(path), data_format="json" if path.suffix.lower() == ".json" else "yaml")
    except Exception as e:  # albumentations raises many kinds on a file it cannot read
        raise UserError(f"--aug {aug}: not an albumentations pipeline ({type(e).__name__}: {e})") from None
    if not isinstance(tf, A.BaseCompose):
        tf = A.Compose([tf])
    return tf


NOT_ON_CACHED = ("Normalize", "ToFloat", "FromFloat", "ToTensorV2")  # train.py's own steps, done on the device


def walk(tf):
    """Every transform of a pipeline, nested ones (OneOf, Sequential) too."""
    yield tf
    for t in getattr(tf, "transforms", []) or []:
        yield from walk(t)


def check_aug_file(aug: str, img_size: tuple[int, int]) -> None:
    """An --aug file must take the cached uint8 crop at --img-size to a uint8 image of the same size: the crops
    are cached resized and normalised on the device with the model's statistics, so a Normalize in the file
    would normalise twice and a Resize or crop would train at another size than validation and predict see."""
    from maskfold.cli import UserError

    steps = [t.__class__.__name__ for t in walk(build_aug(aug))]
    found = [n for n in steps if n in NOT_ON_CACHED]
    if found:
        raise UserError(f"--aug {aug}: drop its {found[0]}: train.py normalises on the device with the model's mean "
                        "and std, and the file's transforms must keep the uint8 image")
    probe = build_aug(aug)  # a second copy, every step switched on, to see what it does to a crop
    for t in walk(probe):
        if hasattr(t, "p"):
            t.p = 1.0
    h, w = img_size
    x = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for seed in range(4):
        probe.set_random_seed(seed)
        y = probe(image=x)["image"]
        if not isinstance(y, np.ndarray) or y.shape != x.shape or y.dtype != np.uint8:
            what = f"{y.shape[0]}x{y.shape[1]} {y.dtype}" if isinstance(y, np.ndarray) else type(y).__name__
            raise UserError(f"--aug {aug}: turns a {h}x{w} uint8 crop into {what}: its transforms must keep the size "
                            f"and type (the crops are cached at --img-size {h} {w}, where validation and predict.py "
                            "see them); drop its Resize or crop, or give that size as --img-size")


def aug_record(aug: str) -> dict:
    """What a run records of its augmentation: a file's pipeline itself, so that a changed file is seen."""
    if not is_aug_file(aug):
        return {}
    import hashlib
    import json

    pipeline = A.to_dict(build_aug(aug))
    return {"aug_pipeline": pipeline,
            "aug_digest": hashlib.sha256(json.dumps(pipeline, sort_keys=True).encode()).hexdigest()[:16]}
