"""Image files: finding them, decoding any of them to upright RGB, and reading ahead.

Every script reads photos through `read_image`, so EXIF orientation, 16-bit greyscale,
transparency and truncated files are handled once, the same way for crop, train and predict.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from maskfold.cli import UserError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
ORIENTATION = 0x0112  # the EXIF tag phones write instead of rotating the pixels

# Truncated JPEGs must fail loudly, never decode into half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_hidden(name: str) -> bool:
    """macOS `._*` files and other dot files are never images."""
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    return not is_hidden(name) and Path(name).suffix.lower() in IMAGE_EXTS


def find_by_stem(folder: Path, stem: str) -> Path | None:
    """The file in `folder` whose stem is `stem`, whatever its extension."""
    hits = [p for p in folder.iterdir() if p.is_file() and not is_hidden(p.name) and p.stem == stem]
    if len(hits) > 1:
        raise UserError(f"{folder}: more than one file named {stem}.* ({', '.join(h.name for h in hits)})")
    return hits[0] if hits else None


def stem_key(image_id: str) -> str:
    """A photo's name but for its extension, below its folder when it has one ('p1/mask1' for p1/mask1.png):
    how a crop (<stem>.jpg) is matched with its raw photo's ImageID."""
    p = Path(image_id)
    return f"{p.parent.as_posix()}/{p.stem}" if p.parent != Path(".") else p.stem


def match_ids(folder: Path, ids: list[str], found: list[str], what: str) -> list[str]:
    """Each ImageID's file below `folder`, as a path relative to it: the same name, else the one name among
    `found` (the folder's photos, relative paths) that differs only by its extension. Two candidates, or
    none, are one line naming them (`what`: where the ImageIDs come from)."""
    names, by_key = set(found), {}
    for f in found:
        by_key.setdefault(stem_key(f), []).append(f)
    out, missing = [], []
    for i in ids:
        if i in names or (folder / i).is_file():
            out.append(i)
            continue
        hits = by_key.get(stem_key(i), [])
        if len(hits) > 1:
            raise UserError(f"{folder}: more than one file for {i} ({', '.join(sorted(hits))})")
        (out if hits else missing).append(hits[0] if hits else i)
    if missing:
        raise UserError(f"{folder}: {len(missing)} image(s) of {what} missing, first {', '.join(missing[:3])}")
    return out


def read_image(path: Path, reduce: int = 1) -> np.ndarray:
    """Any image file -> HxWx3 uint8 RGB, upright as a viewer shows it (EXIF orientation applied).
    `reduce` > 1 lets JPEG decode at roughly 1/reduce of the size (fast looks, not crops).
    Raises UserError naming the file if it cannot be decoded."""
    try:
        with Image.open(path) as im:
            if reduce > 1:
                im.draft("RGB", (max(1, im.width // reduce), max(1, im.height // reduce)))
            im.load()
            if im.getexif().get(ORIENTATION, 1) != 1:
                im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: unreadable image ({e})") from None


def to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit greyscale: map 0..65535 to 0..255 rather than clip (8-bit data stored wide stays as is).
        a = np.asarray(im, dtype=np.float64)
        if a.size and a.max() > 255:
            a = a / 257.0
        im = Image.fromarray(np.rint(a).clip(0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels go on white, as a viewer would show them.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def load_cache(paths, size: tuple[int, int], workers: int | None = None) -> np.ndarray:
    """Decode and resize every image once: (N, H, W, 3) uint8 at size (height, width)."""
    import cv2

    h, w = size
    out = np.empty((len(paths), h, w, 3), dtype=np.uint8)

    def one(i):
        out[i] = cv2.resize(read_image(paths[i]), (w, h), interpolation=cv2.INTER_AREA)

    with ThreadPoolExecutor(workers or min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(paths))))
    return out


T = TypeVar("T")
R = TypeVar("R")


def read_ahead(pool: Executor, jobs: Iterable[T], load: Callable[[T], R]) -> Iterator[tuple[T, R]]:
    """(job, load(job)) in order, the next job already loading in `pool` while the caller works on
    this one: decoding overlaps detection (crop.py) or inference (predict.py)."""
    pending = None
    for job in jobs:
        future = pool.submit(load, job)
        if pending is not None:
            yield pending[0], pending[1].result()
        pending = (job, future)
    if pending is not None:
        yield pending[0], pending[1].result()


def describe_folder(tree: Path, files: list[Path], sample: int = 24) -> dict:
    """What kind of images a folder holds, as a model sees them: crop.py's face crops (its report sits at the
    folder's root) or whole photos, and their median size (height, width) over a sample."""
    crops = (Path(tree) / "crop_report.csv").is_file() or (Path(tree) / "crop_summary.json").is_file()
    pick = files[::max(1, len(files) // sample)][:sample]
    sizes = []
    for f in pick:
        try:
            with Image.open(f) as im:
                sizes.append(im.size)
        except OSError:
            continue
    w, h = (int(v) for v in np.median(sizes, axis=0)) if sizes else (0, 0)
    return {"folder": str(Path(tree).resolve()), "crops": crops, "size": [h, w]}


def kind_differs(trained: dict, given: dict) -> str | None:
    """Why `given` images are not of the kind a model `trained` on (None if they are): crops against whole
    photos, or a size or shape off by half."""
    def name(d):
        return "crop.py's face crops" if d["crops"] else "whole photos (no crop report beside them)"

    if trained["crops"] != given["crops"]:
        return f"it trained on {name(trained)} of {trained['folder']}, these are {name(given)}"
    (th, tw), (gh, gw) = trained["size"], given["size"]
    if min(th, tw, gh, gw) > 0 and (max(gw / tw, tw / gw) > 1.5 or abs(gh / gw - th / tw) > 0.2):
        return f"it trained on images of about {tw}x{th} px, these are about {gw}x{gh}"
    return None
