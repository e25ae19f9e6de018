"""people.csv, people.py's output: reading it back, checked, as a group and a sureness per photo."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from maskfold.cli import UserError
from maskfold.files import read_table
from maskfold.images import stem_key


def read_people(path: Path, size: int) -> pd.DataFrame:
    """people.csv (ImageID,group,...) indexed by stem_key(ImageID), checked: no duplicates, no group over `size`."""
    df = read_table(path, dtype={"ImageID": str})
    if not {"ImageID", "group"} <= set(df.columns):
        raise UserError(f"{path}: needs ImageID and group columns (make it with people.py)")
    df["key"] = [stem_key(i) for i in df["ImageID"]]
    if df["key"].duplicated().any():
        raise UserError(f"{path}: photo {df['key'][df['key'].duplicated()].iloc[0]} listed twice")
    sizes = df.groupby("group").size()
    if (sizes > size).any():
        raise UserError(f"{path}: group {sizes.idxmax()} has {sizes.max()} photos, more than --group-size {size}")
    df["group"] = pd.factorize(df["group"])[0]
    return df.set_index("key")


def groups_of(path: Path, keys: list[str], size: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Group number per key (-1: answered alone), from a people.csv that must name exactly these photos,
    and each photo's group's sureness (people.py's `sure`; infinite for a file without it)."""
    people = read_people(path, size)
    have = set(people.index)
    missing, extra = [k for k in keys if k not in have], sorted(have - set(keys))
    if missing or extra:
        raise UserError(f"{path}: its photos differ from {what} ({len(missing)} missing, {len(extra)} unknown, "
                        f"e.g. {(missing + extra)[0]})")
    groups = people.loc[keys, "group"].to_numpy()
    sure = people.loc[keys, "sure"].to_numpy(float) if "sure" in people.columns else np.full(len(keys), np.inf)
    return groups, sure
