"""Shared fixtures: a small demo data set made once per test session, and a CLI runner."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def demo_tree(tmp_path_factory) -> Path:
    """12 train people (every gender x age stratum) and 3 eval people in the competition's layout, with the
    easy demo's clear cues: tests need small, fast data, not the calibrated one."""
    from typer.testing import CliRunner

    import demo

    out = tmp_path_factory.mktemp("demo") / "data"
    result = CliRunner().invoke(demo.app, [str(out), "--people", "12", "--eval-people", "3", "--seed", "3",
                                           "--kind", "easy"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_run(demo_tree, tmp_path_factory) -> tuple[Path, Path]:
    """(folds.csv, run folder) of a tiny model trained one epoch on each of 2 folds of the demo tree."""
    import split
    import train

    tmp = tmp_path_factory.mktemp("run")
    folds = tmp / "folds.csv"
    assert invoke(split.app, demo_tree / "train" / "train.csv", demo_tree / "train" / "images", "-o", folds,
                  "--folds", "2").exit_code == 0
    for k in (0, 1):
        r = invoke(train.app, folds, "--model", "test_resnet", "--no-pretrained", "--epochs", "1", "--img-size", "32",
                   "24", "--batch-size", "16", "--workers", "0", "--device", "cpu", "--out", tmp / "runs", "--fold", k)
        assert r.exit_code == 0, r.output
    return folds, tmp / "runs" / "test_resnet"


def ctrl_c_default() -> None:
    """A child's start (Popen's preexec_fn) with Ctrl-C at its default, as a terminal gives it: a suite started
    in the background (`nohup make test &`) hands its children SIGINT ignored, and they would never see it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def invoke(app, *args):
    """Run a script's Typer app in-process as its command line would."""
    from typer.testing import CliRunner

    return CliRunner().invoke(app, [str(a) for a in args])


def iou(a, b) -> float:
    """Intersection over union of two x1,y1,x2,y2 boxes (torchvision's)."""
    import numpy as np
    import torch
    from torchvision.ops import box_iou

    a, b = (torch.from_numpy(np.asarray([x], dtype=np.float64)) for x in (a, b))
    return float(box_iou(a, b)[0, 0])


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu skip, saying why, where torch sees no CUDA device."""
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device; this machine has none"))


@pytest.fixture(autouse=True)
def ctrl_c_handler_restored():
    """A script run in-process that was interrupted leaves Ctrl-C ignored (its process is about to exit); the
    next test gets Python's handler back."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)
