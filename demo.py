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

from maskfold import hard_demo
from maskfold.cli import Choice, UserError, arg, command, make_app, opt, result
from maskfold.demo_photos import PORTRAITS, draw_photo, load_portraits, make_people, person_layers, photo_format, save
from maskfold.files import write_csv
from maskfold.labels import PHOTO_STEMS, age_label, encode, gender_label, mask_label

app = make_app()


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


class Kind(Choice):
    hard = "hard"
    easy = "easy"


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    out: Path = arg("folder to create (train/ and eval/ go inside)")
    train_people: int = opt(80, "train people (7 photos each)")
    eval_people: int = opt(20, "eval people (7 photos each)")
    seed: int = opt(0, "random seed; the same seed gives the same files")
    kind: Kind = opt(Kind.hard, "hard: the real data's make-up, cues as ambiguous as faces, shared rooms, label noise; "
                    "easy: a clear cue per gender and age band (fast tests)")
    label_noise: Optional[float] = opt(None, "share of train people whose labels are wrong (a gender flip, "
                                       "incorrect_mask and normal swapped, an age moved across 30 or 60); default "
                                       "0.014 with --kind hard (about 1% of images, as in the real data), else 0")
    overwrite: bool = opt(False, "replace an existing demo folder")
    workers: int = opt(min(8, os.cpu_count() or 1), "processes drawing people (the files do not depend on it)")

    RENAMED = {"--people": "train_people"}  # ClassVar: the old spelling works for one release


def label_noise(o: DemoOptions) -> float:
    return o.label_noise if o.label_noise is not None else (0.014 if o.kind == "hard" else 0.0)


def check(o: DemoOptions) -> None:
    if o.train_people < 6 or o.eval_people < 1:
        raise UserError("--train-people must be at least 6 (one per gender x age stratum) and --eval-people at "
                        "least 1")
    if not 0 <= label_noise(o) <= 1:
        raise UserError(f"--label-noise {label_noise(o)}: a share of the train people, from 0 to 1")


@command(app, DemoOptions, check)
def main(o: DemoOptions):
    """Synthetic demo data in the competition's layout."""
    noise = label_noise(o)
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
