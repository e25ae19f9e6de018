"""split.py --fixes: accepted audit rows change folds.csv's labels, never the data; a bad fix is one line."""
import hashlib
import json

import pandas as pd
import pytest

from maskfold.labels import age_label, encode

import split
from conftest import invoke


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def plain(demo_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("fixes") / "folds.csv"
    train = demo_tree / "train"
    assert invoke(split.app, train / "train.csv", train / "images", "-o", out, "--folds", "3").exit_code == 0
    return pd.read_csv(out, dtype={"id": str})


def run_fixes(demo_tree, tmp_path, rows):
    fixes, out = tmp_path / "fixes.csv", tmp_path / "folds.csv"
    pd.DataFrame(rows, columns=["person", "path", "field", "label", "suggested", "sure"]).to_csv(fixes, index=False)
    train = demo_tree / "train"
    before = digest(train)
    r = invoke(split.app, train / "train.csv", train / "images", "-o", out, "--folds", "3", "--fixes", fixes)
    assert digest(train) == before  # train.csv and the images untouched, whatever happened
    return r, out


def test_each_kind_of_fix_changes_exactly_its_labels(demo_tree, tmp_path, plain):
    people = plain.groupby("person").first()
    a, b, c, d = people.index[:4]
    g = people.loc[a, "gender"]
    other = "female" if g == "male" else "male"
    age = int(people.loc[b, "age"])
    new_age = 65 if age < 60 else 20
    photo = plain[(plain["person"] == d) & plain["path"].str.contains("mask2")].iloc[0]
    new_class = int((photo["label"] + 6) % 18)
    r, out = run_fixes(demo_tree, tmp_path, [
        (a, "", "gender", g, other, 0.99), (b, "", "age", str(age), str(new_age), 0.9),
        (c, "", "swap", "incorrect_mask/normal as named", "swapped", 0.8),
        (d, photo["path"], "photo", str(int(photo["label"])), str(new_class), 0.7)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["fixes_applied"] == 4
    fixed = pd.read_csv(out, dtype={"id": str}, keep_default_na=False)
    assert (fixed["fold"] == plain["fold"]).all()  # the same folds as without the fixes
    changed = fixed["label"] != plain["label"]
    assert set(fixed.loc[fixed["fix"] != "", "person"]) == {a, b, c, d}
    assert (fixed.loc[fixed["person"] == a, "gender"] == other).all()
    rows_b = fixed["person"] == b
    assert (fixed.loc[rows_b, "age"] == new_age).all()
    assert (fixed.loc[rows_b, "age_label"] == age_label(new_age)).all()
    rows_c = (fixed["person"] == c) & fixed["path"].str.contains("incorrect_mask|normal")
    assert (fixed.loc[rows_c, "mask_label"] == 3 - plain.loc[rows_c, "mask_label"]).all()
    assert fixed.loc[fixed["path"] == photo["path"], "label"].item() == new_class
    assert changed.sum() == 7 + 7 * (age_label(age) != age_label(new_age)) + 2 + 1
    assert (changed <= (fixed["fix"] != "")).all()  # every changed label is marked
    assert (fixed["label"] == encode(fixed["mask_label"], fixed["gender_label"], fixed["age_label"])).all()


@pytest.mark.parametrize("row, needle", [
    (("nobody", "", "gender", "male", "female"), "no person 'nobody'"),
    ((None, "", "gender", "x", "other"), "unknown gender 'other'"),
    ((None, "", "age", "x", "old"), "age 'old'"),
    ((None, "", "height", "x", "1"), "unknown field 'height'"),
    ((None, "nope/mask9.jpg", "photo", "x", "3"), "no photo 'mask9.jpg'"),
    ((None, "", "swap", "x", "yes"), "a swap fix suggests 'swapped'"),
    ((None, "", "gender", "stale", "male"), "expects 'stale'"),
])
def test_a_bad_fix_is_one_line_and_writes_nothing(demo_tree, tmp_path, plain, row, needle):
    person = plain["person"].iloc[0]
    r, out = run_fixes(demo_tree, tmp_path, [(row[0] or person, *row[1:], 0.9)])
    assert r.exit_code == 2 and needle in r.output and "fixes.csv: row 2" in r.output, r.output
    assert "Traceback" not in r.output and not out.exists()


def test_the_same_fix_twice_is_refused(demo_tree, tmp_path, plain):
    person = plain["person"].iloc[0]
    g = plain["gender"].iloc[0]
    other = "female" if g == "male" else "male"
    r, out = run_fixes(demo_tree, tmp_path, [(person, "", "gender", g, other, 0.9)] * 2)
    assert r.exit_code == 2 and "row 3" in r.output and not out.exists(), r.output
