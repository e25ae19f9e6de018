import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maskfold.labels import train_targets
from maskfold.training import trainer

import split
import train
from conftest import ROOT, ctrl_c_default, invoke

TINY = ["--model", "test_resnet", "--no-pretrained", "--epochs", "1", "--img-size", "32", "24", "--batch-size", "16",
        "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def folds(demo_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("folds") / "folds.csv"
    r = invoke(split.app, demo_tree / "train" / "train.csv", demo_tree / "train" / "images", "-o", out, "--folds", "3")
    assert r.exit_code == 0, r.output
    return out


def run_train(folds, out, *extra):
    return invoke(train.app, folds, *TINY, "--out", out, *extra)


REGISTRY = ([["--loss", name] for name in ("ce", "weighted_ce", "focal", "label_smoothing", "f1")]
            + [["--loss", name, "--head", "multi", "--task-weights", "1,0.5,2"]
               for name in ("ce", "weighted_ce", "focal", "label_smoothing", "f1")]
            + [["--optimizer", name] for name in ("sgd", "adam", "adamw", "madgrad", "adamp", "lion", "lamb")]
            + [["--scheduler", name, "--warmup-epochs", "1" if name == "cosine" else "0"]
               for name in ("none", "step", "cyclic", "cosine", "onecycle")]
            + [["--cutmix", "1", "--cutmix-mode", mode] for mode in ("box", "vertical", "half")]
            + [["--aug", name] for name in ("none", "light", "seed")]
            + [["--old-age", "58", "--amp"]])


BUILT = {"--optimizer": {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "madgrad": "MADGRAD", "adamp": "AdamP",
                         "lion": "Lion", "lamb": "Lamb"},
         "--scheduler": {"none": "LambdaLR", "step": "StepLR", "cyclic": "CyclicLR", "cosine": "SequentialLR",
                         "onecycle": "OneCycleLR"},
         "--loss": {"ce": "function", "weighted_ce": "function", "focal": "Focal", "label_smoothing": "function",
                    "f1": "SoftF1"}}


def built_names(fold) -> dict:
    """The classes train.py really built for a fold, and the parameters that tell the ce variants apart."""
    crit = fold.crit
    fn = crit.fn if crit.head == "single" else crit.fns["mask"]
    closure = {k: c.cell_contents for k, c in zip(fn.__code__.co_freevars, fn.__closure__ or ())} \
        if type(fn).__name__ == "function" else {}
    return {"--optimizer": type(fold.opt).__name__, "--scheduler": type(fold.sched).__name__,
            "--loss": type(fn).__name__, "weighted": closure.get("weight") is not None,
            "smoothing": closure.get("smoothing", 0.0)}


@pytest.mark.parametrize("extra", REGISTRY, ids=lambda e: " ".join(e))
def test_every_registry_entry_trains(folds, tmp_path, extra, monkeypatch):
    seen = []
    real = trainer.build
    monkeypatch.setattr(trainer, "build", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1])
    r = run_train(folds, tmp_path / "runs", *extra)
    assert r.exit_code == 0, r.output
    built = built_names(seen[0])
    option, name = extra[0], extra[1]
    if option in BUILT:  # the class built is the one named, not a default
        assert built[option] == BUILT[option][name], built
    if option == "--loss":
        assert built["weighted"] == (name == "weighted_ce") and (built["smoothing"] > 0) == (name == "label_smoothing")
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0 <= m["f1"] <= 1 and m["best_epoch"] == 1
    fold = tmp_path / "runs" / "test_resnet" / "fold0"
    for f in ("best.pt", "last.pt", "history.csv", "oof.csv", "metrics.json", "confusion.png", "curves.png",
              "train.log"):
        assert (fold / f).is_file(), f
    oof = pd.read_csv(fold / "oof.csv")
    assert list(oof.columns[:3]) == ["path", "label", "fold"] and (oof["fold"] == 0).all()
    assert abs(oof[[f"p{i}" for i in range(18)]].sum(axis=1) - 1).max() < 1e-4
    cfg = json.loads((tmp_path / "runs" / "test_resnet" / "config.json").read_text())
    assert cfg["loss"] == extra[1] or extra[0] != "--loss"
    ck = torch.load(fold / "best.pt", weights_only=True)
    assert ck["model"] == "test_resnet" and ck["img_size"] == [32, 24] and len(ck["mean"]) == 3
    assert pd.read_csv(tmp_path / "runs" / "results.csv").shape[0] == 1


def test_old_age_moves_training_targets_only():
    df = pd.DataFrame({"mask_label": [0, 2], "gender_label": [1, 0], "age": [58, 57], "label": [4, 13]})
    assert train_targets(df, 58).tolist() == [5, 13]
    assert train_targets(df, 60).tolist() == [4, 13]


def test_loop_skips_finished_and_refuses_other_options(folds, tmp_path):
    out = tmp_path / "runs"
    assert run_train(folds, out).exit_code == 0
    again = run_train(folds, out)
    assert again.exit_code == 2 and "--skip-done" in again.stderr
    skip = run_train(folds, out, "--skip-done")
    assert skip.exit_code == 0 and json.loads(skip.stdout.strip().splitlines()[-1])["fold"] == 0
    other = run_train(folds, out, "--fold", "1", "--loss", "focal")
    assert other.exit_code == 2 and "other options (loss)" in other.stderr
    assert pd.read_csv(out / "results.csv").shape[0] == 1


@pytest.mark.parametrize("args,needle", [
    (["--loss", "focall"], "did you mean focal"),
    (["--optimizer", "adamx"], "--optimizer adamx: unknown; choose from"),
    (["--opt-kwargs", "betas"], "is not key=value"),
    (["--layer-decay", "1.5"], "--layer-decay must be in (0, 1]"),
    (["--epoch-fraction", "0"], "--epoch-fraction must be in (0, 1]"),
    (["--avg-best", "1"], "--avg-best 0 (off) or 2 and more"),
    (["--scheduler", "cosin"], "did you mean cosine"),
    (["--fold", "7"], "--fold 7"),
    (["--model", "resnet_18"], "closest: resnet18"),
])
def test_bad_options_one_line(folds, tmp_path, args, needle):
    r = run_train(folds, tmp_path / "runs", *args)
    assert r.exit_code == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "runs").exists()


def test_leaky_folds_refused(folds, tmp_path):
    df = pd.read_csv(folds)
    first = df["person"].iloc[0]
    df.loc[df.index[(df["person"] == first)][0], "fold"] = (df.loc[df["person"] == first, "fold"].iloc[0] + 1) % 3
    leaky = folds.parent / "leaky.csv"
    df.to_csv(leaky, index=False)
    r = invoke(train.app, leaky, *TINY, "--out", tmp_path / "runs")
    assert r.exit_code == 2 and "more than one fold" in r.stderr


def _cli(folds, out, *extra):
    return [sys.executable, str(ROOT / "train.py"), str(folds), *TINY, "--out", str(out), *extra]


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(folds, tmp_path):
    """With dropout, loader workers and an EMA: each draws randomness that a resumed session must replay."""
    args = ["--epochs", "3", "--batch-size", "8", "--img-size", "48", "36", "--workers", "2", "--aug", "seed",
            "--drop-rate", "0.5", "--ema", "0.9", "--sampler", "sqrt", "--epoch-fraction", "0.8", "--avg-best", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = subprocess.run(_cli(folds, tmp_path / "a", *args), capture_output=True, text=True, env=env)
    assert full.returncode == 0, full.stderr
    p = subprocess.Popen(_cli(folds, tmp_path / "b", *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=env)
    last = tmp_path / "b" / "test_resnet" / "fold0" / "last.pt"  # renamed into place after epoch 1
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "train.py finished before the kill"
    p.send_signal(signal.SIGKILL)  # mid-run: after epoch 1 was saved
    p.wait()
    assert not (tmp_path / "b" / "test_resnet" / "fold0" / "metrics.json").exists()
    again = subprocess.run(_cli(folds, tmp_path / "b", *args), capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = subprocess.run(_cli(folds, tmp_path / "b", *args, "--resume"), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    ma, mb = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (full, resumed))
    for k in ("f1", "acc", "best_epoch", "val_loss", "avg_best"):
        assert ma[k] == mb[k], k
    assert len(ma["avg_best"]["epochs"]) == 2  # the average of the two best epochs, the same after the kill
    ha, hb = (pd.read_csv(tmp_path / d / "test_resnet" / "fold0" / "history.csv") for d in "ab")
    assert ha["train_loss"].tolist() == hb["train_loss"].tolist()  # the same dropout masks in every epoch
    oa, ob = (pd.read_csv(tmp_path / d / "test_resnet" / "fold0" / "oof.csv") for d in "ab")
    pd.testing.assert_frame_equal(oa, ob)


@pytest.mark.slow
def test_torchrun_two_processes_gloo(folds, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533"]
    r = subprocess.run(torchrun + [str(ROOT / "train.py"), str(folds), *TINY, "--out", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    fold = tmp_path / "runs" / "test_resnet" / "fold0"
    m = json.loads((fold / "metrics.json").read_text())
    assert m["fold"] == 0 and 0 <= m["f1"] <= 1
    assert m["img_per_s"] is not None and m["img_per_s"] > 0  # a share of a few batches per process is timed too
    assert "x2" in (fold / "train.log").read_text()
    assert len(pd.read_csv(fold / "oof.csv")) == len(pd.read_csv(folds).query("fold == 0"))
    # the effective batch is 2 x 16 there: a single process cannot add fold 1 with 16 to the same run
    r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--fold", "1")
    assert r.exit_code == 2 and "processes" in r.output, r.output


@pytest.mark.slow
def test_torchrun_early_stop_ends_every_process_together(folds, tmp_path):
    """--patience under torchrun: rank 0 alone knows the best epoch; every rank must stop with it. With a
    learning rate of 0 the val F1 never improves on epoch 1, so the fold stops after epoch 2."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29534"]
    r = subprocess.run(torchrun + [str(ROOT / "train.py"), str(folds), *TINY, "--out", str(tmp_path / "runs"),
                                   "--epochs", "5", "--patience", "1", "--lr", "0", "--aug", "none"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    fold = tmp_path / "runs" / "test_resnet" / "fold0"
    assert "early stop" in (fold / "train.log").read_text()
    assert json.loads((fold / "metrics.json").read_text())["epochs_run"] == 2


def _metrics(folds, out, *extra):
    r = run_train(folds, out, "--epochs", "2", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1]), pd.read_csv(out / "test_resnet" / "fold0" / "history.csv")


KEYS = ("f1", "val_loss")


@pytest.mark.parametrize("neutral,active", [
    (["--loss", "focal", "--focal-gamma", "0"], ["--loss", "focal", "--focal-gamma", "5"]),
    (["--loss", "label_smoothing", "--smoothing", "0"], ["--loss", "label_smoothing", "--smoothing", "0.4"]),
    (["--drop-rate", "0"], ["--drop-rate", "0.7"]),
    (["--cutmix", "1", "--cutmix-alpha", "1"], ["--cutmix", "1", "--cutmix-alpha", "0.05"]),
    (["--mixup", "1", "--mixup-alpha", "0.4"], ["--mixup", "1", "--mixup-alpha", "8"]),
], ids=["focal-gamma", "smoothing", "drop-rate", "cutmix-alpha", "mixup-alpha"])
def test_loss_and_regularisation_options_change_training(folds, tmp_path, neutral, active):
    base, _ = _metrics(folds, tmp_path / "base", *neutral)
    again, _ = _metrics(folds, tmp_path / "again", *neutral)
    other, _ = _metrics(folds, tmp_path / "other", *active)
    assert [base[k] for k in KEYS] == [again[k] for k in KEYS]  # deterministic, so a difference is the option's
    assert [base[k] for k in KEYS] != [other[k] for k in KEYS]
    if neutral[1] in ("focal", "label_smoothing"):  # gamma 0 / smoothing 0 are plain cross entropy
        ce, _ = _metrics(folds, tmp_path / "ce", "--loss", "ce")
        assert [ce[k] for k in KEYS] == [base[k] for k in KEYS]


def test_step_scheduler_options_set_the_learning_rate(folds, tmp_path):
    _, hist = _metrics(folds, tmp_path / "r", "--scheduler", "step", "--step-size", "1", "--step-gamma", "0.1",
                       "--lr", "0.01")
    assert hist["lr"].tolist() == pytest.approx([0.01, 0.001])


@pytest.mark.parametrize("flags,compiled,layout", [
    ([], False, torch.channels_last),
    (["--compile", "--no-channels-last"], True, torch.contiguous_format),
])
def test_compile_and_memory_format_options_reach_the_model(folds, tmp_path, monkeypatch, flags, compiled, layout):
    """--compile hands the model to torch.compile (spied: compiling takes minutes on a CPU) and
    --no-channels-last keeps the weights and every batch in the default layout."""
    calls, seen = [], []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: calls.append(net) or net)
    real = trainer.to_input

    def spy(x, mean, std, device, channels_last=True):
        out = real(x, mean, std, device, channels_last)
        seen.append(out.is_contiguous(memory_format=layout))
        return out

    monkeypatch.setattr(trainer, "to_input", spy)
    r = run_train(folds, tmp_path / "runs", *flags)
    assert r.exit_code == 0, r.output
    assert len(calls) == int(compiled) and seen and all(seen)
    if compiled:
        conv = next(m for m in calls[0].modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous()  # not converted to channels_last


def test_a_fold_with_other_options_is_refused_even_with_overwrite(folds, tmp_path):
    out = tmp_path / "runs"
    assert run_train(folds, out).exit_code == 0
    assert run_train(folds, out, "--fold", "1").exit_code == 0
    r = run_train(folds, out, "--fold", "1", "--loss", "focal", "--overwrite")
    assert r.exit_code == 2 and "fold(s) 0" in r.stderr and "(loss)" in r.stderr, r.stderr
    cfg = json.loads((out / "test_resnet" / "fold1" / "config.json").read_text())
    assert cfg["loss"] == "weighted_ce"  # untouched (the default)
    assert run_train(folds, out, "--fold", "1", "--overwrite").exit_code == 0  # same options: redone


def test_predict_refuses_a_run_whose_folds_differ_and_names_a_partial_run(folds, tmp_path):
    import predict
    from conftest import ROOT  # noqa: F401
    out = tmp_path / "runs"
    assert run_train(folds, out).exit_code == 0
    run = out / "test_resnet"
    demo = folds.parent.parent
    images = next(p for p in (Path(str(folds)).parents[2].rglob("eval/images")))
    info = images.parent / "info.csv"
    r = invoke(predict.app, run, "--images", images, "--info", info, "-o", tmp_path / "p.csv", "--device", "cpu")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["runs"][0]["partial"] is True and s["runs"][0]["folds"] == [0] and s["runs"][0]["of"] == 3
    assert "partial run: 1 of 3 folds finished (fold 0; missing 1, 2" in r.stderr
    assert run_train(folds, out, "--fold", "1").exit_code == 0
    cfg = json.loads((run / "fold1" / "config.json").read_text())
    cfg.update(head="multi", loss="focal")  # as an older version's --overwrite left it
    (run / "fold1" / "config.json").write_text(json.dumps(cfg))
    r = invoke(predict.app, run, "--images", images, "--info", info, "-o", tmp_path / "q.csv", "--device", "cpu")
    assert r.exit_code == 2 and "fold(s) 1 were trained with other options than fold 0 (head, loss)" in r.stderr
    assert not (tmp_path / "q.csv").exists() and demo


def test_a_corrupt_config_is_named_as_such(folds, tmp_path):
    out = tmp_path / "runs"
    assert run_train(folds, out).exit_code == 0
    (out / "test_resnet" / "fold0" / "config.json").write_text("{ not json")
    r = run_train(folds, out, "--fold", "1")
    assert r.exit_code == 2 and "fold0/config.json: unreadable" in r.stderr and "task-weights" not in r.stderr


@pytest.mark.slow
def test_ctrl_c_ends_in_one_line_that_says_how_to_resume(folds, tmp_path):
    args = ["--epochs", "4", "--batch-size", "8", "--img-size", "48", "36", "--workers", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(_cli(folds, tmp_path, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, preexec_fn=ctrl_c_default)
    last = tmp_path / "test_resnet" / "fold0" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "train.py finished before Ctrl-C"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGINT and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted in epoch") and "--resume" in err
    r = subprocess.run(_cli(folds, tmp_path, *args, "--resume"), capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "resumed from" in r.stderr


@pytest.mark.slow
def test_ctrl_c_stops_the_shell_loop_over_folds(folds, tmp_path):
    """The README's loop, `for k in 0 1; do python train.py ... --fold $k; done`, in a real bash, Ctrl-C sent to
    its process group as a terminal sends it: the loop ends at once, fold 1 never starts."""
    args = " ".join(shlex.quote(str(a)) for a in _cli(folds, tmp_path, "--epochs", "4", "--batch-size", "8",
                                                            "--img-size", "48", "36", "--workers", "2"))
    loop = f"for k in 0 1; do {args} --fold $k; done; echo loop went on"
    p = subprocess.Popen(["bash", "-c", loop], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True, preexec_fn=ctrl_c_default)
    last = tmp_path / "test_resnet" / "fold0" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "fold 0 finished before Ctrl-C"
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert "loop went on" not in out and not (tmp_path / "test_resnet" / "fold1").exists(), err
    assert p.returncode in (-signal.SIGINT, 130) and "error: interrupted in epoch" in err and "Traceback" not in err


def test_fp16_on_a_device_without_bf16_goes_through_the_gradient_scaler(folds, tmp_path, monkeypatch):
    """--amp-dtype fp16 (what --amp picks on a V100 or T4): every optimizer step is scaled, stepped and updated
    by the GradScaler; --amp alone on a CPU says in one line that it is off."""
    calls = []

    class Spy(torch.amp.GradScaler):
        def scale(self, outputs):
            calls.append("scale")
            return super().scale(outputs)

        def step(self, optimizer, *a, **kw):
            calls.append("step")
            return super().step(optimizer, *a, **kw)

        def update(self, *a, **kw):
            calls.append("update")
            return super().update(*a, **kw)

    monkeypatch.setattr(torch.amp, "GradScaler", Spy)
    r = run_train(folds, tmp_path / "a", "--amp", "--amp-dtype", "fp16", "--batch-size", "32")
    assert r.exit_code == 0, r.output
    steps = len(pd.read_csv(folds).query("fold != 0")) // 32
    assert calls == ["scale", "step", "update"] * steps
    assert "fp16 autocast with a gradient scaler, forced on a CPU" in r.stderr
    calls.clear()
    r = run_train(folds, tmp_path / "b", "--amp")
    assert r.exit_code == 0 and calls == [] and "--amp: off on a CPU" in r.stderr


def test_ema_is_validated_kept_when_it_wins_and_resumable(folds, tmp_path):
    r = run_train(folds, tmp_path, "--ema", "0.5", "--epochs", "3")
    assert r.exit_code == 0, r.output
    fold = tmp_path / "test_resnet" / "fold0"
    hist = pd.read_csv(fold / "history.csv")
    assert "val_f1_ema" in hist.columns and hist["val_f1_ema"].notna().all()
    last = torch.load(fold / "last.pt", weights_only=True)
    assert last["ema_state"] is not None
    assert any(not torch.equal(last["ema_state"][k], v) for k, v in last["state_dict"].items() if v.is_floating_point())
    best = torch.load(fold / "best.pt", weights_only=True)
    m = json.loads((fold / "metrics.json").read_text())
    won = hist.loc[hist["epoch"] == m["best_epoch"]].iloc[0]
    assert best["ema"] == m["best_is_ema"] == bool(won["val_f1_ema"] > won["val_f1"])
    assert m["f1"] == round(max(won["val_f1"], won["val_f1_ema"]), 5)


def test_mixup_and_cutmix_share_one_mechanism(folds, tmp_path, monkeypatch):
    from maskfold.training import mixing
    kinds, real = [], trainer.mix
    monkeypatch.setattr(trainer, "mix", lambda kind, *a: kinds.append(kind) or real(kind, *a))
    assert run_train(folds, tmp_path / "a", "--mixup", "1").exit_code == 0
    assert kinds and set(kinds) == {"mixup"}
    kinds.clear()
    assert run_train(folds, tmp_path / "b", "--mixup", "0.5", "--cutmix", "0.5", "--epochs", "3").exit_code == 0
    assert set(kinds) == {"mixup", "cutmix"}
    x, y = torch.rand(6, 3, 8, 8), torch.arange(6)
    mixed, ya, yb, lam = mixing.mixup(x, y, 0.4, torch.Generator().manual_seed(0))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[yb]) and torch.equal(ya, y) and 0 < lam < 1


def test_accumulation_and_clipping_reach_the_optimizer(folds, tmp_path, monkeypatch):
    steps, norms = [], []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, max_norm, **kw: norms.append(max_norm)
                        or real_clip(p, max_norm, **kw))
    real_step = trainer.optimizer_step
    monkeypatch.setattr(trainer, "optimizer_step", lambda fold: steps.append(1) or real_step(fold))
    r = run_train(folds, tmp_path, "--accum-steps", "3", "--clip-grad", "0.5", "--batch-size", "16")
    assert r.exit_code == 0, r.output
    batches = len(pd.read_csv(folds).query("fold != 0")) // 16
    assert len(steps) == -(-batches // 3) and norms == [0.5] * len(steps)


def test_init_from_starts_with_the_checkpoints_weights_and_refuses_another_model(folds, tmp_path):
    assert run_train(folds, tmp_path / "a").exit_code == 0
    source = tmp_path / "a" / "test_resnet" / "fold0" / "best.pt"
    r = run_train(folds, tmp_path / "b", "--init-from", source, "--lr", "0", "--img-size", "40", "32")
    assert r.exit_code == 0, r.output
    before = torch.load(source, weights_only=True)["state_dict"]
    after = torch.load(tmp_path / "b" / "test_resnet" / "fold0" / "best.pt", weights_only=True)["state_dict"]
    net = __import__("models").create("test_resnet", "single", pretrained=False)
    params = {k for k, _ in net.named_parameters()}
    assert all(torch.equal(before[k], after[k]) for k in params)  # lr 0: the weights it started from
    r = invoke(train.app, folds, *TINY[2:], "--model", "test_efficientnet", "--out", tmp_path / "c", "--init-from",
               source)
    assert r.exit_code == 2 and "a checkpoint of test_resnet (single head), not of this run's test_efficientnet" \
        in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_patience_stops_early_and_still_finishes_the_fold(folds, tmp_path):
    # lr 0 and no batch norm: the weights never change, so the val F1 never betters epoch 1's
    r = invoke(train.app, folds, *TINY[2:], "--model", "test_convnext", "--out", tmp_path, "--lr", "0", "--epochs",
               "6", "--patience", "1", "--img-size", "64", "48")
    assert r.exit_code == 0, r.output
    fold = tmp_path / "test_convnext" / "fold0"
    m = json.loads((fold / "metrics.json").read_text())
    assert m["epochs_run"] == 2 and len(pd.read_csv(fold / "history.csv")) == 2
    for f in ("best.pt", "last.pt", "oof.csv", "confusion.png", "curves.png"):
        assert (fold / f).is_file()
    assert "early stop" in (fold / "train.log").read_text()


def test_timm_style_aliases(folds, tmp_path):
    r = invoke(train.app, folds, "--model", "test_resnet", "--no-pretrained", "--epochs", "1", "--img-size", "32",
               "24", "--device", "cpu", "--out", tmp_path, "--opt", "sgd", "--sched", "step", "-b", "8", "-j", "0")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "test_resnet" / "fold0" / "config.json").read_text())
    assert (cfg["optimizer"], cfg["scheduler"], cfg["batch_size"], cfg["workers"]) == ("sgd", "step", 8, 0)


def test_tensorboard_and_wandb_offline_get_every_epoch_and_a_batch(folds, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    r = run_train(folds, tmp_path, "--epochs", "2", "--cutmix", "1", "--ema", "0.9", "--wandb", "maskfold-tests")
    assert r.exit_code == 0, r.output
    fold = tmp_path / "test_resnet" / "fold0"
    events = EventAccumulator(str(fold / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    for tag in ("loss/train", "loss/val", "f1/val", "f1/val_ema", "f1_task/mask", "lr", "speed/img_per_s"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2], tag
    hist = pd.read_csv(fold / "history.csv")
    assert [e.value for e in events.Scalars("f1/val")] == pytest.approx(hist["val_f1"].tolist(), abs=1e-6)
    assert tags["images"] == ["train/batch"]
    runs = list((fold / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and all(t.encode() in runs[0].read_bytes() for t in ("f1/val", "loss/train"))


def test_wandb_without_the_package_is_one_line(folds, tmp_path, monkeypatch):
    import sys as _sys
    monkeypatch.setitem(_sys.modules, "wandb", None)  # as if not installed
    r = run_train(folds, tmp_path / "runs", "--wandb", "p")
    assert r.exit_code == 2 and "pip install wandb" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_results_and_summary_compare_runs(folds, tmp_path):
    out = tmp_path / "runs"
    for k in (0, 1):
        assert run_train(folds, out, "--fold", k).exit_code == 0
    assert run_train(folds, out, "--run-name", "lr01", "--lr", "0.01").exit_code == 0
    res = pd.read_csv(out / "results.csv")
    assert {"lr", "batch_size", "img_size", "seed", "old_age", "ema", "mixup", "f1_mask"} <= set(res.columns)
    assert res["lr"].tolist() == [0.003, 0.003, 0.01] and res["img_size"].tolist() == ["32x24"] * 3
    assert res["loss"].tolist() == ["weighted_ce"] * 3  # the defaults the fine-tuning study chose
    summ = pd.read_csv(out / "summary.csv").set_index("run")
    assert summ.loc["test_resnet", "folds"] == 2 and summ.loc["test_resnet", "of"] == 3
    oof = pd.concat([pd.read_csv(out / "test_resnet" / f"fold{k}" / "oof.csv") for k in (0, 1)])
    from maskfold.labels import PROB_COLS, scores
    assert summ.loc["test_resnet", "cv_f1"] == pytest.approx(scores(oof["label"], oof[PROB_COLS].to_numpy()
                                                                    .argmax(1))["f1"], abs=1e-5)
    assert summ.loc["test_resnet", "f1_mean"] == pytest.approx(res["f1"][:2].mean(), abs=1e-5)


def test_pretrained_weights_out_of_reach_end_in_one_line(folds, tmp_path):
    """--pretrained with no hub at hand (offline, empty caches): one line that says what to do, exit 2, no
    fold written; a --pretrained that were ignored would train from scratch and pass."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"),
               NO_ALBUMENTATIONS_UPDATE="1")
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), str(folds), "--model", "resnet18", "--pretrained",
                        "--epochs", "1", "--img-size", "32", "24", "--workers", "0", "--device", "cpu",
                        "--out", str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        "error: --model resnet18: could not load pretrained weights"), r.stderr
    assert "--no-pretrained" in r.stderr and not list((tmp_path / "runs").rglob("*.pt"))


def test_pretrained_out_of_reach_without_offline_mode_fails_at_once(folds, tmp_path):
    """The hub unreachable and HF_HUB_OFFLINE unset (a new user's machine without internet): one line naming
    --pretrained-file, without the hub client's minute of retries."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"), NO_ALBUMENTATIONS_UPDATE="1")
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), str(folds), "--model", "resnet18", "--epochs", "1",
                        "--img-size", "32", "24", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "runs")],
                       env=env, capture_output=True, text=True, timeout=300)
    if r.returncode == 0:
        pytest.skip("the hub is reachable from this machine")
    assert r.returncode == 2 and "--pretrained-file" in r.stderr.strip().splitlines()[-1], r.stderr
    assert "retry" not in r.stderr.lower() and len(r.stderr.strip().splitlines()) <= 3, r.stderr


def test_pretrained_file_gives_the_backbone_its_weights(folds, tmp_path, monkeypatch):
    import timm
    import torch

    import models

    source = timm.create_model("test_resnet", pretrained=False)
    with torch.no_grad():
        for w in source.parameters():
            w.fill_(0.0125)
    weights = tmp_path / "test_resnet_in1k.pth"
    torch.save(source.state_dict(), weights)
    net = models.create("test_resnet", "multi", pretrained=False, pretrained_file=weights)
    stem = net.backbone.conv1[0].weight if isinstance(net.backbone.conv1, torch.nn.Sequential) else \
        net.backbone.conv1.weight
    assert torch.all(stem == 0.0125)
    seen = []
    real = models.create
    monkeypatch.setattr(models, "create", lambda *a, **kw: seen.append(a) or real(*a, **kw))
    r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--pretrained-file", weights)
    assert r.exit_code == 0, r.output
    assert seen[0][4] == weights  # name, head, pretrained, drop_rate, pretrained_file
    r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs2", "--pretrained-file", tmp_path / "none.pth")
    assert r.exit_code == 2 and "--pretrained-file" in r.output


@pytest.mark.parametrize("flag,tta", [("flip", "flip"), ("none", "none"), ("flip,scale", "flip,scale")])
def test_oof_is_written_with_the_tta_the_submission_gets(folds, tmp_path, flag, tta):
    from maskfold.images import load_cache
    from maskfold.prediction import inference

    import predict

    r = run_train(folds, tmp_path / "runs", "--oof-tta", flag)
    assert r.exit_code == 0, r.output
    fold = tmp_path / "runs" / "test_resnet" / "fold0"
    oof = pd.read_csv(fold / "oof.csv")
    net, ck = predict.load_model(fold / "best.pt", "cpu")
    images = load_cache([str(folds.parent / p) for p in oof["path"]], tuple(ck["img_size"]))
    p = inference.predict_probs(net, ck["head"], images, ck["mean"], ck["std"], "cpu", 8, None, tta=tta)
    assert np.allclose(oof[[f"p{i}" for i in range(18)]].to_numpy(), p, atol=1e-5)
    other = inference.predict_probs(net, ck["head"], images, ck["mean"], ck["std"], "cpu", 8, None,
                                    tta="flip,shift" if tta == "none" else "none")
    assert not np.allclose(oof[[f"p{i}" for i in range(18)]].to_numpy(), other, atol=1e-5)
