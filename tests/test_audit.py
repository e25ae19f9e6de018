"""audit.py: the planted mistakes come first; the inputs are never changed."""
import numpy as np
import pandas as pd

from maskfold.label_audit import audit as rank
from maskfold.labels import PHOTO_STEMS, PROB_COLS, age_label, encode, mask_label

import audit
from conftest import invoke


def people_frame(n: int, rng) -> pd.DataFrame:
    rows = []
    for i in range(n):
        gender, age = int(rng.integers(2)), int(rng.choice([22, 40, 60]))
        for stem in PHOTO_STEMS:
            rows.append({"person": f"p{i}", "path": f"p{i}/{stem}.jpg", "stem": stem, "gender_label": gender,
                         "age": age, "age_label": int(age_label(age)), "mask_label": mask_label(stem)})
    df = pd.DataFrame(rows)
    df["label"] = encode(df["mask_label"], df["gender_label"], df["age_label"])
    return df


def confident(df: pd.DataFrame, rng, labels=None) -> np.ndarray:
    """Held-out probabilities that mostly agree with `labels` (default: the frame's), with noise."""
    y = df["label"].to_numpy() if labels is None else labels
    p = rng.dirichlet(np.ones(18), len(df)) * 0.2
    p[np.arange(len(df)), y] += 0.8
    return p


def test_planted_person_level_mistakes_rank_first():
    rng = np.random.default_rng(0)
    df = people_frame(40, rng)
    truth = df["label"].to_numpy().copy()
    flip = df["person"] == "p7"  # its photos show the other gender
    truth[flip] = encode(df.loc[flip, "mask_label"], 1 - df.loc[flip, "gender_label"], df.loc[flip, "age_label"])
    swap = (df["person"] == "p21") & df["stem"].isin(["incorrect_mask", "normal"])  # files named the wrong way
    truth[swap] = encode(3 - df.loc[swap, "mask_label"], df.loc[swap, "gender_label"], df.loc[swap, "age_label"])
    df[PROB_COLS] = confident(df, rng, truth)
    issues = rank(df)
    top = set(zip(issues["person"].head(2), issues["field"].head(2)))
    assert top == {("p7", "gender"), ("p21", "swap")}, issues.head()
    assert issues.loc[0, "sure"] >= issues["sure"].iloc[-1]


def test_clean_labels_give_no_person_level_rows():
    rng = np.random.default_rng(1)
    df = people_frame(30, rng)
    df[PROB_COLS] = confident(df, rng)
    assert (rank(df)["field"] == "photo").sum() == len(rank(df))


def test_audit_script_writes_ranked_rows_and_leaves_its_inputs(tiny_run, tmp_path):
    folds, run = tiny_run
    before = {p: p.read_bytes() for p in [folds, *run.rglob("*")] if p.is_file()}
    out = tmp_path / "issues.csv"
    r = invoke(audit.app, run, "--folds", folds, "-o", out)
    assert r.exit_code == 0, r.output
    issues = pd.read_csv(out)
    assert list(issues.columns) == ["person", "path", "field", "label", "suggested", "sure"]
    assert issues["sure"].is_monotonic_decreasing or (issues["field"] == "photo").any()
    assert before == {p: p.read_bytes() for p in before}
    r = invoke(audit.app, run, "--folds", tmp_path / "none.csv", "-o", tmp_path / "x.csv")
    assert r.exit_code == 2 and "none.csv" in r.output
