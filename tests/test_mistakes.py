"""The mistakes users make that used to end in a wrong answer without a word: each now ends in one line."""
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ensemble
import people
import predict
import split
import train
from conftest import ROOT, invoke

TINY = ["--model", "test_resnet", "--no-pretrained", "--epochs", "1", "--img-size", "32", "24", "--batch-size", "16",
        "--workers", "0", "--device", "cpu"]


def split_to(demo_tree, out, *extra):
    r = invoke(split.app, demo_tree / "train" / "train.csv", demo_tree / "train" / "images", "-o", out, "--folds", "2",
               *extra)
    assert r.exit_code == 0, r.output
    return out


def predict_to(run, images, info, out, *extra):
    return invoke(predict.app, run, "--images", images, "--info", info, "-o", out, "--device", "cpu", *extra)


def test_predict_refuses_images_of_another_kind_than_the_run_trained_on(tiny_run, demo_tree, tmp_path):
    """The tiny run trained on whole photos: crop.py's crops, or photos of another size, are refused."""
    run, info = tiny_run[1], demo_tree / "eval" / "info.csv"
    crops, small = tmp_path / "crops", tmp_path / "small"
    for folder in (crops, small):
        folder.mkdir()
    for f in (demo_tree / "eval" / "images").iterdir():
        if f.name.startswith("."):
            continue  # the demo's macOS junk
        shutil.copy(f, crops / f.name)
        with Image.open(f) as im:
            im.resize((im.width // 3, im.height // 3)).save(small / f.name)
    (crops / "crop_report.csv").write_text("path,status\n")
    r = predict_to(run, crops, info, tmp_path / "a.csv")
    assert r.exit_code == 2 and "not the kind of images" in r.output and "crop.py's face crops" in r.output, r.output
    assert not (tmp_path / "a.csv").exists()
    r = predict_to(run, small, info, tmp_path / "b.csv")
    assert r.exit_code == 2 and "px" in r.output and "--any-images" in r.output, r.output
    r = predict_to(run, small, info, tmp_path / "b.csv", "--any-images")
    assert r.exit_code == 0 and "warning" in r.output
    assert predict_to(run, demo_tree / "eval" / "images", info, tmp_path / "c.csv").exit_code == 0
    record = json.loads((tmp_path / "c.csv.json").read_text())
    assert record["images_kind"]["crops"] is False and record["images_kind"]["size"] == [512, 384]


def test_a_rewritten_folds_csv_is_refused_in_the_middle_of_a_run(demo_tree, tmp_path):
    folds = split_to(demo_tree, tmp_path / "folds.csv", "--seed", "1")
    out = tmp_path / "runs"
    assert invoke(train.app, folds, *TINY, "--out", out, "--fold", "0").exit_code == 0
    split_to(demo_tree, folds, "--seed", "2", "--overwrite")  # another person-to-fold map at the same path
    r = invoke(train.app, folds, *TINY, "--out", out, "--fold", "1")
    assert r.exit_code == 2 and "folds.csv was rewritten" in r.output, r.output
    assert not (out / "test_resnet" / "fold1").exists()


def test_a_stale_partial_prediction_is_named_and_scored_on_its_folds(demo_tree, tmp_path):
    folds = split_to(demo_tree, tmp_path / "folds.csv")
    out, info = tmp_path / "runs", demo_tree / "eval" / "info.csv"
    assert invoke(train.app, folds, *TINY, "--out", out, "--fold", "0").exit_code == 0
    probs = tmp_path / "probs.csv"
    r = predict_to(out / "test_resnet", demo_tree / "eval" / "images", info, probs)
    assert r.exit_code == 0 and "partial run" in r.output
    assert invoke(train.app, folds, *TINY, "--out", out, "--fold", "1").exit_code == 0
    r = invoke(ensemble.app, probs, "--info", info, "-o", tmp_path / "sub.csv")
    assert r.exit_code == 0, r.output
    assert "predicted from fold(s) 0" in r.output and "predict again" in r.output
    assert "over 1 of 2 folds" in r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["cv_folds"] == [0]


@pytest.mark.slow
def test_the_same_fold_cannot_train_twice_at_once_and_a_killed_lock_is_taken_over(demo_tree, tmp_path):
    folds = split_to(demo_tree, tmp_path / "folds.csv")
    cmd = [sys.executable, str(ROOT / "train.py"), str(folds), *TINY, "--out", str(tmp_path / "runs"),
           "--epochs", "5000"]  # still training when it is killed, however fast the machine
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp_path / "runs" / "test_resnet" / ".fold0.lock"
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    try:
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "is being trained now" in second.stderr, second.stderr
        assert f"pid {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    again = subprocess.run(cmd[:-2] + ["--overwrite"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"held by pid {first.pid}" in again.stderr and "taken over" in again.stderr
    assert lock.read_text() == ""  # released


def test_group_size_below_two_is_refused(tmp_path, demo_tree):
    probs = tmp_path / "p.csv"
    ids = pd.read_csv(demo_tree / "eval" / "info.csv")["ImageID"]
    pd.DataFrame(np.full((len(ids), 18), 1 / 18), columns=[f"p{i}" for i in range(18)]).assign(
        ImageID=ids)[["ImageID"] + [f"p{i}" for i in range(18)]].to_csv(probs, index=False)
    r = invoke(ensemble.app, probs, "--info", demo_tree / "eval" / "info.csv", "-o", tmp_path / "s.csv",
               "--group-size", "1")
    assert r.exit_code == 2 and "--group-size 1" in r.output and not (tmp_path / "s.csv").exists()


def test_runs_split_differently_refuse_a_held_out_bias(tiny_run, demo_tree, tmp_path):
    """The tiny run has 2 folds of one split; a second run from a 2-fold split of another seed: each photo's
    folds differ, so a bias fitted with one run's folds held out would have seen the other's labels."""
    folds = split_to(demo_tree, tmp_path / "other.csv", "--seed", "7")
    out, info = tmp_path / "runs", demo_tree / "eval" / "info.csv"
    for k in (0, 1):
        assert invoke(train.app, folds, *TINY, "--out", out, "--fold", k, "--run-name", "other").exit_code == 0
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert predict_to(tiny_run[1], demo_tree / "eval" / "images", info, a).exit_code == 0
    assert predict_to(out / "other", demo_tree / "eval" / "images", info, b).exit_code == 0
    r = invoke(ensemble.app, a, b, "--info", info, "-o", tmp_path / "s.csv", "--bias")
    assert r.exit_code == 2 and "split differently" in r.output and "--bias" in r.output, r.output
    r = invoke(ensemble.app, a, b, "--info", info, "-o", tmp_path / "s.csv")
    assert r.exit_code == 0 and "warning" in r.output and "split differently" in r.output


def test_people_on_a_tree_without_flatten_or_an_empty_folder_is_one_line(demo_tree, tmp_path):
    r = invoke(people.app, demo_tree / "train" / "images", "-o", tmp_path / "p.csv")
    assert r.exit_code == 2 and "--flatten" in r.output and "Traceback" not in r.output, r.output
    (tmp_path / "empty").mkdir()
    r = invoke(people.app, tmp_path / "empty", "-o", tmp_path / "p.csv")
    assert r.exit_code == 2 and "no photos" in r.output
    crops = tmp_path / "crops"
    shutil.copytree(demo_tree / "eval" / "images", crops)
    (crops / "crop_report.csv").write_text("path,status\n")
    r = invoke(people.app, crops, "-o", tmp_path / "p.csv")
    assert r.exit_code == 0 and "crop.py's crops" in r.output and "raw photos" in r.output


@pytest.mark.parametrize("form", [["--img-size", "96,72"], ["--img-size=96,72"]])
def test_img_size_with_a_comma_shows_the_right_form(form, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "folds.csv", "--model", "x", *form],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == \
        "error: --img-size 96,72: give the numbers separated by a space, e.g. --img-size 96 72"


def test_predict_given_a_csv_as_a_checkpoint_is_one_short_line(tiny_run, demo_tree, tmp_path):
    folds = tiny_run[0]
    r = predict_to(folds, demo_tree / "eval" / "images", demo_tree / "eval" / "info.csv", tmp_path / "p.csv")
    assert r.exit_code == 2 and "a text file, not a checkpoint" in r.output and len(r.output.splitlines()) == 1


def test_results_name_non_ascii_paths_as_they_are(demo_tree, tmp_path):
    out = tmp_path / "plis_été.csv"
    r = subprocess.run([sys.executable, str(ROOT / "split.py"), str(demo_tree / "train" / "train.csv"),
                        str(demo_tree / "train" / "images"), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "plis_été.csv" in r.stdout.strip().splitlines()[-1]


def test_ctrl_c_lines_name_the_command_that_carries_on(demo_tree, tmp_path, monkeypatch):
    """Before any epoch ends the plain command starts the fold again (not --overwrite); crop.py interrupted
    before its first batch says the same command starts it."""
    from maskfold.crop import detector
    from maskfold.training.options import TrainConfig

    import crop

    cfg = TrainConfig(folds_csv=tmp_path / "folds.csv", model="test_resnet")
    assert "the same command starts it again" in train.interrupted_in(cfg, 0, resumed=False)
    assert "--overwrite" not in train.interrupted_in(cfg, 0, resumed=False)
    assert "--resume" in train.interrupted_in(cfg, 2, resumed=False)

    def ctrl_c():
        raise KeyboardInterrupt

    monkeypatch.setattr(detector, "check_facenet", ctrl_c)
    r = invoke(crop.app, demo_tree / "train" / "images", tmp_path / "crops")
    assert r.exit_code == 130 and "the same command starts it" in r.output, r.output
