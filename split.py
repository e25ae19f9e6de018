"""Person-level stratified K folds: train.csv + an image tree -> folds.csv.

    python split.py data/train/train.csv data/train/images -o work/folds.csv --folds 5 --seed 42
    python split.py data/train/train.csv work/crops/train -o work/folds.csv   # a crop tree mirrors the raw one

One row per image; `path` is relative to the folder of folds.csv, so the file
and its images can move together. All 7 photos of a person share a fold
(photos of one person are near duplicates: an image-level split leaks).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from maskfold.cli import UserError, arg, command, make_app, opt, result
from maskfold.files import check_new, check_outside, read_table
from maskfold.folds import write_folds
from maskfold.images import find_by_stem, is_hidden
from maskfold.labels import GENDERS, PHOTO_STEMS, age_label, encode, gender_label, mask_label

app = make_app()
TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")


def read_train_csv(path: Path, allow_duplicate_ids: bool) -> pd.DataFrame:
    df = read_table(path, dtype=str, keep_default_na=False)
    missing = [c for c in TRAIN_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    if df.empty:
        raise UserError(f"{path}: no rows")
    for i, row in df.iterrows():
        where = f"{path}: row {i + 2} (id {row['id']!r})"
        if row["gender"].strip() not in GENDERS:
            raise UserError(f"{where}: unknown gender {row['gender']!r} (expected male or female)")
        if not row["age"].strip().isdigit():
            raise UserError(f"{where}: age {row['age']!r} is not a whole number")
        if not row["path"].strip() or is_hidden(row["path"].strip()):
            raise UserError(f"{where}: bad path {row['path']!r}")
    df = df.apply(lambda c: c.str.strip())
    df["age"] = df["age"].astype(int)
    for col, what in (("path", "folder"), ("id", "id")):
        dup = df[col].duplicated(keep=False)
        if dup.any() and (col == "path" or not allow_duplicate_ids):
            rows = [str(i + 2) for i in np.flatnonzero(dup)[:4]]
            hint = " (pass --allow-duplicate-ids to keep them, in one fold)" if col == "id" else ""
            raise UserError(f"{path}: duplicate {what} {df[col][dup].iloc[0]!r} on rows {', '.join(rows)}{hint}")
    return df


def list_images(people: pd.DataFrame, images: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per photo; also the names of files nobody asked for."""
    rows, extra = [], []
    for _, p in people.iterrows():
        folder = images / p["path"]
        if not folder.is_dir():
            raise UserError(f"{folder}: person folder missing (train.csv id {p['id']})")
        for stem in PHOTO_STEMS:
            f = find_by_stem(folder, stem)
            if f is None:
                raise UserError(f"{folder}: photo {stem}.* missing")
            rows.append({"file": f, "person": p["path"], "id": p["id"], "gender": p["gender"], "age": p["age"],
                         "mask_label": mask_label(stem)})
        extra += [str(f) for f in folder.iterdir() if not is_hidden(f.name) and f.stem not in PHOTO_STEMS]
    known = set(people["path"])
    # At the top only stray folders count: a crop tree also holds crop.py's report and preview.
    extra += [str(d) for d in images.iterdir() if not is_hidden(d.name) and d.name not in known and d.is_dir()]
    return pd.DataFrame(rows), extra


def assign_folds(df: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    n_people = df["id"].nunique()
    if not 2 <= folds <= n_people:
        raise UserError(f"--folds {folds}: must be between 2 and the number of people ({n_people})")
    from sklearn.model_selection import StratifiedGroupKFold

    strata = df["gender_label"] * 3 + df["age_label"]
    fold = np.full(len(df), -1)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(splitter.split(df, strata, groups=df["id"])):
        fold[val] = k
    return fold


def check_no_leak(df: pd.DataFrame) -> None:
    spans = df.groupby("id")["fold"].nunique()
    if (spans > 1).any():
        raise AssertionError(f"person {spans[spans > 1].index[0]} spans two folds")
    if (df["fold"] < 0).any():
        raise AssertionError("an image got no fold")


@dataclass(frozen=True, kw_only=True)
class SplitOptions:
    train_csv: Path = arg("train.csv: id,gender,race,age,path")
    images: Path = arg("folder of person folders (raw photos or a crop tree)")
    out: Path = opt(Path("folds.csv"), "folds CSV to write", "--out", "-o")
    folds: int = opt(5, "number of folds K")
    seed: int = opt(42, "random seed of the split")
    allow_duplicate_ids: bool = opt(False, "keep rows sharing an id (kept in one fold)")
    fixes: Optional[Path] = opt(None, "label fixes to apply (rows of audit.py's label_issues.csv that you accept); "
                                "train.csv and the images stay as they are, folds.csv's `fix` column says what changed")
    overwrite: bool = opt(False, "replace an existing output file")


def check(o: SplitOptions) -> None:
    if not o.train_csv.is_file():
        raise UserError(f"{o.train_csv}: no such file")
    if not o.images.is_dir():
        raise UserError(f"{o.images}: no such folder")


@command(app, SplitOptions, check)
def main(o: SplitOptions):
    """Person-level stratified K folds of the train photos."""
    check_outside(o.out, o.images)
    check_new(o.out, overwrite=o.overwrite)
    people = read_train_csv(o.train_csv, o.allow_duplicate_ids)
    df, extra = list_images(people, o.images)
    df["gender_label"] = [gender_label(g) for g in df["gender"]]
    df["age_label"] = age_label(df["age"].to_numpy())
    df["label"] = encode(df["mask_label"], df["gender_label"], df["age_label"])
    df["fold"] = assign_folds(df, o.folds, o.seed)
    check_no_leak(df)
    for f in extra[:20]:
        print(f"warning: not a photo of the layout, ignored: {f}", file=sys.stderr)
    out_dir = o.out.resolve().parent
    df.insert(0, "path", [os.path.relpath(f.resolve(), out_dir) for f in df.pop("file")])
    applied = []
    if o.fixes:
        from maskfold.labelling.fixes import apply_fixes

        df, applied = apply_fixes(df, o.fixes, out_dir)  # after the folds: the same folds as without the fixes
    for line in applied:
        print(f"fixed: {line}", file=sys.stderr)
    if o.fixes and not applied:
        print(f"warning: no row of {o.fixes} is marked to apply: {o.out} has the labels as given, and a round "
              "trained on it repeats the one before", file=sys.stderr)
    print(pd.crosstab(df["label"], df["fold"]).to_string(), file=sys.stderr)
    write_folds(df, o.out, ("fix",) if o.fixes else ())
    result({"out": str(o.out), "images": len(df), "people": int(df["person"].nunique()), "folds": o.folds,
            "images_per_fold": df["fold"].value_counts().sort_index().tolist(), "extra_files": len(extra),
            **({"fixes_applied": len(applied), "photos_changed": int((df["fix"] != "").sum())} if o.fixes else {}),
            "files": [str(o.out)]})


if __name__ == "__main__":
    app()
