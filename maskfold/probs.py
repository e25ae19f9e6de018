"""Probability CSVs, the one format every step writes and reads, and the record of what made them.

A probability CSV is `<id column>,p0..p17` (out-of-fold files add label and fold). predict.py
also writes `<file>.json` beside it: the run folders, folds and checkpoints that made it and
the CSV's SHA-256, so ensemble.py can pair it with the right out-of-fold files and can tell a
file from its stale record.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from maskfold.cli import UserError
from maskfold.files import atomic_path, read_table, record_path, write_json
from maskfold.labels import PROB_COLS


def read_probs(path: Path, id_col: str | None = None) -> pd.DataFrame:
    """A probability CSV (id column, p0..p17[, label, fold]) checked for shape and sanity."""
    df = read_table(path, dtype={id_col: str} if id_col else None)
    missing = [c for c in PROB_COLS if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing probability columns {', '.join(missing[:5])}")
    id_col = id_col or df.columns[0]
    if id_col not in df.columns:
        raise UserError(f"{path}: no {id_col} column")
    if df[id_col].duplicated().any():
        raise UserError(f"{path}: duplicate {id_col} {df[id_col][df[id_col].duplicated()].iloc[0]}")
    p = df[PROB_COLS].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(p).all(axis=1)
    if bad.any():
        raise UserError(f"{path}: row {int(np.argmax(bad)) + 2} has a missing or non-finite probability")
    off = np.abs(p.sum(axis=1) - 1) > 1e-3
    if off.any() or (p < 0).any():
        raise UserError(f"{path}: row {int(np.argmax(off | (p < 0).any(axis=1))) + 2} is not a probability vector")
    df[PROB_COLS] = p
    return df


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_probs(df: pd.DataFrame, path: Path, provenance: dict) -> None:
    """The CSV and its record, each renamed into place: the record first, so a kill between the two
    leaves an old CSV beside a new record, which read_provenance recognises by the hash."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
        write_json(record_path(path), {**provenance, "sha256": sha256(tmp)})


def read_provenance(path: Path) -> dict | None:
    """What made a probability CSV, or None for a file without a record (hand-made, or from elsewhere)."""
    record = record_path(path)
    if not record.is_file():
        return None
    try:
        prov = json.loads(record.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{record}: unreadable record of {path} ({e})") from None
    if prov.get("sha256") != sha256(path):
        raise UserError(f"{record} describes another version of {path} (a run killed between the two, or an "
                        "edited CSV): predict again, or delete the .json to use the CSV without its record")
    return prov


def answered_task(record: dict | None, probs: np.ndarray) -> str | None:
    """The one task an input answers (predict.py of a train.py --task run records it; a CSV without a record is
    read for it: the other two tasks uniform on every row), or None for 18-class answers."""
    from maskfold.labels import TASKS, task_of

    if record and "task" in record:
        return record["task"] if record["task"] in TASKS else None
    return task_of(probs)


def aligned(path: Path, ids: pd.Series, what: str = "info.csv") -> np.ndarray:
    """A probability CSV's p0..p17 in the order of `ids` (info.csv's ImageIDs), which it must cover exactly."""
    df = read_probs(path, "ImageID")
    have, want = set(df["ImageID"]), set(ids)
    if have != want:
        extra, missing = sorted(have - want), sorted(want - have)
        raise UserError(f"{path}: ImageIDs differ from {what} ({len(missing)} missing, {len(extra)} extra, "
                        f"e.g. {(missing + extra)[0]})")
    return df.set_index("ImageID").loc[ids, PROB_COLS].to_numpy()


def frame(p: np.ndarray, ids, id_col: str = "ImageID") -> pd.DataFrame:
    """Probabilities as the one CSV format: the id column, then p0..p17."""
    df = pd.DataFrame(p, columns=PROB_COLS)
    df.insert(0, id_col, list(ids))
    return df


def read_truth(path: Path, ids: pd.Series, what: str = "info.csv") -> np.ndarray:
    """The demo's hidden answers (ImageID,ans) in the order of `ids`, which they must cover exactly."""
    t = read_table(path, dtype={"ImageID": str})
    if not {"ImageID", "ans"} <= set(t.columns) or set(t["ImageID"]) != set(ids):
        raise UserError(f"{path}: needs ImageID,ans for exactly the ImageIDs of {what}")
    return t.set_index("ImageID").loc[ids, "ans"].to_numpy(int)
