"""One model per task (train.py --task) and the final model on every person (train.py --fold all): what they
train, what predict.py writes of them, how ensemble.py composes and scores them, and the one-line refusals
where a script cannot use them. Each test fails if its option is accepted and ignored."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from maskfold.labels import PROB_COLS, TASKS, decode, marginals, probs18, task_of, task_scores
from maskfold.probs import write_probs
from maskfold.runs import run_folds

import audit
import ensemble
import losses
import predict
import pseudo
import train
from conftest import fake_run, invoke, run_ensemble

TINY = ("--model", "test_resnet", "--no-pretrained", "--epochs", "1", "--img-size", "32", "24", "--batch-size", "16",
        "--workers", "0", "--device", "cpu")


def one_line(r, needle):
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output


@pytest.fixture(scope="module")
def age_run(tiny_run, tmp_path_factory):
    """An age-only run (--task age, both folds of the session's folds.csv) beside a copy of the 18-class run."""
    folds, run = tiny_run
    out = tmp_path_factory.mktemp("tasks") / "runs"
    shutil.copytree(run, out / run.name)
    for k in (0, 1):
        r = invoke(train.app, folds, *TINY, "--out", out, "--fold", k, "--task", "age", "--run-name", "age",
                   "--sampler", "balanced")
        assert r.exit_code == 0, r.output
    return folds, out / run.name, out / "age"


# ---------------------------------------------------------------- what a task's model learns


def test_a_task_run_learns_its_task_alone(age_run):
    _, _, run = age_run
    ck = torch.load(run / "fold0" / "best.pt", weights_only=True)
    assert ck["head"] == "age"
    assert ck["state_dict"]["fc.weight"].shape[0] == TASKS["age"]  # three outputs: the age bands
    oof = pd.read_csv(run / "fold0" / "oof.csv")
    p = oof[PROB_COLS].to_numpy()
    assert task_of(p) == "age"  # mask and gender uniform on every row
    m = json.loads((run / "fold0" / "metrics.json").read_text())
    assert m["task"] == "age" and m["f1"] == m["f1_age"] and m["f1_mask"] is None and m["f1_gender"] is None
    h = pd.read_csv(run / "fold0" / "history.csv")
    assert (h["val_f1"] == h["val_f1_age"]).all() and "val_f1_mask" not in h  # epochs chosen by the age F1
    config = json.loads((run / "fold0" / "config.json").read_text())
    assert config["task"] == "age"
    summary = pd.read_csv(run.parent / "summary.csv").set_index("run")
    assert summary.loc["age", "task"] == "age" and np.isnan(summary.loc["age", "cv_f1_mask"])


def test_a_task_head_gives_its_task_and_leaves_the_others_uniform():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    p = probs18(logits, "age").numpy()
    m = marginals(p)
    assert np.allclose(m["age"], torch.softmax(logits, 1).numpy()) and np.allclose(m["mask"], 1 / 3)
    assert np.allclose(m["gender"], 0.5) and task_of(p) == "age"
    assert task_of(probs18(torch.randn(4, 18), "single").numpy()) is None


def test_the_loss_of_a_task_model_is_its_tasks_alone():
    targets = np.array([0, 7, 14, 5, 11, 17])  # class codes; their age bands are 0, 1, 2, 2, 2, 2
    crit = losses.Criterion("ce", "age", targets, 2.0, 0.1, [1, 1, 1])
    logits = torch.randn(6, 3)
    y = torch.as_tensor(targets)
    assert torch.isclose(crit(logits, y), torch.nn.functional.cross_entropy(logits, y % 3))
    weighted = losses.Criterion("weighted_ce", "age", targets, 2.0, 0.1, [1, 1, 1])
    w = losses.class_weights(np.bincount(targets % 3, minlength=3))  # by the age bands' counts, not the classes'
    assert torch.isclose(weighted(logits, y), torch.nn.functional.cross_entropy(logits, y % 3, weight=w))


def test_the_balanced_sampler_of_a_task_run_balances_its_tasks_classes(tiny_run, tmp_path, monkeypatch):
    from maskfold.training import data

    seen = []
    real = data.sampling_weights
    monkeypatch.setattr(data, "sampling_weights", lambda t, kind: seen.append(np.asarray(t)) or real(t, kind))
    folds, _ = tiny_run
    r = invoke(train.app, folds, *TINY, "--out", tmp_path, "--task", "gender", "--sampler", "balanced")
    assert r.exit_code == 0, r.output
    assert set(np.unique(seen[0])) == {0, 1}  # the gender of each photo, not its class code


def test_a_task_with_other_head_options_is_refused(tiny_run, tmp_path):
    folds, _ = tiny_run
    for extra, needle in ((("--head", "multi"), "drop --head multi"), (("--task-weights", "1,2,1"), "--task-weights"),
                          (("--task", "nose"), "nose")):
        r = invoke(train.app, folds, *TINY, "--out", tmp_path, "--task", "age", *extra)
        assert r.exit_code == 2 and needle in r.output, r.output
    assert not (tmp_path / "test_resnet").exists()


# ---------------------------------------------------------------- predict.py and ensemble.py


@pytest.fixture(scope="module")
def task_probs(demo_tree, age_run, tmp_path_factory):
    """predict.py --per-run of the 18-class run and the age run: (folder, whole.csv, age.csv)."""
    _, whole, age = age_run
    ev = demo_tree / "eval"
    out = tmp_path_factory.mktemp("task_probs")
    r = invoke(predict.app, whole, age, "--images", ev / "images", "--info", ev / "info.csv", "--per-run", out)
    assert r.exit_code == 0, r.output
    return out, out / f"{whole.name}.csv", out / "age.csv"


def test_predict_records_the_task_and_refuses_to_average_it_with_classes(demo_tree, age_run, task_probs, tmp_path):
    _, whole, age = age_run
    _, whole_csv, age_csv = task_probs
    assert json.loads(age_csv.with_suffix(".csv.json").read_text())["task"] == "age"
    assert json.loads(whole_csv.with_suffix(".csv.json").read_text())["task"] == "all"
    assert task_of(pd.read_csv(age_csv)[PROB_COLS].to_numpy()) == "age"
    ev = demo_tree / "eval"
    r = invoke(predict.app, whole, age, "--images", ev / "images", "--info", ev / "info.csv", "-o", tmp_path / "x.csv")
    one_line(r, "answers the age task alone")
    assert not (tmp_path / "x.csv").exists()


def test_ensemble_takes_a_tasks_answer_from_its_model_and_scores_it_out_of_fold(demo_tree, age_run, task_probs,
                                                                               tmp_path):
    _, whole, age = age_run
    _, whole_csv, age_csv = task_probs
    info = demo_tree / "eval" / "info.csv"
    r = invoke(ensemble.app, whole_csv, age_csv, "--info", info, "-o", tmp_path / "s.csv")
    one_line(r, "--age-from 2")
    assert not (tmp_path / "s.csv").exists()
    r = invoke(ensemble.app, whole_csv, age_csv, "--info", info, "-o", tmp_path / "s.csv", "--age-from", "2",
               "--probs-out", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    assert rec["recipe"]["weights"] == [1.0, 0.0] and rec["recipe"]["age_from"] == 2  # the age model: not blended
    blended = marginals(pd.read_csv(tmp_path / "p.csv")[PROB_COLS].to_numpy())
    a = marginals(pd.read_csv(age_csv)[PROB_COLS].to_numpy())
    w = marginals(pd.read_csv(whole_csv)[PROB_COLS].to_numpy())
    assert np.allclose(blended["age"], a["age"], atol=1e-4)  # age from the age model
    assert np.allclose(blended["mask"], w["mask"], atol=1e-4)  # mask from the 18-class run, undiluted
    oof_age = pd.concat([pd.read_csv(f) for f in sorted(age.glob("fold*/oof.csv"))])
    want = task_scores(oof_age["label"].to_numpy(), oof_age[PROB_COLS].to_numpy(), "age")["f1"]
    assert abs(rec["cv_f1_tasks"]["age"] - want) < 1e-4  # the composed CV's age is the age run's, out of fold
    assert abs(rec["cv"][str(age.resolve())] - want) < 1e-4


def test_an_input_of_one_task_as_another_tasks_source_or_weighted_is_refused(demo_tree, task_probs, tmp_path):
    _, whole_csv, age_csv = task_probs
    info = demo_tree / "eval" / "info.csv"
    for extra, needle in ((("--age-from", "2", "--mask-from", "2"), "answers age alone, not mask"),
                          (("--age-from", "2", "--weights", "1,1"), "give it weight 0")):
        r = invoke(ensemble.app, whole_csv, age_csv, "--info", info, "-o", tmp_path / "s.csv", *extra)
        one_line(r, needle)
    r = invoke(ensemble.app, age_csv, "--info", info, "-o", tmp_path / "s.csv", "--age-from", "1")
    one_line(r, "no input answers mask or gender")
    r = invoke(ensemble.app, whole_csv, age_csv, "--info", info, "-o", tmp_path / "s.csv", "--age-from", "2",
               "--weights", "1,0")
    assert r.exit_code == 0, r.output


def test_three_task_models_make_a_submission_with_no_18_class_input(blend_runs):
    """The winners' recipe: mask, gender and age each from a model of its own."""
    tmp, _, _, truth, paths = blend_runs
    ids = pd.read_csv(tmp / "info.csv")["ImageID"]
    inputs = []
    for i, task in enumerate(TASKS):
        t = decode(truth)[i]
        q = np.full((len(truth), TASKS[task]), 0.1)
        q[np.arange(len(truth)), t] = 1.0
        q /= q.sum(1, keepdims=True)
        parts = {x: np.full((len(truth), n), 1 / n) for x, n in TASKS.items()} | {task: q}
        from maskfold.labels import joint
        p = joint(parts["mask"], parts["gender"], parts["age"])
        oof = pd.DataFrame(p, columns=PROB_COLS)
        oof.insert(0, "fold", [0] * 7 + [1] * 7)
        oof.insert(0, "label", truth)
        oof.insert(0, "path", paths)
        run = fake_run(tmp / "runs", task, oof, tmp / "work" / "folds.csv")
        for k in (0, 1):
            c = json.loads((run / f"fold{k}" / "config.json").read_text())
            (run / f"fold{k}" / "config.json").write_text(json.dumps({**c, "task": task}))
        df = pd.DataFrame(p, columns=PROB_COLS)
        df.insert(0, "ImageID", ids)
        write_probs(df, tmp / f"{task}.csv", {"task": task, "runs": [{"run": str(run), "folds": [0, 1]}]})
        inputs.append(tmp / f"{task}.csv")
    r, rec = run_ensemble(tmp, inputs, "--mask-from", "1", "--gender-from", "2", "--age-from", "3", "--truth",
                          tmp / "truth.csv")
    assert r.exit_code == 0, r.output
    assert rec["cv_f1"] == 1.0 and rec["test_f1"] == 1.0  # each task right from its own model
    assert (pd.read_csv(tmp / "sub.csv")["ans"].to_numpy() == truth).all()


def test_fitted_weights_leave_a_task_model_out_of_the_blend(demo_tree, task_probs, tmp_path):
    _, whole_csv, age_csv = task_probs
    r = invoke(ensemble.app, whole_csv, whole_csv, age_csv, "--info", demo_tree / "eval" / "info.csv", "-o",
               tmp_path / "s.csv", "--age-from", "3", "--fit-weights", "blend")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    assert rec["fit_weights"]["fitted"]["weights"][2] == 0.0


def test_runs_on_crops_and_on_whole_photos_are_matched_by_photo(blend_runs):
    """A mask model on crops, an age model on the whole photos: their out-of-fold rows name other files of the
    same photos."""
    tmp, inputs, runs, truth, paths = blend_runs
    oof = pd.concat([pd.read_csv(f) for f in sorted(runs["B"].glob("fold*/oof.csv"))]).reset_index(drop=True)
    oof["path"] = [p.replace("crops/", "images/") for p in oof["path"]]  # the same people and photos elsewhere
    run = fake_run(tmp / "runs", "W", oof, tmp / "work" / "folds.csv")
    b = pd.read_csv(inputs[1])
    write_probs(b, tmp / "W.csv", {"runs": [{"run": str(run), "folds": [0, 1]}]})
    r_moved, moved = run_ensemble(tmp, [inputs[0], tmp / "W.csv"])
    assert r_moved.exit_code == 0, r_moved.output
    assert "matched by person folder and photo name" in r_moved.output
    (tmp / "sub.csv").unlink()
    r, same = run_ensemble(tmp, inputs)
    assert r.exit_code == 0, r.output
    assert moved["cv_f1"] == same["cv_f1"] and moved["cv_inputs"] == same["cv_inputs"]


def test_pseudo_and_audit_refuse_a_task_run(demo_tree, age_run, task_probs, tmp_path):
    folds, _, age = age_run
    _, _, age_csv = task_probs
    ev = demo_tree / "eval"
    r = invoke(pseudo.app, age_csv, "--info", ev / "info.csv", "--images", ev / "images", "-o", tmp_path / "p.csv")
    one_line(r, "age-only run")
    r = invoke(audit.app, age, "--folds", folds, "-o", tmp_path / "i.csv")
    one_line(r, "age-only run")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "i.csv").exists()


def test_the_report_scores_a_task_run_by_its_task(age_run, tmp_path):
    import report

    _, whole, age = age_run
    r = invoke(report.app, whole, age, "-o", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    page = (tmp_path / "r.html").read_text()
    oof = pd.concat([pd.read_csv(f) for f in sorted(age.glob("fold*/oof.csv"))])
    cv = task_scores(oof["label"].to_numpy(), oof[PROB_COLS].to_numpy(), "age")["f1"]
    assert f">{cv:.4f}<" in page  # its CV: the age task's macro F1
    assert "task=age" in page


# ---------------------------------------------------------------- the final model: --fold all


@pytest.fixture
def final_run(tiny_run, tmp_path):
    """A copy of the session's 2-fold run, and its final model trained for 2 epochs on every person."""
    folds, run = tiny_run
    out = tmp_path / "runs"
    shutil.copytree(run, out / run.name)
    r = invoke(train.app, folds, *TINY[:4], "2", *TINY[5:], "--out", out, "--fold", "all")
    assert r.exit_code == 0, r.output
    return folds, out / run.name, r


def test_the_final_model_trains_on_every_person_without_validation(final_run):
    folds, run, r = final_run
    d = run / "fold_all"
    assert (d / "best.pt").is_file() and not (d / "oof.csv").exists()
    m = json.loads((d / "metrics.json").read_text())
    assert m["fold"] == "all" and m["f1"] is None and m["epochs_run"] == 2
    n = len(pd.read_csv(folds))
    assert f"cached {n} train + 0 val" in (d / "train.log").read_text()  # every photo trains
    assert "chose epoch" in (d / "train.log").read_text()
    assert sorted(run_folds(run).finished) == [0, 1]  # the run's K folds, without the final model
    assert json.loads((run / "config.json").read_text())["epochs"] == 1  # the run's options stay its folds'
    assert len(pd.read_csv(run.parent / "results.csv").query("fold == 'all'")) == 1


def test_the_final_model_must_train_as_its_run_did_but_its_epochs(tiny_run, final_run):
    folds, run, _ = final_run
    r = invoke(train.app, folds, *TINY, "--out", run.parent, "--fold", "all", "--lr", "0.01", "--overwrite")
    one_line(r, "lr")
    for extra, needle in ((("--patience", "2"), "--patience"), (("--avg-best", "2"), "--avg-best"),
                          (("--fold", "x"), "--fold x")):
        args = [*TINY, "--out", run.parent, "--fold", "all", *extra]
        r = invoke(train.app, folds, *args)
        one_line(r, needle)


def test_the_final_model_is_predicted_and_scored_with_its_runs_k_folds(demo_tree, final_run, tmp_path):
    _, run, _ = final_run
    ev = demo_tree / "eval"
    r = invoke(predict.app, run / "fold_all" / "best.pt", "--images", ev / "images", "--info", ev / "info.csv",
               "-o", tmp_path / "final.csv")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "final.csv.json").read_text())
    assert rec["runs"][0]["final"] is True and rec["checkpoints"][0]["epoch"] == 2
    r = invoke(ensemble.app, tmp_path / "final.csv", "--info", ev / "info.csv", "-o", tmp_path / "s.csv")
    assert r.exit_code == 0, r.output
    cv = json.loads(r.stdout.strip().splitlines()[-1])["cv_f1"]
    summary = pd.read_csv(run.parent / "summary.csv").set_index("run")
    assert abs(cv - summary.loc[run.name, "cv_f1"]) < 1e-4  # the K-fold CV
    r = invoke(pseudo.app, tmp_path / "final.csv", "--info", ev / "info.csv", "--images", ev / "images", "-o",
               tmp_path / "p.csv")
    one_line(r, "final model")


def test_the_final_model_trains_on_the_pseudo_labels_of_every_fold(tiny_run, demo_tree, tmp_path, monkeypatch):
    import maskfold.training.data as datasets

    folds, run = tiny_run
    ev = demo_tree / "eval"
    r = invoke(predict.app, run, "--images", ev / "images", "--info", ev / "info.csv", "-o", tmp_path / "probs.csv")
    assert r.exit_code == 0, r.output
    r = invoke(pseudo.app, tmp_path / "probs.csv", "--info", ev / "info.csv", "--images", ev / "images", "-o",
               tmp_path / "pseudo.csv", "--min-conf", "0")
    assert r.exit_code == 0, r.output
    made = []
    real = datasets.CachedImages
    monkeypatch.setattr(datasets, "CachedImages", lambda images, labels, *a, **kw: made.append(labels)
                        or real(images, labels, *a, **kw))
    r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--fold", "all", "--extra", tmp_path / "pseudo.csv")
    assert r.exit_code == 0, r.output
    extra = pd.read_csv(tmp_path / "pseudo.csv")
    assert (made[0][-len(extra):] == extra["label"].to_numpy()).all()  # every fold's models' answer
    r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs2", "--fold", "all", "--extra",
               tmp_path / "pseudo.csv", "--extra-soft")
    one_line(r, "--extra-soft")


# ---------------------------------------------------------------- the ordinal age term


def test_the_ordinal_age_term_charges_a_far_band_more_on_every_head():
    y = torch.tensor([0])  # class 0: mask worn, male, <30
    far, near = torch.tensor([[0.0, 0.0, 4.0]]), torch.tensor([[0.0, 4.0, 0.0]])
    for head, pad in (("age", lambda a: a), ("multi", lambda a: torch.cat([torch.zeros(1, 5), a], 1)),
                      ("single", lambda a: a.repeat(1, 6))):
        plain = losses.Criterion("ce", head, np.array([0, 1, 2]), 2.0, 0.1, [1, 1, 1])
        ordinal = losses.Criterion("ce", head, np.array([0, 1, 2]), 2.0, 0.1, [1, 1, 1], ordinal=1.0)
        assert torch.isclose(plain(pad(far), y), plain(pad(near), y))  # cross entropy: both bands alike
        assert ordinal(pad(far), y) > ordinal(pad(near), y) + 0.5  # the order counts
    assert float(losses.ordinal_age(torch.tensor([[0.0, 0, 1]]), torch.tensor([0]))) == 2.0


def test_train_applies_the_ordinal_age_term_and_refuses_it_where_no_age_is_answered(tiny_run, tmp_path, monkeypatch):
    folds, _ = tiny_run
    made = []
    real = losses.Criterion
    monkeypatch.setattr(losses, "Criterion", lambda *a, **kw: made.append(real(*a, **kw)) or made[-1])
    r = invoke(train.app, folds, *TINY, "--out", tmp_path, "--ordinal-age", "0.5", "--head", "multi")
    assert r.exit_code == 0, r.output
    assert made[0].ordinal == 0.5
    assert json.loads((tmp_path / "test_resnet" / "fold0" / "config.json").read_text())["ordinal_age"] == 0.5
    r = invoke(train.app, folds, *TINY, "--out", tmp_path, "--ordinal-age", "1", "--task", "mask", "--run-name", "m")
    one_line(r, "--ordinal-age")


def test_fitted_task_weights_choose_each_tasks_blend_among_its_models(demo_tree, task_probs, tmp_path):
    """--fit-weights task: the age blend may take the age model, the mask and gender blends never do."""
    _, whole_csv, age_csv = task_probs
    r = invoke(ensemble.app, whole_csv, age_csv, "--info", demo_tree / "eval" / "info.csv", "-o", tmp_path / "s.csv",
               "--fit-weights", "task")
    assert r.exit_code == 0, r.output
    fitted = json.loads(r.stdout.strip().splitlines()[-1])["fit_weights"]["fitted"]
    assert fitted["mask_from"][1] == 0.0 and fitted["gender_from"][1] == 0.0
    assert fitted["weights"] == [1.0, 0.0]
    r = invoke(ensemble.app, age_csv, "--info", demo_tree / "eval" / "info.csv", "-o", tmp_path / "t.csv",
               "--fit-weights", "task")
    one_line(r, "no input answers mask or gender")


@pytest.mark.slow
def test_the_final_model_resumes_after_sigkill_as_if_uninterrupted(tiny_run, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    folds, _ = tiny_run
    root = Path(__file__).resolve().parents[1]
    args = [*TINY[:4], "3", *TINY[5:], "--fold", "all", "--ema", "0.9", "--sampler", "sqrt", "--drop-rate", "0.5"]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def cli(out, *extra):
        return [sys.executable, str(root / "train.py"), str(folds), *args, "--out", str(out), *extra]

    full = subprocess.run(cli(tmp_path / "a"), capture_output=True, text=True, env=env)
    assert full.returncode == 0, full.stderr
    p = subprocess.Popen(cli(tmp_path / "b"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    last = tmp_path / "b" / "test_resnet" / "fold_all" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "train.py finished before the kill"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "b" / "test_resnet" / "fold_all" / "best.pt").exists()
    resumed = subprocess.run(cli(tmp_path / "b", "--resume"), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr, resumed.stderr
    ha, hb = (pd.read_csv(tmp_path / d / "test_resnet" / "fold_all" / "history.csv") for d in "ab")
    assert ha["train_loss"].tolist() == hb["train_loss"].tolist()
    wa, wb = (torch.load(tmp_path / d / "test_resnet" / "fold_all" / "best.pt", weights_only=True)["state_dict"]
              for d in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the same final weights (the EMA's)


def test_a_task_model_on_fixed_labels_composes_in_either_order_against_the_labels_named(blend_runs):
    """Round 2's age model (trained on fixed labels) with round 1's 18-class run: refused without --labels in
    both orders, and the same CV in both orders with it."""
    from maskfold.labels import encode, joint

    tmp, inputs, runs, truth, paths = blend_runs
    fixed = truth.copy()
    fixed[:7] = encode(fixed[:7] // 6, fixed[:7] // 3 % 2, 0)  # person 0's age band fixed to <30
    q = np.full((len(truth), 3), 0.1)
    q[np.arange(len(truth)), fixed % 3] = 0.8
    p = joint(np.full((len(truth), 3), 1 / 3), np.full((len(truth), 2), 0.5), q)
    oof = pd.DataFrame(p, columns=PROB_COLS)
    oof.insert(0, "fold", [0] * 7 + [1] * 7)
    oof.insert(0, "label", fixed)
    oof.insert(0, "path", paths)
    run = fake_run(tmp / "runs", "age_fixed", oof, tmp / "work" / "folds_fixed.csv")
    for k in (0, 1):
        c = json.loads((run / f"fold{k}" / "config.json").read_text())
        (run / f"fold{k}" / "config.json").write_text(json.dumps({**c, "task": "age"}))
    df = pd.DataFrame(p, columns=PROB_COLS)
    df.insert(0, "ImageID", pd.read_csv(tmp / "info.csv")["ImageID"])
    write_probs(df, tmp / "age.csv", {"task": "age", "runs": [{"run": str(run), "folds": [0, 1]}]})
    (tmp / "work").mkdir(exist_ok=True)
    pd.DataFrame({"path": paths, "person": [x.split("/")[1] for x in paths], "age": 40, "mask_label": fixed // 6,
                  "gender_label": fixed // 3 % 2, "label": fixed, "fold": oof["fold"]}).to_csv(
        tmp / "work" / "folds_fixed.csv", index=False)
    cvs = []
    for order, flag in (([inputs[0], tmp / "age.csv"], "2"), ([tmp / "age.csv", inputs[0]], "1")):
        r, _ = run_ensemble(tmp, order, "--age-from", flag)
        one_line(r, "trained on different labels")
        r, rec = run_ensemble(tmp, order, "--age-from", flag, "--labels", tmp / "work" / "folds_fixed.csv")
        assert r.exit_code == 0, r.output
        cvs.append(rec["cv_f1_tasks"])
        (tmp / "sub.csv").unlink()
    assert cvs[0] == cvs[1] and cvs[0]["age"] == 1.0  # scored against the fixed ages, whichever input is first
