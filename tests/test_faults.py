"""Faults as a user meets them: processes really killed with SIGKILL, foreign checkpoints on --resume."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from maskfold.crop import cropping
from maskfold.labels import PROB_COLS

import crop
import split
import train
from conftest import ROOT, ctrl_c_default, invoke

TINY = ["--no-pretrained", "--epochs", "1", "--img-size", "32", "24", "--batch-size", "16", "--workers", "0",
        "--device", "cpu"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1")


def script(name, *args):
    return [sys.executable, str(ROOT / name), *map(str, args)]


def wait_until(p: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """Poll until `ready()` holds (or `p` ends); whether `p` is still running then."""
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline and p.poll() is None:
        time.sleep(0.005)
    return p.poll() is None


def kill_when(p: subprocess.Popen, ready) -> bool:
    """SIGKILL `p` as soon as `ready()` holds; whether it was still running then."""
    alive = wait_until(p, ready)
    p.send_signal(signal.SIGKILL)
    p.wait()
    return alive


@pytest.fixture(scope="module")
def photos(demo_tree, tmp_path_factory):
    """Three copies of the demo's train photos: enough batches for a kill to land mid-run."""
    src = tmp_path_factory.mktemp("photos") / "images"
    for copy in range(3):
        for person in sorted((demo_tree / "train" / "images").iterdir()):
            if person.is_dir() and not person.name.startswith("."):
                shutil.copytree(person, src / f"{person.name}_{copy}")
    return src


@pytest.mark.slow
def test_crop_killed_mid_run_resumes_and_every_file_decodes(photos, tmp_path):
    whole, dst = tmp_path / "whole", tmp_path / "killed"
    args = ["--device", "cpu", "--batch-size", "7", "--workers", "2", "--preview-size", "0"]
    assert subprocess.run(script("crop.py", photos, whole, *args), capture_output=True, env=ENV).returncode == 0
    partial = dst / crop.PARTIAL

    def two_batches_recorded():
        return partial.is_file() and partial.read_text().count("\n") > 14

    p = subprocess.Popen(script("crop.py", photos, dst, *args), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=ENV)
    assert kill_when(p, two_batches_recorded), "crop.py finished before the kill"
    time.sleep(0.3)  # the worker processes die with their parent
    recorded = pd.read_csv(partial)
    assert 14 <= len(recorded) < 252
    first = dst / recorded["path"].iloc[0]
    (first.parent / f".{first.name}.abcd_123.tmp").write_bytes(b"\xff\xd8 half a crop")  # as a kill mid-write leaves
    r = subprocess.run(script("crop.py", photos, dst, *args), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    # only what was not yet recorded is redone: recorded crops are on disk, in-flight ones are not trusted
    assert summary["skipped"] == len(recorded) and summary["processed"] == 252 - len(recorded)
    files = [f for f in dst.rglob("*") if f.is_file()]
    assert {f.name for f in files if f.suffix != ".jpg"} == {"crop_report.csv", "crop_summary.json"}
    for f in files:
        if f.suffix == ".jpg":
            with Image.open(f) as im:
                im.load()  # every crop decodes: none is half written
    a, b = (pd.read_csv(d / "crop_report.csv").set_index("path") for d in (whole, dst))
    assert a.index.equals(b.index) and (a["status"] == b["status"]).all()
    cols = cropping.COLUMNS[3:11]
    assert np.allclose(a[cols].to_numpy(float), b[cols].to_numpy(float), atol=1)


@pytest.mark.slow
def test_crop_interrupted_by_ctrl_c_says_so_in_one_line_and_resumes(photos, tmp_path):
    dst = tmp_path / "crops"
    args = ["--device", "cpu", "--batch-size", "7", "--workers", "2", "--preview-size", "0"]
    p = subprocess.Popen(script("crop.py", photos, dst, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV, preexec_fn=ctrl_c_default)
    partial = dst / crop.PARTIAL
    assert wait_until(p, lambda: partial.is_file() and partial.stat().st_size), "crop.py finished before Ctrl-C"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGINT and "Traceback" not in err, err  # died of it: a shell loop stops
    assert err.strip().splitlines()[-1].startswith("error: interrupted after")
    r = subprocess.run(script("crop.py", photos, dst, *args), capture_output=True, text=True, env=ENV)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and summary["skipped"] > 0 and summary["skipped"] + summary["processed"] == 252


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


HALF_WRITER = """
import pathlib, runpy, sys, time
import pandas as pd
marker, script = pathlib.Path(sys.argv[1]), sys.argv[2]
real = pd.DataFrame.to_csv

def half_then_hang(self, path=None, *args, **kwargs):
    text = real(self, None, *args, **kwargs)
    if path is None or not str(path).endswith(".tmp"):
        return real(self, path, *args, **kwargs)
    with open(path, "w") as f:  # the output's temporary file: half of it, then a pause to be killed in
        f.write(text[: len(text) // 2])
        f.flush()
        marker.write_text("writing")
        time.sleep(120)
        f.write(text[len(text) // 2:])

pd.DataFrame.to_csv = half_then_hang
sys.argv = [script] + sys.argv[3:]
sys.path.insert(0, str(pathlib.Path(script).parent))
runpy.run_path(script, run_name="__main__")
"""


def killed_while_writing(cmd: list, out, previous: bytes | None, tmp_path) -> None:
    """Run `cmd` (a script's command line) so that it stops half way through writing its output, SIGKILL it
    there, and check the output is the previous file untouched, or none."""
    if previous is None:
        out.unlink(missing_ok=True)
    else:
        out.write_bytes(previous)
    marker = tmp_path / "writing"
    marker.unlink(missing_ok=True)
    wrapper = tmp_path / "half_writer.py"
    wrapper.write_text(HALF_WRITER)
    p = subprocess.Popen([sys.executable, str(wrapper), str(marker), *cmd[1:]], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=ENV)
    assert kill_when(p, marker.exists), "the output was never being written"
    half = list(out.parent.glob(f".{out.name}.*.tmp"))
    assert len(half) == 1 and half[0].stat().st_size > 0  # killed mid-write: half a file under its temporary name
    assert out.read_bytes() == previous if previous is not None else not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("previous", [None, b"ImageID,ans\nold,0\n"], ids=["none", "old"])
def test_predict_and_ensemble_killed_while_writing_leave_the_old_file_or_none(run, demo_tree, tmp_path, previous):
    _, folder = run
    ids = pd.read_csv(demo_tree / "eval" / "info.csv")["ImageID"].tolist()
    probs, sub = tmp_path / "probs.csv", tmp_path / "submission.csv"
    predict = script("predict.py", folder, "--images", demo_tree / "eval" / "images", "--info",
                     demo_tree / "eval" / "info.csv", "-o", probs, "--device", "cpu", "--overwrite")
    killed_while_writing(predict, probs, previous, tmp_path)
    assert subprocess.run(predict, capture_output=True, env=ENV).returncode == 0  # and a rerun finishes it
    df = pd.read_csv(probs)
    assert df["ImageID"].tolist() == ids and np.allclose(df[PROB_COLS].sum(axis=1), 1, atol=1e-4)
    assert not list(tmp_path.glob(".probs.csv.*.tmp"))  # the killed run's half file is gone
    ensemble = script("ensemble.py", probs, "--info", demo_tree / "eval" / "info.csv", "-o", sub, "--overwrite")
    killed_while_writing(ensemble, sub, previous, tmp_path)
    assert subprocess.run(ensemble, capture_output=True, env=ENV).returncode == 0
    df = pd.read_csv(sub)
    assert df["ImageID"].tolist() == ids and df["ans"].between(0, 17).all()


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind,needle", [
    ("architecture", "a checkpoint of test_resnet (single head, 32x24), not of this run's test_efficientnet"),
    ("image size", "(single head, 32x24), not of this run's test_resnet (single head, 40x32)"),
    ("classes", "a checkpoint for 10 classes"),
    ("weights only", "lacks optimizer, scheduler"),
    ("unsafe", "not a safe checkpoint"),
])
def test_resume_refuses_a_foreign_checkpoint(run, tmp_path, kind, needle):
    folds, folder = run
    last = torch.load(folder / "fold0" / "last.pt", weights_only=True)
    model, size = ("test_efficientnet" if kind == "architecture" else "test_resnet",
                   ["40", "32"] if kind == "image size" else ["32", "24"])
    target = tmp_path / "runs" / model / "fold0" / "last.pt"
    target.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    if kind == "classes":
        last["num_classes"] = 10
    elif kind == "weights only":
        last = torch.load(folder / "fold0" / "best.pt", weights_only=True)
    elif kind == "unsafe":
        last = {"model": Evil(str(marker))}
    torch.save(last, target)
    tiny = list(TINY)
    tiny[tiny.index("--img-size") + 1:tiny.index("--img-size") + 3] = size
    r = invoke(train.app, folds, "--model", model, *tiny, "--out", tmp_path / "runs", "--resume")
    assert r.exit_code == 2 and needle in r.stderr and str(target) in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not marker.exists()
    assert not (target.parent / "metrics.json").exists()


@pytest.mark.parametrize("script_name", ["split", "train", "predict"])
def test_no_script_writes_inside_its_input_folder(run, demo_tree, script_name):
    folds, folder = run
    train_images, eval_images = demo_tree / "train" / "images", demo_tree / "eval" / "images"
    before = sorted(p for p in demo_tree.rglob("*"))
    if script_name == "split":
        target = train_images / "folds.csv"
        r = invoke(split.app, demo_tree / "train" / "train.csv", train_images, "-o", target)
    elif script_name == "train":
        target = train_images / "runs"
        r = invoke(train.app, folds, "--model", "test_resnet", *TINY, "--out", target)
    else:
        import predict
        target = eval_images / "probs.csv"
        r = invoke(predict.app, folder, "--images", eval_images, "--info", demo_tree / "eval" / "info.csv", "-o",
                   target, "--device", "cpu")
    assert r.exit_code == 2 and "is inside the input folder" in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and not target.exists()
    assert sorted(p for p in demo_tree.rglob("*")) == before


@pytest.mark.parametrize("script_name", ["predict", "ensemble"])
def test_finished_output_kept_without_overwrite(run, demo_tree, tmp_path, script_name):
    import ensemble
    import predict
    _, folder = run
    out = tmp_path / "out.csv"
    out.write_text("ImageID,ans\nkeep,0\n")
    info = demo_tree / "eval" / "info.csv"
    if script_name == "predict":
        r = invoke(predict.app, folder, "--images", demo_tree / "eval" / "images", "--info", info, "-o", out,
                   "--device", "cpu")
    else:
        ids = pd.read_csv(info)["ImageID"]
        probs = pd.DataFrame(np.full((len(ids), 18), 1 / 18), columns=PROB_COLS).assign(ImageID=ids)
        probs.to_csv(tmp_path / "p.csv", index=False)
        r = invoke(ensemble.app, tmp_path / "p.csv", "--info", info, "-o", out)
    assert r.exit_code == 2 and "--overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
    assert out.read_text() == "ImageID,ans\nkeep,0\n"
