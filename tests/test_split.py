import json
import shutil

import pandas as pd
import pytest

import split
from conftest import invoke


@pytest.fixture
def tree(demo_tree, tmp_path):
    """A private, writable copy of the demo train tree."""
    dst = tmp_path / "train"
    shutil.copytree(demo_tree / "train", dst)
    return dst


def run_split(tree, out, *extra):
    return invoke(split.app, tree / "train.csv", tree / "images", "-o", out, *extra)


def test_folds_are_person_level_and_balanced(demo_tree, tmp_path):
    out = tmp_path / "folds.csv"
    r = run_split(demo_tree / "train", out, "--folds", "3", "--seed", "1")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    df = pd.read_csv(out)
    assert summary["images"] == len(df) == 12 * 7
    assert {"path", "person", "id", "gender", "age", "mask_label", "gender_label", "age_label", "label",
            "fold"} <= set(df.columns)
    assert (df.groupby("person")["fold"].nunique() == 1).all()  # no leak
    assert (df.groupby("person").size() == 7).all()
    assert sorted(df["fold"].unique()) == [0, 1, 2]
    people = df.drop_duplicates("person")
    strata = people.groupby([people["gender_label"] * 3 + people["age_label"], "fold"]).size().unstack(fill_value=0)
    assert (strata.max(axis=1) - strata.min(axis=1) <= 1).all()
    # paths are relative to the folds file and point at real images
    assert all((out.parent / p).is_file() for p in df["path"])
    assert (df["label"] == df["mask_label"] * 6 + df["gender_label"] * 3 + df["age_label"]).all()
    assert not df["path"].str.contains("/\\._").any()


def test_same_seed_same_folds_other_seed_other_folds(demo_tree, tmp_path):
    folds = []
    for i, seed in enumerate([5, 5, 6]):
        out = tmp_path / f"f{i}.csv"
        assert run_split(demo_tree / "train", out, "--folds", "3", "--seed", seed).exit_code == 0
        folds.append(pd.read_csv(out)["fold"].tolist())
    assert folds[0] == folds[1] and folds[0] != folds[2]


def test_refuses_to_clobber_without_overwrite(demo_tree, tmp_path):
    out = tmp_path / "folds.csv"
    out.write_text("keep me")
    r = run_split(demo_tree / "train", out)
    assert r.exit_code != 0 and "--overwrite" in r.stderr
    assert out.read_text() == "keep me"


def _edit_csv(tree, fn):
    df = pd.read_csv(tree / "train.csv", dtype=str)
    fn(df)
    df.to_csv(tree / "train.csv", index=False)


@pytest.mark.parametrize("case,edit,needle", [
    ("missing column", lambda t: _edit_csv(t, lambda d: d.pop("age")), "missing column(s) age"),
    ("unknown gender",
     lambda t: _edit_csv(t, lambda d: d.__setitem__("gender", ["male", "robot"] + list(d["gender"][2:]))),
     "row 3"),
    ("non-numeric age", lambda t: _edit_csv(t, lambda d: d.__setitem__("age", ["forty"] + list(d["age"][1:]))),
     "row 2"),
    ("duplicate id", lambda t: _edit_csv(t, lambda d: d.__setitem__("id", [d["id"][1]] + list(d["id"][1:]))),
     "duplicate id"),
    ("missing person folder", lambda t: shutil.rmtree(next((t / "images").iterdir())), "person folder missing"),
    ("missing photo", lambda t: next(sorted((t / "images").iterdir())[2].glob("normal.*")).unlink(),
     "normal.* missing"),
])
def test_bad_input_one_line_nonzero_no_output(tree, tmp_path, case, edit, needle):
    edit(tree)
    before = {p: p.stat().st_mtime_ns for p in tree.rglob("*")}
    out = tmp_path / "out" / "folds.csv"
    r = run_split(tree, out)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("error:"), r.stderr
    assert "Traceback" not in r.output
    assert not out.exists()
    assert before == {p: p.stat().st_mtime_ns for p in tree.rglob("*")}  # input untouched


def test_duplicate_ids_allowed_on_request_stay_in_one_fold(tree, tmp_path):
    _edit_csv(tree, lambda d: d.__setitem__("id", [d["id"][1]] + list(d["id"][1:])))
    out = tmp_path / "folds.csv"
    r = run_split(tree, out, "--allow-duplicate-ids", "--folds", "3")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out, dtype={"id": str})
    assert df.groupby("id")["fold"].nunique().max() == 1
    assert df["person"].nunique() == 12


def test_extra_files_reported_dot_files_silent(tree, tmp_path):
    person = sorted((tree / "images").iterdir())[0]
    (person / "selfie.jpg").write_bytes(b"x")
    (person / "._normal.jpg").write_bytes(b"x")
    r = run_split(tree, tmp_path / "folds.csv", "--folds", "3")
    assert r.exit_code == 0, r.output
    assert "selfie.jpg" in r.stderr and "._normal" not in r.stderr


def test_folds_out_of_range(demo_tree, tmp_path):
    r = run_split(demo_tree / "train", tmp_path / "f.csv", "--folds", "1")
    assert r.exit_code == 2 and "--folds" in r.stderr


def test_demo_has_the_real_quirks(demo_tree):
    train = pd.read_csv(demo_tree / "train" / "train.csv", dtype=str)
    assert list(train.columns) == ["id", "gender", "race", "age", "path"]
    assert (train["race"] == "Asian").all() and set(train["gender"]) == {"male", "female"}
    assert any("-" in i for i in train["id"])
    assert {"58", "59", "60"} <= set(train["age"])
    files = [p for p in (demo_tree / "train" / "images").rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".jpg", ".jpeg", ".png"}
    assert any(p.name.startswith("._") for p in files)
    from PIL import Image
    modes = {Image.open(p).mode for p in files if not p.name.startswith("._")}
    assert {"RGB", "RGBA", "L"} <= modes
    info = pd.read_csv(demo_tree / "eval" / "info.csv")
    truth = pd.read_csv(demo_tree / "eval" / "truth.csv")
    assert list(info.columns) == ["ImageID", "ans"] and (info["ans"] == 0).all()
    assert info["ImageID"].str.fullmatch(r"[0-9a-f]{40}\.jpg").all()
    assert info["ImageID"].tolist() == truth["ImageID"].tolist() and len(info) == 21
    assert all((demo_tree / "eval" / "images" / i).is_file() for i in info["ImageID"])


def test_demo_files_do_not_depend_on_the_number_of_workers(tmp_path):
    import demo
    trees = []
    for workers in ("1", "2"):
        out = tmp_path / workers
        r = invoke(demo.app, out, "--people", "6", "--eval-people", "2", "--seed", "5", "--workers", workers)
        assert r.exit_code == 0, r.output
        trees.append({p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert len(trees[0]) == 6 * 7 + 1 + 2 * 7 + 1 + 5  # photos, ._ junk, eval photos, ._ junk, five CSVs
    assert trees[0] == trees[1]


def test_demo_workers_draw_in_other_processes(monkeypatch, tmp_path):
    import os

    import demo
    monkeypatch.setattr(demo, "draw_eval_person", lambda p, folder, seed, bases: [os.getpid()])  # forked as is
    tasks = [("eval", ({}, tmp_path, 0))] * 16
    assert set(sum(demo.draw_all(tasks, {}, 1), [])) == {os.getpid()}
    assert os.getpid() not in set(sum(demo.draw_all(tasks, {}, 2), []))


def test_demo_workers_option_reaches_the_drawing(monkeypatch, tmp_path):
    import demo
    seen, real = [], demo.draw_all
    monkeypatch.setattr(demo, "draw_all", lambda tasks, bases, workers: seen.append(workers) or real(tasks, bases, 1))
    r = invoke(demo.app, tmp_path / "d", "--people", "6", "--eval-people", "1", "--workers", "3")
    assert r.exit_code == 0, r.output
    assert seen == [3, 3]  # train people, then eval people
