"""Train labels that the out-of-fold answers doubt, at the level they go wrong: the person.

A person's gender and age are one label on 7 photos, and their incorrect_mask and normal files are
named by hand: a mistake there is 7 (or 2) wrong photos at once. Each photo's held-out probabilities
(from a model that never trained on it) are pooled per person: the mean probability of the other
gender, of the age band the photos favour, and how much better the person's two photos fit with their
incorrect_mask and normal names swapped. Gender and swap rows come first, then ages, then single photos
whose label no model believes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from maskfold.labelling.fixes import swap_label
from maskfold.labels import PROB_COLS, age_label, encode, marginals

COLUMNS = ["person", "path", "field", "label", "suggested", "sure"]
# The order of the rows: first what the held-out votes can tell (a person's gender, two swapped files), then
# ages, which votes cannot tell from a person who looks the neighbouring band (a 58-year-old who looks 62 and
# a 65-year-old filed as 58 get the same votes), then single photos.
TIERS = {"gender": 0, "swap": 0, "age": 1, "photo": 2}
CLEAR_FIELDS = ("gender", "swap")
GENDER_NAMES = ("male", "female")


def trained_band(age, old_age: int = 60):
    """The age band the runs trained a photo of this age towards (train.py --old-age moves ages >= it up)."""
    return age_label(age, old_age)


def suggest_age(age: int, band: int, old_age: int = 60) -> int:
    """The age nearest to `age` in `band` (<30, 30-59, 60+) under both the competition's bands and the runs'
    --old-age: the smallest change that moves it across, and stays across when trained."""
    old = max(old_age, 60)  # 60+ under both
    middle = min(59, old_age - 1)  # 30-59 under both
    return {0: min(age, 29), 1: min(max(age, 30), middle), 2: max(age, old)}[band]


def person_rows(person: str, rows: pd.DataFrame, m: dict[str, np.ndarray], old_age: int = 60,
                root: Path | None = None) -> list[dict]:
    """What looks wrong with one person, from the marginals `m` of their photos' held-out probabilities (of runs
    trained with --old-age `old_age`: a 58-year-old they call 60+ agrees with what they learnt)."""
    out = []
    g = int(rows["gender_label"].iloc[0])
    other = float(m["gender"][:, 1 - g].mean())
    if other > 0.5:
        out.append({"person": person, "path": "", "field": "gender", "label": GENDER_NAMES[g],
                    "suggested": GENDER_NAMES[1 - g], "sure": other})
    band, age = int(rows["age_label"].iloc[0]), int(rows["age"].iloc[0])
    mean_age = m["age"].mean(0)
    best = int(mean_age.argmax())
    if best != band and best != trained_band(age, old_age):
        out.append({"person": person, "path": "", "field": "age", "label": str(age),
                    "suggested": str(suggest_age(age, best, old_age)), "sure": float(mean_age[best])})
    stems = rows["stem"].tolist()
    if "incorrect_mask" in stems and "normal" in stems:
        i, n = stems.index("incorrect_mask"), stems.index("normal")
        lm = np.log(np.clip(m["mask"], 1e-6, None))
        gain = lm[i, 2] + lm[n, 1] - lm[i, 1] - lm[n, 2]
        if gain > 0:
            label = swap_label(root / rows["path"].iloc[i], root / rows["path"].iloc[n]) if root is not None \
                else "incorrect_mask/normal as named"
            out.append({"person": person, "path": "", "field": "swap", "label": label,
                        "suggested": "swapped", "sure": float(1 / (1 + np.exp(-gain)))})
    return out


def photo_rows(rows: pd.DataFrame, p: np.ndarray, floor: float, old_age: int = 60) -> list[dict]:
    """Single photos whose label (or the label the runs trained it as, under --old-age) the held-out
    probabilities give less than `floor`."""
    y = rows["label"].to_numpy()
    trained = encode(rows["mask_label"].to_numpy(), rows["gender_label"].to_numpy(),
                     trained_band(rows["age"].to_numpy(), old_age))
    rows_ = np.arange(len(y))
    p_label = np.maximum(p[rows_, y], p[rows_, trained])
    return [{"person": r.person, "path": r.path, "field": "photo", "label": str(int(r.label)),
             "suggested": str(int(p[k].argmax())), "sure": float(1 - p_label[k])}
            for k, r in enumerate(rows.itertuples()) if p_label[k] < floor]


def audit(df: pd.DataFrame, photo_floor: float = 0.02, old_age: int = 60, root: Path | None = None) -> pd.DataFrame:
    """Rows of suspect labels, surest first. `df`: folds.csv's rows joined with their out-of-fold p0..p17 and
    a `stem` column (mask1 .. normal); `old_age`: the runs' train.py --old-age; `root`: the folder folds.csv's
    paths are relative to (a swap row records the two files' contents, which split.py --fixes checks)."""
    p = df[PROB_COLS].to_numpy(np.float64)
    m_all = marginals(p)
    rows = []
    for person, idx in df.groupby("person", sort=False).indices.items():
        sub = df.iloc[idx]
        found = person_rows(person, sub, {t: v[idx] for t, v in m_all.items()}, old_age, root)
        rows += found
        if not found:  # a person-level mistake explains its photos already
            rows += photo_rows(sub, p[idx], photo_floor, old_age)
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["sure"] = out["sure"].round(4)
    order = out["field"].map(TIERS)
    return out.assign(_tier=order).sort_values(["_tier", "sure"], ascending=[True, False], kind="stable") \
        .drop(columns="_tier").reset_index(drop=True)


def suspect_people(paths, y: np.ndarray, p: np.ndarray, n: int) -> pd.DataFrame:
    """The `n` people (photo paths' folders) whose out-of-fold probabilities give their labels the least mean
    probability: the people to look at first, however their labels went wrong."""
    df = pd.DataFrame({"person": [Path(x).parent.name for x in paths], "label": y,
                       "p_label": p[np.arange(len(y)), y], "wrong": p.argmax(1) != y})
    agg = df.groupby("person").agg(images=("label", "size"), mean_p_label=("p_label", "mean"), wrong=("wrong", "sum"))
    return agg.sort_values("mean_p_label").head(n).reset_index()
