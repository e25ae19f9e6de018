"""Threads that fit the cores (maskfold.threads, in every torch script), and predict.py --per-run: one decode for
several runs, each run's file as predicting it alone writes it."""
import json
import shutil

import pytest
import torch

from maskfold import threads
from maskfold.cli import UserError

import predict
import train
from conftest import invoke


@pytest.fixture
def cores(monkeypatch):
    """A machine of 8 usable cores, without an OMP_NUM_THREADS of the user's."""
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_threads_are_the_usable_cores_less_the_workers(cores, monkeypatch):
    assert threads.choose(None, workers=3) == (5, "8 cores less 3 workers")
    assert threads.choose(None, workers=1, processes=2) == (3, "8 cores / 2 processes less 1 worker")
    assert threads.choose(None, workers=20)[0] == 1  # never none
    assert threads.default_workers() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose(None, workers=3) == (2, "OMP_NUM_THREADS")  # the user's setting is taken
    assert threads.choose(6, workers=3) == (6, "--threads")  # and the flag, where given, over it
    with pytest.raises(UserError, match="--threads 0"):
        threads.choose(0)


def test_train_sets_and_records_its_threads(cores, tiny_run, tmp_path):
    folds, _ = tiny_run
    base = [folds, "--model", "test_resnet", "--no-pretrained", "--epochs", "1", "--img-size", "32", "24",
            "--batch-size", "16", "--device", "cpu", "--out", tmp_path]
    r = invoke(train.app, *base, "--workers", "0", "--run-name", "auto")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["threads"] == 8  # no workers: every core
    assert "threads 8 (8 cores)" in (tmp_path / "auto" / "fold0" / "train.log").read_text()
    r = invoke(train.app, *base, "--workers", "0", "--threads", "3", "--seed", "5", "--run-name", "chosen")  # no twin
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["threads"] == 3 == torch.get_num_threads()
    r = invoke(train.app, *base, "--threads", "0", "--run-name", "bad")
    assert r.exit_code == 2 and "--threads >= 1" in r.output and not (tmp_path / "bad").exists()


def two_runs(run, tmp_path):
    """Two runs that answer differently: the whole run, and a copy with fold 0 alone."""
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    for d in (a, b):
        shutil.copytree(run, d, ignore=shutil.ignore_patterns("tensorboard"))
    shutil.rmtree(b / "fold1")
    return a, b


def test_per_run_writes_what_each_run_alone_writes_from_one_decode(tiny_run, demo_tree, tmp_path, monkeypatch):
    from maskfold import images

    a, b = two_runs(tiny_run[1], tmp_path)
    where = ["--images", demo_tree / "eval" / "images", "--info", demo_tree / "eval" / "info.csv", "--device", "cpu"]
    decodes = []
    real = images.load_cache
    monkeypatch.setattr(images, "load_cache", lambda files, size, *a, **k: decodes.append(len(files)) or
                        real(files, size, *a, **k))
    r = invoke(predict.app, a, b, *where, "--per-run", tmp_path / "probs")
    assert r.exit_code == 0, r.output
    shared = len(decodes)
    for run in (a, b):
        decodes.clear()
        assert invoke(predict.app, run, *where, "-o", tmp_path / f"{run.name}.csv").exit_code == 0
        assert len(decodes) == shared  # one run alone decodes as often as both together
        assert (tmp_path / "probs" / f"{run.name}.csv").read_bytes() == (tmp_path / f"{run.name}.csv").read_bytes()
        mine = json.loads((tmp_path / "probs" / f"{run.name}.csv.json").read_text())
        alone = json.loads((tmp_path / f"{run.name}.csv.json").read_text())
        assert mine == alone and len(mine["checkpoints"]) == (2 if run == a else 1)
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "b.csv").read_bytes()


@pytest.mark.parametrize("case, needle", [
    ("both", "not both"), ("neither", "give --out FILE"), ("file", "is not a run folder"),
    ("same_name", "would both write"), ("exists", "exists (pass --overwrite")])
def test_per_run_bad_calls_are_one_line(case, needle, tiny_run, demo_tree, tmp_path):
    a, b = two_runs(tiny_run[1], tmp_path)
    where = ["--images", demo_tree / "eval" / "images", "--info", demo_tree / "eval" / "info.csv", "--device", "cpu"]
    out = tmp_path / "probs"
    args = {"both": [a, "--per-run", out, "-o", tmp_path / "x.csv"], "neither": [a],
            "file": [a / "fold0" / "best.pt", "--per-run", out], "exists": [a, b, "--per-run", out]}.get(case)
    if case == "same_name":
        other = tmp_path / "elsewhere" / "a"
        shutil.copytree(a, other)
        args = [a, other, "--per-run", out]
    if case == "exists":
        out.mkdir()
        (out / "b.csv").write_text("kept")
    r = invoke(predict.app, *args, *where)
    assert r.exit_code == 2 and needle in r.output, r.output
    assert "Traceback" not in r.output
    assert not (out / "a.csv").exists() and not (tmp_path / "x.csv").exists()
    if case == "exists":
        assert (out / "b.csv").read_text() == "kept"


def test_crop_shares_the_threads_between_its_processes(cores, tmp_path, monkeypatch):
    from maskfold.crop.cropping import CropOptions, threads_per_process

    o = CropOptions(src=tmp_path, dst=tmp_path / "out", workers=2)
    assert threads_per_process(o) == (4, "2 processes x 4 threads (8 cores)")
    assert threads_per_process(o, processes=False) == (8, "threads 8 (8 cores)")  # the GPU path: one process
    o = CropOptions(src=tmp_path, dst=tmp_path / "out", workers=3, threads=3)
    assert threads_per_process(o)[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert threads_per_process(CropOptions(src=tmp_path, dst=tmp_path / "out", workers=2))[0] == 3


def test_predict_says_and_takes_its_threads(tiny_run, demo_tree, tmp_path):
    where = ["--images", demo_tree / "eval" / "images", "--info", demo_tree / "eval" / "info.csv", "--device", "cpu"]
    r = invoke(predict.app, tiny_run[1], *where, "-o", tmp_path / "p.csv", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["threads"] == 1 and "threads 1 (--threads)" in r.stderr


def test_pseudo_and_crop_take_their_threads(demo_tree, tmp_path):
    import crop

    r = invoke(crop.app, demo_tree / "eval" / "images", tmp_path / "crops", "--workers", "1", "--threads", "1",
               "--device", "cpu", "--preview-size", "0")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["threads"] == "threads 1 (--threads)"
    assert torch.get_num_threads() == 1  # the one process that detects (the GPU path's, or --workers 1)
    r = invoke(crop.app, demo_tree / "eval" / "images", tmp_path / "bad", "--threads", "0")
    assert r.exit_code == 2 and "--threads" in r.output and not (tmp_path / "bad").exists()
