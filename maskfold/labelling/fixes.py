"""Label fixes a person accepted from audit.py's rows, applied to folds.csv's labels, never to the data.

A fix names a person (and a photo, for a single photo's label), the field, the label it expects and the
value to set: gender (male/female), age (a whole number, its band recomputed), swap (the person's
incorrect_mask and normal photos trade mask labels) or photo (one photo's 18-class label). A fix whose
person, photo or value is unknown, or whose label is not what folds.csv holds (a stale or doubled fix),
is refused with the file and row named.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from maskfold.cli import UserError
from maskfold.files import read_table
from maskfold.labels import GENDERS, NUM_CLASSES, age_label, decode, encode, gender_label

COLUMNS = ("person", "path", "field", "label", "suggested", "apply")
APPLY = ("yes", "y", "true", "1", "x")  # how a row is marked to be applied (audit.py --accepted writes yes)
FIELDS = ("gender", "age", "swap", "photo")
SWAPPED = {1: 2, 2: 1}  # mask_label: incorrect <-> normal


def read_fixes(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    df = read_table(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        hint = " (mark each row to apply with yes there: audit.py --accepted writes such a file)" \
            if missing == ["apply"] else " (the columns of audit.py's rows)"
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}{hint}")
    df = df.apply(lambda c: c.str.strip())
    df.index = df.index + 2  # each row's line in the file, for the messages
    marked = df[df["apply"].str.lower().isin(APPLY)]
    print(f"fixes: {len(marked)} of the {len(df)} rows of {path} are marked apply=yes", file=sys.stderr)
    return marked


def _int(text: str, where: str, what: str, lo: int, hi: int) -> int:
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise UserError(f"{where}: {what} {text!r} is not a whole number from {lo} to {hi}")
    return int(text)


PAIR = ("incorrect_mask", "normal")


def swap_label(incorrect: Path, normal: Path) -> str:
    """A swap row's `label`: the contents of the two files as they are named now, so that a swap fix made before
    the files were renamed at the source (the data fixed there) is refused instead of swapping them back."""
    from maskfold.probs import sha256

    return f"incorrect_mask {sha256(incorrect)[:12]}, normal {sha256(normal)[:12]}"


def apply_fixes(df: pd.DataFrame, path: Path, root: Path) -> tuple[pd.DataFrame, list[str]]:
    """folds.csv's table `df` (its paths relative to `root`) with the fixes of `path` applied (a `fix` column says
    which, per photo), and one line per fix applied. `df` itself is not changed."""
    fixes = read_fixes(path)
    out = df.copy()
    out["fix"] = ""
    stem = out["path"].map(lambda p: Path(p).stem)
    name = out["path"].map(lambda p: Path(p).name)
    check_consistent(fixes, path)
    done, lines = set(), []
    for line, f in zip(fixes.index, fixes.itertuples(index=False)):
        where = f"{path}: row {line} ({f.field} of {f.person!r})"
        if f.field not in FIELDS:
            raise UserError(f"{where}: unknown field {f.field!r} (expected {', '.join(FIELDS)})")
        rows = np.flatnonzero(out["person"].astype(str) == f.person)
        if not len(rows):
            raise UserError(f"{where}: no person {f.person!r} in folds.csv")
        if f.field == "photo":
            rows = rows[(name.iloc[rows] == Path(f.path).name).to_numpy()]
            if len(rows) != 1:
                raise UserError(f"{where}: no photo {Path(f.path).name!r} of that person in folds.csv")
        key = (f.person, f.path if f.field == "photo" else "", f.field)
        if key in done:
            raise UserError(f"{where}: a second fix of the same label")
        done.add(key)
        first = out.iloc[rows[0]]
        if f.field == "gender":
            if f.suggested not in GENDERS:
                raise UserError(f"{where}: unknown gender {f.suggested!r} (expected {' or '.join(GENDERS)})")
            expect(where, f.label, first["gender"])
            out.loc[out.index[rows], "gender"] = f.suggested
            out.loc[out.index[rows], "gender_label"] = gender_label(f.suggested)
        elif f.field == "age":
            new = _int(f.suggested, where, "age", 0, 120)
            expect(where, f.label, str(int(first["age"])))
            out.loc[out.index[rows], "age"] = new
            out.loc[out.index[rows], "age_label"] = age_label(new)
        elif f.field == "swap":
            if f.suggested != "swapped":
                raise UserError(f"{where}: suggested {f.suggested!r}: a swap fix suggests 'swapped'")
            pair = rows[stem.iloc[rows].isin(PAIR).to_numpy()]
            if len(pair) != 2:
                raise UserError(f"{where}: the person has no incorrect_mask and normal photo pair in folds.csv")
            named = dict(zip(stem.iloc[pair], out["path"].iloc[pair]))
            expect_swap(where, f.label, swap_label(root / named["incorrect_mask"], root / named["normal"]))
            out.loc[out.index[pair], "mask_label"] = out["mask_label"].iloc[pair].map(SWAPPED).to_numpy()
            rows = pair
        else:
            new = _int(f.suggested, where, "class", 0, NUM_CLASSES - 1)
            expect(where, f.label, str(int(first["label"])))
            out.loc[out.index[rows], ["mask_label", "gender_label", "age_label"]] = [int(x) for x in decode(new)]
        idx = out.index[rows]
        out.loc[idx, "label"] = encode(out.loc[idx, "mask_label"], out.loc[idx, "gender_label"],
                                       out.loc[idx, "age_label"])
        out.loc[idx, "fix"] = [";".join(filter(None, (old, f.field))) for old in out.loc[idx, "fix"]]
        lines.append(f"{f.person}{'/' + Path(f.path).name if f.field == 'photo' else ''}: {f.field} "
                     f"{f.label} -> {f.suggested}")
    return out, lines


def expect(where: str, label: str, current: str) -> None:
    if label != current:
        raise UserError(f"{where}: the fix expects {label!r}, folds.csv says {current!r} "
                        "(a fix from another split, or applied twice)")


def check_consistent(fixes: pd.DataFrame, path: Path) -> None:
    """A photo fix sets a photo's whole class: beside a fix of its person's gender or age, one of the two would
    undo the other, depending on the rows' order."""
    person_level = fixes[fixes["field"].isin(("gender", "age"))]
    photos = fixes[fixes["field"] == "photo"]
    both = photos[photos["person"].isin(person_level["person"])]
    if len(both):
        line = both.index[0]
        other = person_level.index[person_level["person"] == both["person"].iloc[0]][0]
        raise UserError(f"{path}: row {line} (photo of {both['person'].iloc[0]!r}) contradicts row {other} (its "
                        f"{person_level.loc[other, 'field']}): a photo fix sets the whole class; keep one of the two")


def expect_swap(where: str, label: str, current: str) -> None:
    if not label.startswith("incorrect_mask "):
        raise UserError(f"{where}: a swap fix without the contents of the two files ({label!r}) cannot be checked "
                        "against the data (a file of an older audit.py); make it again with audit.py")
    if label != current:
        raise UserError(f"{where}: the fix was made for other incorrect_mask and normal files ({label!r}, now "
                        f"{current!r}): the data was fixed at its source since, or the fix is from other photos")
