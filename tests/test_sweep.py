"""sweep.py: a study shared by workers (SQLite here, PostgreSQL where a server can be started), each trial a run
trained by train.py; a killed worker loses nothing, the pruner stops a bad setting after its first fold, and
every mistake in the space or the storage is one line with nothing written."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import sweep

from conftest import ROOT, invoke

FIXED = {"pretrained": False, "epochs": 1, "img_size": [32, 24], "batch_size": 16, "workers": 0, "device": "cpu",
         "oof_tta": "none"}


def space_file(path, space, models=("test_resnet",), fixed=None):
    path.write_text(json.dumps({"models": list(models), "fixed": {**FIXED, **(fixed or {})}, "space": space}))
    return path


@pytest.fixture
def folds(tiny_run):
    return tiny_run[0]


def worker(folds, tmp_path, space, study, *extra):
    cmd = [sys.executable, str(ROOT / "sweep.py"), str(space), str(folds), "--study", study, "--storage",
           f"sqlite:///{tmp_path}/sweep.db", "--out", str(tmp_path / "runs"), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})


def table(tmp_path, study):
    return pd.read_csv(tmp_path / "runs" / f"sweep_{study}.csv")


@pytest.mark.parametrize("space,models,needle", [
    ({"learning_rate": [1e-4, 1e-2, "log"]}, ("test_resnet",), "learning_rate is not a learning option"),
    ({"lr": [1e-4, 1e-2, "log"]}, ("resnet_nine",), "not a timm model"),
    ({"loss": [0.1, 0.5, "log"]}, ("test_resnet",), "a range on a fixed choice"),
    ({"loss": ["ce", "hinge"]}, ("test_resnet",), "loss: hinge"),
    ({"lr": [1e-2, 1e-4, "log"]}, ("test_resnet",), "needs low < high"),
    ({"workers": [0, 1]}, ("test_resnet",), "workers is not a learning option of train.py (fix the others)"),
    ({"fold": [0, 1]}, ("test_resnet",), "the sweep sets it"),
])
def test_a_mistake_in_the_space_is_one_line_and_writes_nothing(folds, tmp_path, space, models, needle):
    s = space_file(tmp_path / "space.json", space, models)
    r = invoke(sweep.app, s, folds, "--study", "x", "--storage", f"sqlite:///{tmp_path}/sweep.db", "--out",
               tmp_path / "runs")
    assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.json"]


def test_a_storage_that_cannot_be_reached_is_one_line(folds, tmp_path):
    s = space_file(tmp_path / "space.json", {"lr": [1e-4, 1e-2, "log"]})
    for url, needle in (("postgresql://nobody:x@127.0.0.1:1/none", "cannot be used"),
                        (f"sqlite:///{tmp_path}/no/such/dir/s.db", "no folder"),
                        ("journal:/no/such/dir/j.log", "no folder")):
        r = invoke(sweep.app, s, folds, "--study", "x", "--storage", url, "--out", tmp_path / "runs")
        assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "runs").exists()


def test_one_study_name_with_another_space_or_split_is_refused(folds, tmp_path, demo_tree):
    import split

    a = space_file(tmp_path / "a.json", {"lr": [1e-4, 1e-2, "log"]})
    b = space_file(tmp_path / "b.json", {"lr": [1e-4, 1e-1, "log"]})
    args = ["--study", "s", "--storage", f"sqlite:///{tmp_path}/sweep.db", "--out", tmp_path / "runs"]
    assert invoke(sweep.app, a, folds, *args, "--show").exit_code == 0
    r = invoke(sweep.app, b, folds, *args, "--show")
    assert r.exit_code == 2 and "another search space" in r.output, r.output
    other = tmp_path / "folds3.csv"
    assert invoke(split.app, demo_tree / "train" / "train.csv", demo_tree / "train" / "images", "-o", other,
                  "--folds", "3").exit_code == 0
    r = invoke(sweep.app, a, other, *args, "--show")
    assert r.exit_code == 2 and "another folds.csv" in r.output, r.output


def test_the_space_reaches_train_py_as_flags():
    from maskfold.sweep.space import flags

    got = flags({"lr": 0.01, "img_size": "96 72", "pretrained": False, "ema_warmup": True, "sampler": "sqrt",
                 "layer_decay": None})
    assert got == ["--lr", "0.01", "--img-size", "96", "72", "--no-pretrained", "--ema-warmup", "--sampler", "sqrt"]


@pytest.mark.slow
def test_two_workers_on_one_sqlite_study_finish_every_trial_once(folds, tmp_path):
    s = space_file(tmp_path / "space.json", {"lr": [1e-4, 1e-2, "log"], "loss": ["ce", "focal"]})
    procs = [worker(folds, tmp_path, s, "two", "--trials", "4", "--pruner", "none", "--seed", str(i))
             for i in (1, 2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    df = table(tmp_path, "two")
    assert (df["state"] == "done").sum() >= 4 and df["run"].is_unique
    mine = [json.loads(o[0].strip().splitlines()[-1])["trials_by_this_worker"] for o in outs]
    assert all(n >= 1 for n in mine), mine  # both workers trained
    for run in df["run"]:
        log = [(tmp_path / "runs" / run / f"fold{k}" / "train.log").read_text() for k in (0, 1)]
        assert all(x.count("best epoch") == 1 for x in log)  # each fold trained once
    results = pd.read_csv(tmp_path / "runs" / "results.csv")
    assert len(results) == 2 * len(df)  # one row per fold trained, none twice


@pytest.mark.slow
def test_a_worker_killed_mid_trial_and_started_again_loses_nothing(folds, tmp_path):
    s = space_file(tmp_path / "space.json", {"lr": [1e-4, 1e-2, "log"]}, fixed={"epochs": 2})
    args = ("--trials", "1", "--pruner", "none", "--heartbeat", "1")
    p = worker(folds, tmp_path, s, "kill", *args)
    fold0 = tmp_path / "runs" / "kill_0" / "fold0" / "metrics.json"
    deadline = time.time() + 300
    while not fold0.is_file() and time.time() < deadline:
        time.sleep(0.5)
    assert fold0.is_file(), p.stderr.read()[-2000:] if p.poll() is not None else "fold 0 never finished"
    time.sleep(2)  # into fold 1
    p.send_signal(signal.SIGKILL)  # its train.py dies with it
    p.wait()
    first = fold0.read_text()
    time.sleep(5)  # past the grace of 4 heartbeats: the trial is the dead worker's no longer
    p = worker(folds, tmp_path, s, "kill", *args)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    df = table(tmp_path, "kill")
    assert list(df["state"]) == ["failed, queued again", "done"], df
    assert df["run"].tolist() == ["kill_0", "kill_0"]  # the same run folder, taken up where it stopped
    assert fold0.read_text() == first and "kill_0/fold0 is finished; skipped" in err  # fold 0 not trained again
    assert (tmp_path / "runs" / "kill_0" / "fold1" / "metrics.json").is_file()


@pytest.mark.slow
def test_the_pruner_stops_a_bad_setting_after_its_first_fold(folds, tmp_path):
    import optuna

    s = space_file(tmp_path / "space.json", {"lr": [3e-3, 10.0]}, fixed={"epochs": 2, "aug": "none", "loss": "ce"})
    store = f"sqlite:///{tmp_path}/sweep.db"
    args = ["--study", "p", "--storage", store, "--out", tmp_path / "runs"]
    assert invoke(sweep.app, s, folds, *args, "--show").exit_code == 0
    study = optuna.load_study(study_name="p", storage=store)
    for lr in (3e-3, 3e-3, 10.0):  # two sound trials, then one made to be bad
        study.enqueue_trial({"model": "test_resnet", "lr": lr})
    p = worker(folds, tmp_path, s, "p", "--trials", "3", "--startup", "2")
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    df = table(tmp_path, "p")
    assert df["state"].tolist() == ["done", "done", "stopped"], df.to_string()
    assert pd.isna(df.loc[2, "f1_fold1"]) and not (tmp_path / "runs" / "p_2" / "fold1").exists()
    assert json.loads((tmp_path / "runs" / "p_2" / "sweep.json").read_text())["state"] == "stopped"


def postgres_url():
    """A PostgreSQL server of this test's own (Debian's package, started as the postgres user, since it refuses to
    run as root), its URL and how to stop it; or a reason to skip."""
    import glob
    import tempfile

    bins = sorted(p for p in glob.glob("/usr/lib/postgresql/*/bin") if os.path.isfile(f"{p}/initdb"))
    if not bins:
        pytest.skip("no PostgreSQL server here (Debian's postgresql package; .ci/run installs it where it can)")
    root = os.geteuid() == 0
    if root and shutil.which("su") is None:
        pytest.skip("no su to start PostgreSQL as the postgres user")
    home = Path(tempfile.mkdtemp(prefix="maskfold-pg-"))  # outside pytest's private folders: postgres reads it
    home.chmod(0o755)
    data = home / "data"
    data.mkdir()
    if root:
        shutil.chown(data, "postgres")

    def run(cmd):
        return subprocess.run(["su", "postgres", "-c", cmd] if root else ["sh", "-c", cmd], capture_output=True,
                              text=True, timeout=120)

    r = run(f"{bins[-1]}/initdb -D {data} -A trust -U postgres")
    if r.returncode:
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(f"initdb failed: {r.stderr.strip()[-300:]}")
    port = 55432
    r = run(f"{bins[-1]}/pg_ctl -D {data} -l {data}/log -o '-p {port} -k {data} -c listen_addresses=127.0.0.1' "
            "-w start")
    if r.returncode:
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {r.stderr.strip()[-300:]}")

    def stop():
        run(f"{bins[-1]}/pg_ctl -D {data} -m fast stop")
        shutil.rmtree(home, ignore_errors=True)

    return f"postgresql://postgres@127.0.0.1:{port}/postgres", stop


@pytest.mark.slow
def test_two_workers_share_a_study_on_a_real_postgresql_server(folds, tmp_path):
    url, stop = postgres_url()
    try:
        s = space_file(tmp_path / "space.json", {"lr": [1e-4, 1e-2, "log"]})
        cmd = [sys.executable, str(ROOT / "sweep.py"), str(s), str(folds), "--study", "pg", "--storage", url,
               "--out", str(tmp_path / "runs"), "--trials", "2", "--pruner", "none"]
        procs = [subprocess.Popen(cmd + ["--seed", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for i in (1, 2)]
        outs = [p.communicate(timeout=900) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
        df = table(tmp_path, "pg")
        assert (df["state"] == "done").sum() >= 2 and df["run"].is_unique
    finally:
        stop()


def test_show_writes_the_table_and_the_report_draws_it(folds, tmp_path):
    """--show on a study of finished trials: the table, the importance, the best command; report.py --sweep."""
    import numpy as np
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    import report

    s = space_file(tmp_path / "space.json", {"lr": [1e-4, 1e-2, "log"], "loss": ["ce", "focal"]})
    store = f"sqlite:///{tmp_path}/sweep.db"
    args = ["--study", "shown", "--storage", store, "--out", tmp_path / "runs"]
    assert invoke(sweep.app, s, folds, *args, "--show").exit_code == 0
    study = optuna.load_study(study_name="shown", storage=store)
    dists = {"model": CategoricalDistribution(["test_resnet"]), "lr": FloatDistribution(1e-4, 1e-2, log=True),
             "loss": CategoricalDistribution(["ce", "focal"])}
    rng = np.random.default_rng(0)
    for i in range(6):
        lr, loss = float(10 ** rng.uniform(-4, -2)), ["ce", "focal"][i % 2]
        cv = 0.5 + 0.05 * np.log10(lr) + (0.1 if loss == "focal" else 0)
        study.add_trial(optuna.trial.create_trial(
            params={"model": "test_resnet", "lr": lr, "loss": loss}, distributions=dists, value=cv,
            user_attrs={"run": f"shown_{i}", "f1_fold0": cv, "f1_fold1": cv, "seconds": 10.0}))
    r = invoke(sweep.app, s, folds, *args, "--show")
    assert r.exit_code == 0, r.output
    df = table(tmp_path, "shown")
    assert len(df) == 6 and set(df["state"]) == {"done"} and df["cv_f1"].notna().all()
    record = json.loads((tmp_path / "runs" / "sweep_shown.csv.json").read_text())
    assert set(record["importance"]) == {"lr", "loss"}
    best = df.loc[df["cv_f1"].idxmax()]
    assert f"--run-name {best['run']}" in record["best_command"] and f"--loss {best['loss']}" in record["best_command"]
    assert "best trial, to train it again by hand" in r.output
    page = tmp_path / "r.html"
    r = invoke(report.app, "--sweep", tmp_path / "runs" / "sweep_shown.csv", "-o", page, "--title", "sweep")
    text = page.read_text()
    assert "Sweep shown" in text and "Importance of each option" in text and "CV against each option" in text
    assert text.count("<tr") >= 6 + 2


@pytest.mark.slow
def test_ctrl_c_queues_the_trial_again_and_the_same_command_finishes_it(folds, tmp_path):
    from conftest import ctrl_c_default

    s = space_file(tmp_path / "space.json", {"lr": [1e-4, 1e-2, "log"]}, fixed={"epochs": 2})
    cmd = [sys.executable, str(ROOT / "sweep.py"), str(s), str(folds), "--study", "c", "--storage",
           f"sqlite:///{tmp_path}/sweep.db", "--out", str(tmp_path / "runs"), "--trials", "1", "--pruner", "none"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=ctrl_c_default)
    fold0 = tmp_path / "runs" / "c_0" / "fold0" / "metrics.json"
    deadline = time.time() + 300
    while not fold0.is_file() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C in its tmux window: the worker and its train.py
    out, err = p.communicate(timeout=120)
    assert p.returncode in (130, -signal.SIGINT) and "queued again" in err.strip().splitlines()[-1], err[-2000:]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    df = table(tmp_path, "c")
    assert df["state"].tolist() == ["failed, queued again", "done"] and set(df["run"]) == {"c_0"}
    assert "c_0/fold0 is finished; skipped" in r.stderr


def test_a_journal_file_holds_the_study_as_a_database_does(folds, tmp_path):
    """journal:FILE (a shared disk): the study is made in the file, and a worker naming it with another space is
    refused, as with SQLite."""
    a = space_file(tmp_path / "a.json", {"lr": [1e-4, 1e-2, "log"]})
    b = space_file(tmp_path / "b.json", {"lr": [1e-4, 1e-1, "log"]})
    args = ["--study", "j", "--storage", f"journal:{tmp_path}/j.log", "--out", tmp_path / "runs", "--show"]
    assert invoke(sweep.app, a, folds, *args).exit_code == 0
    assert (tmp_path / "j.log").stat().st_size > 0
    r = invoke(sweep.app, b, folds, *args)
    assert r.exit_code == 2 and "another search space" in r.output, r.output


def test_wilcoxon_needs_five_folds_and_says_so(folds, tmp_path):
    s = space_file(tmp_path / "space.json", {"lr": [1e-4, 1e-2, "log"]})
    r = invoke(sweep.app, s, folds, "--study", "w", "--storage", f"sqlite:///{tmp_path}/w.db", "--out",
               tmp_path / "runs", "--pruner", "wilcoxon")
    assert r.exit_code == 2 and "needs 5 or more folds" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "w.db").exists() and not (tmp_path / "runs").exists()


def test_wilcoxon_stops_a_setting_below_the_best_on_every_fold_with_a_fold_to_go(demo_tree, tmp_path, monkeypatch):
    """The pruner's wiring (each fold's F1 reported as its step, the stop recorded), with folds whose F1 is set:
    a tiny model on 12 people learns too little in a test's time to tell a sound setting from lr 10."""
    import optuna

    from maskfold.training import results

    import split

    folds5 = tmp_path / "folds5.csv"
    assert invoke(split.app, demo_tree / "train" / "train.csv", demo_tree / "train" / "images", "-o", folds5,
                  "--folds", "5").exit_code == 0
    trained = []

    def fold(o, run, model, values, k):
        trained.append((run, k))
        return {"f1": (0.80 if values["lr"] < 1 else 0.30) + 0.01 * k}

    monkeypatch.setattr(sweep, "run_fold", fold)
    monkeypatch.setattr(results, "summarize", lambda run: {"cv_f1": 0.82})
    s = space_file(tmp_path / "space.json", {"lr": [3e-3, 10.0]})
    store = f"sqlite:///{tmp_path}/sweep.db"
    args = [s, folds5, "--study", "w", "--storage", store, "--out", tmp_path / "runs", "--pruner", "wilcoxon"]
    assert invoke(sweep.app, *args, "--show").exit_code == 0
    study = optuna.load_study(study_name="w", storage=store)
    for lr in (3e-3, 10.0, 3e-3):
        study.enqueue_trial({"model": "test_resnet", "lr": lr})
    r = invoke(sweep.app, *args, "--trials", "3")
    assert r.exit_code == 0, r.output
    df = table(tmp_path, "w")
    assert df["state"].tolist() == ["done", "stopped", "done"], df.to_string()
    assert [k for run, k in trained if run == "w_1"] == [0, 1, 2, 3]  # p = 1/16 after 4 folds: the 5th not trained
    assert [k for run, k in trained if run == "w_2"] == [0, 1, 2, 3, 4]  # as good as the best: never stopped


def test_a_workers_seed_decides_its_proposals(folds, tmp_path):
    s = space_file(tmp_path / "space.json", {"lr": [1e-4, 1e-2, "log"], "loss": ["ce", "focal", "weighted_ce"]})
    lrs = {}
    for study, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        r = invoke(sweep.app, s, folds, "--study", study, "--storage", f"sqlite:///{tmp_path}/s.db", "--out",
                   tmp_path / "runs", "--trials", "1", "--seed", seed, "--pruner", "none")
        assert r.exit_code == 0, r.output
        lrs[study] = table(tmp_path, study).loc[0, ["lr", "loss"]].tolist()
    assert lrs["a"] == lrs["b"] and lrs["a"] != lrs["c"], lrs
