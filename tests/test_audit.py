"""audit.py: the planted mistakes come first; the inputs are never changed."""
import json

import numpy as np
import pandas as pd

from maskfold.labelling.label_audit import audit as rank
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
    assert list(issues.columns) == ["person", "path", "field", "label", "suggested", "sure", "apply"]
    tier = issues["field"].map({"gender": 0, "swap": 0, "age": 1, "photo": 2})
    assert tier.is_monotonic_increasing  # gender and swap rows, then ages, then photos
    assert all(g["sure"].is_monotonic_decreasing for _, g in issues.groupby(tier))
    assert before == {p: p.read_bytes() for p in before}
    r = invoke(audit.app, run, "--folds", tmp_path / "none.csv", "-o", tmp_path / "x.csv")
    assert r.exit_code == 2 and "none.csv" in r.output


def test_photo_floor_and_truth_reach_the_audit(tiny_run, tmp_path):
    """--photo-floor 0 lists no single photo, 1 lists those of every person without a person-level row;
    --truth counts the injected error as found exactly when a row names that person and field."""
    folds, run = tiny_run
    low, high = tmp_path / "low.csv", tmp_path / "high.csv"
    assert invoke(audit.app, run, "--folds", folds, "-o", low, "--photo-floor", "0").exit_code == 0
    assert invoke(audit.app, run, "--folds", folds, "-o", high, "--photo-floor", "1").exit_code == 0
    a, b = pd.read_csv(low), pd.read_csv(high)
    assert (a["field"] == "photo").sum() == 0 and (b["field"] == "photo").sum() > 0
    people = pd.read_csv(folds, dtype={"id": str})[["id", "person"]].drop_duplicates()
    noise = tmp_path / "noise.csv"
    pd.DataFrame({"id": people["id"].head(1), "kind": "gender", "field": "gender", "true": "male",
                  "recorded": "female"}).to_csv(noise, index=False)
    r = invoke(audit.app, run, "--folds", folds, "-o", tmp_path / "t.csv", "--truth", noise)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])["against_truth"]
    rows = pd.read_csv(tmp_path / "t.csv")
    hit = ((rows["person"] == people["person"].iloc[0]) & (rows["field"] == "gender")).any()
    assert s["injected"] == 1 and s["found"] == int(hit) and s["person_rows"] == (rows["field"] != "photo").sum()


def test_accepted_holds_the_sure_person_rows_and_preview_shows_them(tiny_run, tmp_path):
    from PIL import Image

    folds, run = tiny_run
    out, acc, jpg = tmp_path / "i.csv", tmp_path / "fixes.csv", tmp_path / "i.jpg"
    r = invoke(audit.app, run, "--folds", folds, "-o", out, "--accepted", acc, "--accept", "0.3", "--preview", jpg,
               "--preview-rows", "3")
    assert r.exit_code == 0, r.output
    rows, fixes = pd.read_csv(out), pd.read_csv(acc)
    person = rows[rows["field"] != "photo"]
    clear = person["field"].isin(["gender", "swap"])
    assert len(fixes) == (clear & (person["sure"] >= 0.3)).sum() and fixes["field"].isin(["gender", "swap"]).all()
    r = invoke(audit.app, run, "--folds", folds, "-o", tmp_path / "k.csv", "--accepted", tmp_path / "all.csv",
               "--accept", "0.3", "--accept-fields", "gender,swap,age")
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "all.csv")) == (person["sure"] >= 0.3).sum()
    shown = min(3, person["person"].nunique())
    assert Image.open(jpg).size[1] > 250 * shown  # a row per suspect person under the title
    r = invoke(audit.app, run, "--folds", folds, "-o", tmp_path / "j.csv", "--accept", "2")
    assert r.exit_code == 2 and "--accept 2" in r.output and not (tmp_path / "j.csv").exists()


def test_report_shows_the_audit_rows(tiny_run, tmp_path):
    import report

    folds, run = tiny_run
    issues = tmp_path / "i.csv"
    assert invoke(audit.app, run, "--folds", folds, "-o", issues, "--photo-floor", "1").exit_code == 0
    rows = pd.read_csv(issues)
    first = rows.loc[rows["field"] != "photo", "person"]
    page = tmp_path / "r.html"
    r = invoke(report.app, run, "-o", page, "--audit", issues)
    assert r.exit_code == 0, r.output
    text = page.read_text()
    assert "Labels the audit doubts" in text
    assert len(first) and f"<b>{first.iloc[0]}</b>" in text  # a one-epoch model doubts some people
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    r = invoke(report.app, run, "-o", tmp_path / "r2.html", "--audit", bad)
    assert r.exit_code == 1 and "not audit.py's label_issues.csv" in r.output
