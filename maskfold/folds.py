"""folds.csv, the file between split.py and everything after it: its columns, reading it, writing it, digests.

One row per photo: `path` (relative to the file's folder, so the file and its images move together),
the person, their labels (mask, gender, age band and the 18-class code) and the fold. split.py writes it
(with a `fix` column after --fixes), pseudo.py writes pseudo-labels in the same format (fold -1).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

from maskfold.cli import UserError
from maskfold.files import read_table, write_csv

COLUMNS = ("path", "person", "id", "gender", "age", "mask_label", "gender_label", "age_label", "label", "fold")
REQUIRED = ("path", "person", "age", "mask_label", "gender_label", "label", "fold")  # what readers need


def write_folds(df: pd.DataFrame, path: Path, extra: tuple[str, ...] = ()) -> None:
    """folds.csv's columns in their order, then `extra` ones."""
    write_csv(df[[*COLUMNS, *extra]], path)


def read_fold_table(path: Path, columns: tuple[str, ...] = REQUIRED) -> pd.DataFrame:
    """folds.csv's rows, checked: the file, its `columns`, no person in two folds."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    df = read_table(path, dtype={"id": str})
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (make it with split.py)")
    spans = df.groupby("person")["fold"].nunique()
    if (spans > 1).any():
        raise UserError(f"{path}: person {spans[spans > 1].index[0]} is in more than one fold, a leak; "
                        "re-split with split.py")
    return df


def read_folds(path: Path, fold: int | str) -> pd.DataFrame:
    """folds.csv, checked (read_fold_table), with the fold asked for and every photo there (`file`: its path)."""
    df = read_fold_table(path)
    if df.empty:
        raise UserError(f"{path}: no rows (make folds.csv with split.py)")
    if (df["fold"] < 0).any():
        raise UserError(f"{path}: row {int((df['fold'] < 0).to_numpy().argmax()) + 2} has fold -1, a pseudo-label "
                        "(pseudo.py): give that file to train.py --extra, which trains each fold on its own fold's "
                        "labels only")
    folds = sorted(df["fold"].unique())
    if fold != "all" and fold not in folds:  # all: every fold trains (train.py --fold all)
        raise UserError(f"--fold {fold}: {path} has folds {', '.join(map(str, folds))}")
    df["file"] = [str(path.parent / p) for p in df["path"]]
    absent = [f for f in df["file"] if not os.path.isfile(f)]
    if absent:
        raise UserError(f"{path}: {len(absent)} image(s) missing, first {absent[0]}")
    return df


def resolved_paths(df: pd.DataFrame, path: Path) -> list[str]:
    """Each row's photo as an absolute path (links stay links), as out-of-fold files are matched."""
    return [os.path.abspath(path.parent / p) for p in df["path"]]


def folds_digest(df: pd.DataFrame) -> str:
    """A digest of the person-to-fold map of a folds.csv (its order and other columns aside)."""
    pairs = sorted(set(zip(df["person"].astype(str), df["fold"].astype(int))))
    return hashlib.sha256("\n".join(f"{p},{k}" for p, k in pairs).encode()).hexdigest()[:16]


def labels_digest(df: pd.DataFrame, targets) -> str:
    """A digest of what a fold learns from and is scored against: each photo's label, its training target (after
    --old-age and the fixes) and its fold."""
    rows = sorted(zip(df["path"].astype(str), df["label"].astype(int), map(int, targets), df["fold"].astype(int)))
    return hashlib.sha256("\n".join(",".join(map(str, r)) for r in rows).encode()).hexdigest()[:16]
