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
    rows = [(*r, "yes") if len(r) == 6 else r for r in rows]
    pd.DataFrame(rows, columns=["person", "path", "field", "label", "suggested", "sure", "apply"]).to_csv(fixes,
                                                                                                       index=False)
    train = demo_tree / "train"
    before = digest(train)
    r = invoke(split.app, train / "train.csv", train / "images", "-o", out, "--folds", "3", "--fixes", fixes)
    assert digest(train) == before  # train.csv and the images untouched, whatever happened
    return r, out


def pair_label(demo_tree, person):
    """What audit.py writes as a swap row's label: the contents of the person's two files as named now."""
    from maskfold.labelling.fixes import swap_label

    folder = demo_tree / "train" / "images" / person
    return swap_label(next(folder.glob("incorrect_mask.*")), next(folder.glob("normal.*")))


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
        (c, "", "swap", pair_label(demo_tree, c), "swapped", 0.8),
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


def test_only_rows_marked_apply_are_applied(demo_tree, tmp_path, plain):
    """The audit's whole label_issues.csv given as fixes: only its rows marked apply=yes change labels."""
    people = plain.groupby("person").first()
    a, b = people.index[:2]
    flip = {"male": "female", "female": "male"}
    r, out = run_fixes(demo_tree, tmp_path, [(a, "", "gender", people.loc[a, "gender"], flip[people.loc[a, "gender"]],
                                              0.99, "yes"),
                                             (b, "", "gender", people.loc[b, "gender"], flip[people.loc[b, "gender"]],
                                              0.6, "")])
    assert r.exit_code == 0, r.output
    fixed = pd.read_csv(out, dtype={"id": str}, keep_default_na=False)
    assert set(fixed.loc[fixed["fix"] != "", "person"]) == {a} and "1 of the 2 rows" in r.stderr
    out.unlink()
    r, out = run_fixes(demo_tree, tmp_path, [(a, "", "gender", "male", "female", 0.9, "")])
    assert r.exit_code == 0 and (pd.read_csv(out, keep_default_na=False)["fix"] == "").all()
    assert "no row" in r.stderr and "the labels as given" in r.stderr
    fixes = tmp_path / "old.csv"  # a file without the column: which rows were accepted cannot be told
    pd.DataFrame([(a, "", "gender", "male", "female", 0.9)],
                 columns=["person", "path", "field", "label", "suggested", "sure"]).to_csv(fixes, index=False)
    r = invoke(split.app, demo_tree / "train" / "train.csv", demo_tree / "train" / "images", "-o",
               tmp_path / "o.csv", "--fixes", fixes)
    assert r.exit_code == 2 and "missing column(s) apply" in r.output and not (tmp_path / "o.csv").exists()


def test_a_photo_fix_beside_its_persons_gender_fix_is_refused(demo_tree, tmp_path, plain):
    person = plain["person"].iloc[0]
    g = plain["gender"].iloc[0]
    photo = plain[plain["person"] == person].iloc[1]
    r, out = run_fixes(demo_tree, tmp_path, [(person, "", "gender", g, "female" if g == "male" else "male", 0.9),
                                             (person, photo["path"], "photo", str(int(photo["label"])), "0", 0.9)])
    assert r.exit_code == 2 and "row 3 (photo" in r.output and "contradicts row 2" in r.output, r.output
    assert not out.exists()


def test_a_swap_fix_of_files_renamed_since_is_refused(demo_tree, tmp_path, plain):
    """The data fixed at its source (the two files renamed), the old swap fix reused: refused, not swapped back."""
    import shutil

    train = tmp_path / "train"
    shutil.copytree(demo_tree / "train", train)
    person = plain["person"].iloc[0]
    label = pair_label(demo_tree, person)
    folder = train / "images" / person
    wrong, normal = next(folder.glob("incorrect_mask.*")), next(folder.glob("normal.*"))
    tmp = wrong.with_name("tmp" + wrong.suffix)
    wrong.rename(tmp)
    normal.rename(wrong.with_name("incorrect_mask" + normal.suffix))
    tmp.rename(normal.with_name("normal" + wrong.suffix))
    fixes = tmp_path / "fixes.csv"
    pd.DataFrame([(person, "", "swap", label, "swapped", 0.9, "yes")],
                 columns=["person", "path", "field", "label", "suggested", "sure", "apply"]).to_csv(fixes, index=False)
    r = invoke(split.app, train / "train.csv", train / "images", "-o", tmp_path / "o.csv", "--fixes", fixes)
    assert r.exit_code == 2 and "made for other incorrect_mask and normal files" in r.output, r.output
    assert not (tmp_path / "o.csv").exists()
