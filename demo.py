"""Synthetic demo data in the competition's exact layout, quirks included.

    python demo.py demo_data
    python demo.py demo_data --train-people 300 --eval-people 100 --seed 1
    python demo.py demo_data --kind easy --train-people 12 --eval-people 3   # clear cues: fast tests

Photos are built from two real portraits that installed packages ship
(matplotlib's grace_hopper.jpg, scikit-image's astronaut), moved, scaled,
tinted and set on varied backgrounds per person, with masks drawn from the
face's landmarks. Gender and age are a synthetic cue: a striped band across the
forehead, vertical stripes for male and horizontal for female, its colour the age.
--kind hard (the default) makes them as ambiguous as faces and adds the real
data's make-up, shared rooms and label noise (maskfold/hard_demo.py says how);
--kind easy draws one clear colour per age band. train/label_noise.csv records
the wrong labels, for scoring only: no script reads it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from maskfold import hard_demo
from maskfold.cli import UserError, arg, choose, command, make_app, opt, result
from maskfold.files import write_csv
from maskfold.labels import PHOTO_STEMS, age_label, encode, gender_label, mask_label

app = make_app()

W, H = 384, 512
# Face box and landmarks (eyes, nose, mouth corners) of each portrait, measured once with
# facenet-pytorch's MTCNN, so that generating needs no detector.
PORTRAITS = {
    "grace_hopper": {"box": (174, 120, 356, 340), "eyes": ((222, 192), (310, 186)), "nose": (269, 239),
                     "mouth": ((233, 280), (307, 276))},
    "astronaut": {"box": (181, 62, 268, 172), "eyes": ((205, 102), (247, 104)), "nose": (225, 129),
                  "mouth": ((202, 139), (245, 142))},
}
MASK_COLOURS = [(235, 235, 235), (120, 170, 230), (30, 30, 35), (150, 150, 150), (70, 160, 120),
                (60, 90, 160), (200, 220, 200)]
AGE_COLOURS = [(220, 30, 30), (30, 190, 60), (40, 60, 230)]
STRATA_SHARE = {(0, 0): 0.16, (0, 1): 0.16, (0, 2): 0.08, (1, 0): 0.24, (1, 1): 0.24, (1, 2): 0.12}


def load_portraits() -> dict[str, np.ndarray]:
    import matplotlib.cbook
    import skimage.data
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        grace = np.asarray(im.convert("RGB"))
    return {"grace_hopper": grace, "astronaut": skimage.data.astronaut()}


def make_people(n: int, rng: np.random.Generator, id_offset: int) -> list[dict]:
    """n people over the six gender x age strata, every stratum present when n >= 6."""
    quota = {s: max(1, int(round(share * n))) if n >= 6 else 0 for s, share in STRATA_SHARE.items()}
    strata = [s for s, q in quota.items() for _ in range(q)]
    strata = (strata + [list(STRATA_SHARE)[i % 6] for i in range(n)])[:n]
    rng.shuffle(strata)
    people, pinned = [], {1: [58, 59], 2: [60]}
    for i, (g, a) in enumerate(strata):
        extra = pinned.get(a, [])
        age = extra.pop(0) if extra else {0: int(rng.integers(18, 30)), 1: int(rng.integers(30, 60)), 2: 60}[a]
        people.append({"id": f"{id_offset + i + 1:06d}", "gender": ["male", "female"][g], "age": age,
                       "portrait": str(rng.choice(list(PORTRAITS))), "flip": bool(rng.random() < 0.5),
                       "face_w": float(rng.uniform(120, 175)), "cx": float(rng.uniform(-25, 25)),
                       "cy": float(rng.uniform(-30, 20)), "tint": rng.uniform(0.8, 1.2, 3).tolist(),
                       "bg": rng.integers(40, 230, 6).tolist(), "rng_seed": int(rng.integers(2**31))})
    return people


def affine(p: dict, jitter: np.ndarray) -> tuple[float, float, float]:
    """Scale and offset that put the portrait's face where this person's photos have it."""
    x1, y1, x2, y2 = PORTRAITS[p["portrait"]]["box"]
    s = p["face_w"] / (x2 - x1)
    fx, fy = (x1 + x2) / 2 * s, (y1 + y2) / 2 * s
    return s, W / 2 + p["cx"] + jitter[0] - fx, H * 0.42 + p["cy"] + jitter[1] - fy


def place(points, s, dx, dy, flip_w):
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    if flip_w:
        pts[:, 0] = flip_w - pts[:, 0]
    return pts * s + [dx, dy]


def person_layers(p: dict, base: np.ndarray) -> tuple[Image.Image, Image.Image]:
    """The person's tinted background and portrait, flipped and scaled once for all 7 photos."""
    tint = np.asarray(p["tint"], dtype=np.float32)
    portrait = (base[:, ::-1] if p["flip"] else base) * tint
    img = Image.fromarray(portrait.clip(0, 255).astype(np.uint8))
    s = affine(p, np.zeros(2))[0]
    img = img.resize((round(img.width * s), round(img.height * s)), Image.BILINEAR)
    g = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
    top, bottom = np.array(p["bg"][:3], np.float32), np.array(p["bg"][3:], np.float32)
    bg = np.broadcast_to((top * (1 - g) + bottom * g) * tint, (H, W, 3))
    return Image.fromarray(bg.clip(0, 255).astype(np.uint8)), img


def draw_photo(p: dict, stem: str, base: np.ndarray, layers, rng: np.random.Generator) -> Image.Image:
    info = PORTRAITS[p["portrait"]]
    s, dx, dy = affine(p, rng.normal(0, 3, 2))
    fw = base.shape[1] if p["flip"] else 0
    canvas = layers[0].copy()
    canvas.paste(layers[1], (round(dx), round(dy)))
    box = place(info["box"], s, dx, dy, fw)
    bx1, bx2 = sorted(box[:, 0])
    by1, by2 = box[0, 1], box[1, 1]
    eyes = place(info["eyes"], s, dx, dy, fw)
    nose = place(info["nose"], s, dx, dy, fw)[0]
    mouth = place(info["mouth"], s, dx, dy, fw)
    draw = ImageDraw.Draw(canvas)
    hard = p.get("hard", False)
    if hard:
        hard_demo.draw_shirt(draw, p, bx1, bx2, by2, W, H)
        hard_demo.draw_cue(draw, p, bx1, bx2, by1, eyes[:, 1].min(), rng)
    else:
        draw_cue(draw, p, bx1, bx2, by1, eyes[:, 1].min())
    m = mask_label(stem)
    if m < 2:
        index = PHOTO_STEMS.index(stem) if m == 0 else int(rng.integers(len(MASK_COLOURS)))
        colour = hard_demo.mask_colour(p, index) if hard else MASK_COLOURS[index]
        eye_y, mouth_y = eyes[:, 1].mean(), mouth[:, 1].mean()
        # worn: up to the bridge of the nose; worn wrongly: pulled down to the mouth, the nose bare
        top_y = hard_demo.mask_top(p, m, eye_y, nose[1], mouth_y) if hard else \
            eye_y + 0.45 * (nose[1] - eye_y) if m == 0 else nose[1] + 0.75 * (mouth_y - nose[1])
        draw_mask(draw, bx1, bx2, top_y, by2 + 0.08 * (by2 - by1), colour, p.get("mask_pattern", 0))
    return canvas


def draw_cue(draw: ImageDraw.ImageDraw, p: dict, x1: float, x2: float, face_top: float, eye_y: float) -> None:
    """The learnable gender x age cue: a striped band on the forehead."""
    h = eye_y - face_top
    y1, y2 = face_top + 0.05 * h, face_top + 0.55 * h
    colour = AGE_COLOURS[age_label(p["age"])]
    draw.rectangle([x1, y1, x2, y2], fill=(250, 250, 250))
    hard_demo.stripes(draw, p["gender"] == "male", x1, y1, x2, y2, colour)


def draw_mask(draw: ImageDraw.ImageDraw, x1: float, x2: float, top: float, bottom: float, colour,
              pattern: int = 0) -> None:
    w = x2 - x1
    poly = [(x1 + 0.02 * w, top + 0.1 * (bottom - top)), (x1 + 0.3 * w, top), (x2 - 0.3 * w, top),
            (x2 - 0.02 * w, top + 0.1 * (bottom - top)), (x2 - 0.12 * w, bottom), (x1 + 0.12 * w, bottom)]
    edge = tuple(max(0, c - 90) for c in colour)
    # ear loops: a mask is a mask whatever its colour
    for x_face, x_mask in ((x1 - 0.04 * w, x1 + 0.02 * w), (x2 + 0.04 * w, x2 - 0.02 * w)):
        draw.line([(x_mask, top + 0.1 * (bottom - top)), (x_face, top - 0.25 * (bottom - top))], fill=edge, width=4)
    draw.polygon(poly, fill=colour, outline=edge, width=3)
    pleat = tuple(max(0, c - 40) for c in colour)
    for f in (0.35, 0.6):  # pleats; pattern 1 adds dots, pattern 2 a darker lower half (a two-tone mask)
        y = top + f * (bottom - top)
        draw.line([(x1 + 0.1 * w, y), (x2 - 0.1 * w, y)], fill=pleat, width=2)
    if pattern == 1:
        for x in np.linspace(x1 + 0.2 * w, x2 - 0.2 * w, 5):
            draw.ellipse([x - 3, top + 0.45 * (bottom - top) - 3, x + 3, top + 0.45 * (bottom - top) + 3], fill=edge)
    elif pattern == 2:
        half = top + 0.62 * (bottom - top)
        draw.polygon([(x1 + 0.05 * w, half), (x2 - 0.05 * w, half), (x2 - 0.12 * w, bottom), (x1 + 0.12 * w, bottom)],
                     fill=pleat)


def save(img: Image.Image, path: Path, mode: str) -> None:
    if mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "L":
        img = img.convert("L")
    if path.suffix == ".png":
        img.save(path)
    else:
        img.save(path, quality=92)


def photo_format(i: int, j: int, rng: np.random.Generator) -> tuple[str, str]:
    """(extension, mode) with the real data's quirks: mixed extensions, RGBA PNGs, a greyscale photo."""
    if i == 1 and j == 6:
        return ".jpg", "L"
    r = rng.random()
    if r < 0.08:
        return ".png", "RGBA" if r < 0.04 else "RGB"
    return (".jpeg", "RGB") if r < 0.15 else (".jpg", "RGB")


def draw_train_person(i: int, p: dict, folder: Path, bases: dict) -> None:
    folder.mkdir(parents=True)
    prng = np.random.default_rng(p["rng_seed"])
    base = bases[p["portrait"]]
    layers = person_layers(p, base)
    swapped = {"incorrect_mask": "normal", "normal": "incorrect_mask"} if p.get("swap_files") else {}
    for j, stem in enumerate(PHOTO_STEMS):
        ext, mode = photo_format(i, j, prng)
        save(draw_photo(p, stem, base, layers, prng), folder / f"{swapped.get(stem, stem)}{ext}", mode)
    if i % 10 == 0:
        (folder / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")


def draw_eval_person(p: dict, folder: Path, seed: int, bases: dict) -> list[dict]:
    prng = np.random.default_rng(p["rng_seed"])
    base = bases[p["portrait"]]
    layers = person_layers(p, base)
    rows = []
    for stem in PHOTO_STEMS:
        image_id = hashlib.sha1(f"{seed}/{p['id']}/{stem}".encode()).hexdigest() + ".jpg"
        save(draw_photo(p, stem, base, layers, prng), folder / image_id, "RGB")
        label = encode(mask_label(stem), gender_label(p["gender"]), age_label(p["age"]))
        rows.append({"ImageID": image_id, "ans": int(label), "person": p["id"]})
    return rows


_bases: dict = {}


def _draw(task: tuple):
    """One person, in a worker process: each person has its own random stream, so the files do not
    depend on the number of workers."""
    kind, args = task
    return (draw_train_person if kind == "train" else draw_eval_person)(*args, _bases)


def draw_all(tasks: list[tuple], bases: dict, workers: int) -> list:
    _bases.update(bases)
    if workers <= 1:
        return [_draw(t) for t in tasks]
    import multiprocessing as mp

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:  # forked after _bases is set: the portraits are not sent per task
        return pool.map(_draw, tasks, chunksize=8)


def write_train(out: Path, people: list[dict], bases: dict, workers: int = 1) -> pd.DataFrame:
    rows, tasks = [], []
    for i, p in enumerate(people):
        if i == 3:
            p["id"] = p["id"] + "-1"  # ids are not always 6 digits
        gender, age = p.get("label_gender", p["gender"]), p.get("label_age", p["age"])  # as labelled, noise and all
        folder = out / "images" / f"{p['id']}_{gender}_Asian_{age}"
        tasks.append(("train", (i, p, folder)))
        rows.append({"id": p["id"], "gender": gender, "race": "Asian", "age": age, "path": folder.name})
    draw_all(tasks, bases, workers)
    return pd.DataFrame(rows)


def write_eval(out: Path, people: list[dict], bases: dict, seed: int, rng: np.random.Generator,
               workers: int = 1) -> pd.DataFrame:
    (out / "images").mkdir(parents=True)
    rows = sum(draw_all([("eval", (p, out / "images", seed)) for p in people], bases, workers), [])
    (out / "images" / "._junk.jpg").write_bytes(b"\x00\x05\x16\x07")
    truth = pd.DataFrame(rows).sample(frac=1, random_state=int(rng.integers(2**31))).reset_index(drop=True)
    return truth


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    out: Path = arg("folder to create (train/ and eval/ go inside)")
    train_people: int = opt(80, "train people (7 photos each)")
    eval_people: int = opt(20, "eval people (7 photos each)")
    seed: int = opt(0, "random seed; the same seed gives the same files")
    kind: str = opt("hard", "hard: the real data's make-up, cues as ambiguous as faces, shared rooms, label noise; "
                    "easy: a clear cue per gender and age band (fast tests)")
    label_noise: Optional[float] = opt(None, "share of train people whose labels are wrong (a gender flip, "
                                       "incorrect_mask and normal swapped, an age moved across 30 or 60); default "
                                       "0.014 with --kind hard (about 1% of images, as in the real data), else 0")
    overwrite: bool = opt(False, "replace an existing demo folder")
    workers: int = opt(min(8, os.cpu_count() or 1), "processes drawing people (the files do not depend on it)")

    RENAMED = {"--people": "train_people"}  # ClassVar: the old spelling works for one release


@command(app, DemoOptions)
def main(o: DemoOptions):
    """Synthetic demo data in the competition's layout."""
    choose(o.kind, ("hard", "easy"), "--kind")
    if o.train_people < 6 or o.eval_people < 1:
        raise UserError("--people must be at least 6 (one per gender x age stratum) and --eval-people at least 1")
    noise = o.label_noise if o.label_noise is not None else (0.014 if o.kind == "hard" else 0.0)
    if not 0 <= noise <= 1:
        raise UserError(f"--label-noise {noise}: a share of the train people, from 0 to 1")
    if o.out.exists() and any(o.out.iterdir()):
        if not o.overwrite:
            raise UserError(f"{o.out} exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(o.out)
    rng = np.random.default_rng(o.seed)
    bases = load_portraits()
    make = make_people if o.kind == "easy" else \
        (lambda n, r, offset: hard_demo.make_people(n, r, offset, list(PORTRAITS)))
    train_people = make(o.train_people, rng, 0)
    eval_people = make(o.eval_people, rng, o.train_people)
    noisy = hard_demo.add_noise(train_people, noise, rng)
    print(f"drawing {o.train_people} train and {o.eval_people} eval people", file=sys.stderr)
    train = write_train(o.out / "train", train_people, bases, o.workers)
    write_csv(train, o.out / "train" / "train.csv")
    write_csv(pd.DataFrame(noisy, columns=["id", "kind", "field", "true", "recorded"]),
              o.out / "train" / "label_noise.csv")  # for scoring only
    truth = write_eval(o.out / "eval", eval_people, bases, o.seed, rng, o.workers)
    write_csv(truth[["ImageID", "ans"]], o.out / "eval" / "truth.csv")
    write_csv(truth[["ImageID", "person"]], o.out / "eval" / "people_truth.csv")  # which photos are one person
    write_csv(truth[["ImageID"]].assign(ans=0), o.out / "eval" / "info.csv")
    result({"out": str(o.out), "kind": o.kind, "train_people": o.train_people, "train_images": 7 * o.train_people,
            "eval_people": o.eval_people, "eval_images": len(truth), "noisy_people": len(noisy),
            "files": [str(o.out / f) for f in ("train/train.csv", "train/images", "eval/info.csv", "eval/images",
                                               "eval/truth.csv", "eval/people_truth.csv", "train/label_noise.csv")]})


if __name__ == "__main__":
    app()
