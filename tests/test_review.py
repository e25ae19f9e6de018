"""The silent wrong answers a review of the training levers proved: optimizer settings that never reached the
optimizer, a refusal that left a half-made fold behind, a multi head trained otherwise than a single one, threads
under torchrun. Each test failed before its fix."""
import json

import pytest

import models
import train
from conftest import invoke

TINY = ["--model", "test_resnet", "--no-pretrained", "--epochs", "1", "--img-size", "32", "24", "--batch-size", "16",
        "--workers", "0", "--device", "cpu", "--oof-tta", "none"]


@pytest.fixture(scope="module")
def folds(tiny_run):
    return tiny_run[0]


@pytest.mark.parametrize("opt,kwargs,needle", [
    ("adamw", "momentum=0.9", "adamw has no setting momentum"),  # timm's factory takes it as its own and drops it
    ("sgd", "eps=1e-3", "sgd has no setting eps"),  # the factory pops eps for optimizers without one
    ("adamw", "layer_decay=0.5", "layer_decay is not an optimizer setting (--layer-decay)"),
    ("adamw", "filter_bias_and_bn=False", "filter_bias_and_bn is not an optimizer setting"),
    ("adamw", "weight_decay=0.1", "(--weight-decay)"),
])
def test_an_opt_kwarg_the_optimizer_never_gets_is_refused_before_anything_is_written(folds, tmp_path, opt, kwargs,
                                                                                      needle):
    r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--opt", opt, "--opt-kwargs", kwargs)
    assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "runs").exists()  # no half-made fold to block the run's next, correct call


def test_opt_kwargs_that_apply_reach_the_optimizer(folds, tmp_path, monkeypatch):
    from maskfold.training import trainer

    seen = []
    real = trainer.build
    monkeypatch.setattr(trainer, "build", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1])
    r = invoke(train.app, folds, *TINY, "--out", tmp_path, "--opt", "sgd", "--opt-kwargs", "momentum=0.5 foreach=False")
    assert r.exit_code == 0, r.output
    assert all(g["momentum"] == 0.5 and g["foreach"] is False for g in seen[0].opt.param_groups)


def test_a_refused_fold_leaves_nothing_and_the_run_goes_on(folds, tmp_path):
    out = tmp_path / "runs"
    r = invoke(train.app, folds, *TINY, "--out", out, "--opt-kwargs", "momentum=0.9")
    assert r.exit_code == 2
    r = invoke(train.app, folds, *TINY, "--out", out, "--fold", "1")  # the right options: fold 1 trains
    assert r.exit_code == 0, r.output
    assert not (out / "test_resnet" / "fold0").exists()


def _groups(net, layer_decay, prefix=""):
    from maskfold.training.optim import param_groups

    names = {id(p): n for n, p in net.named_parameters()}
    out = {}
    for g in param_groups(net, 0.05, layer_decay):
        for p in g["params"]:
            if names[id(p)].startswith(prefix):
                out[names[id(p)][len(prefix):]] = (g["weight_decay"], round(g.get("lr_scale", 1.0), 8))
    return out


@pytest.mark.parametrize("name", ["test_vit", "test_efficientnet"])
@pytest.mark.parametrize("layer_decay", [None, 0.7])
def test_a_multi_heads_backbone_trains_as_under_a_single_head(name, layer_decay):
    single = _groups(models.create(name, "single", False), layer_decay)
    multi = _groups(models.create(name, "multi", False), layer_decay, "backbone.")
    assert multi and all(single[k] == v for k, v in multi.items()), \
        [(k, single[k], v) for k, v in multi.items() if single[k] != v][:3]
    if name == "test_vit":
        assert multi["pos_embed"][0] == 0 and multi["cls_token"][0] == 0  # the backbone's own no-decay names
    if layer_decay:
        assert max(s for _, s in multi.values()) == pytest.approx(layer_decay)  # the heads alone at the full rate
        heads = _groups(models.create(name, "multi", False), layer_decay, "heads.")
        assert {s for _, s in heads.values()} == {1.0}


def test_threads_under_torchrun_take_a_share_of_the_cores_not_torchruns_one(monkeypatch):
    from maskfold import threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what torchrun sets for more than one process
    monkeypatch.setattr(threads, "usable_cores", lambda: 16)
    monkeypatch.setattr(threads, "parent_set_omp", lambda: False)  # torchrun's own environment had none
    n, why = threads.choose(None, workers=2, processes=4)
    assert n == 2 and "16 cores / 4 processes" in why, why
    monkeypatch.setattr(threads, "parent_set_omp", lambda: True)  # the user's own OMP_NUM_THREADS=1
    assert threads.choose(None, workers=2, processes=4) == (1, "OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "parent_set_omp", lambda: False)
    assert threads.choose(None, workers=2, processes=1) == (1, "OMP_NUM_THREADS")  # no torchrun: the user's
    assert threads.choose(3, workers=2, processes=4) == (3, "--threads")


def test_the_parent_environment_is_read_as_it_started(monkeypatch):
    """torchrun sets OMP_NUM_THREADS in its own os.environ, which /proc/<its pid>/environ does not show."""
    import os
    import subprocess
    import sys

    code = ("import os, subprocess, sys; os.environ['OMP_NUM_THREADS'] = '1'; "
            "sys.exit(subprocess.run([sys.executable, '-c', 'from maskfold import threads; "
            "print(threads.parent_set_omp())']).returncode)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=str(json.__file__ and __import__("conftest").ROOT))
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    r = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, cwd=str(__import__("conftest").ROOT))
    assert r.stdout.strip() == "True", r.stderr


# ---------------------------------------------------------------- a twin is copied only when provably the same


def _train(folds, out, *extra):
    return invoke(train.app, folds, *TINY, "--out", out, *extra)


def _copied(r) -> bool:
    assert r.exit_code == 0, r.output
    return "copied to" in r.output


@pytest.fixture(scope="module")
def two_checkpoints(folds, tmp_path_factory):
    """Two fold-0 checkpoints of the same model and split, trained with other seeds."""
    out = tmp_path_factory.mktemp("cks")
    for seed in ("1", "2"):
        assert _train(folds, out, "--run-name", f"s{seed}", "--seed", seed).exit_code == 0
    return [out / f"s{seed}" / "fold0" / "best.pt" for seed in ("1", "2")]


@pytest.mark.parametrize("option", ["--init-from", "--pretrained-file"])
def test_a_file_replaced_behind_the_same_path_is_not_a_twin(folds, tmp_path, two_checkpoints, option):
    import shutil

    import torch

    path = tmp_path / "start.pt"
    for name, ck in zip(("before", "after"), two_checkpoints):  # other weights at the same path
        if option == "--init-from":
            shutil.copy(ck, path)
        else:
            torch.save(torch.load(ck, weights_only=True)["state_dict"], path)
        r = _train(folds, tmp_path / "runs", "--run-name", name, option, path)
        assert not _copied(r)
        if name == "before":  # the same file again: a twin (so that the test can fail)
            assert _copied(_train(folds, tmp_path / "runs", "--run-name", "same", option, path))
        else:
            assert "the content of a file an option names" in r.output, r.output


def test_another_librarys_version_or_precision_is_not_a_twin(folds, tmp_path, monkeypatch):
    from maskfold.training import learning

    out = tmp_path / "runs"
    assert not _copied(_train(folds, out, "--run-name", "a"))
    assert _copied(_train(folds, out, "--run-name", "b"))
    real = learning.library_versions
    monkeypatch.setattr(learning, "library_versions", lambda: {**real(), "timm": "9.9.9"})
    r = _train(folds, out, "--run-name", "c")
    assert not _copied(r) and "a library's version" in r.output, r.output
    monkeypatch.setattr(learning, "library_versions", real)
    r = _train(folds, out, "--run-name", "d", "--amp", "--amp-dtype", "bf16")  # autocast forced on the CPU
    assert not _copied(r) and "the device or precision" in r.output, r.output


def test_photos_made_again_at_the_same_paths_are_not_a_twin(demo_tree, tmp_path):
    import shutil

    from PIL import Image, ImageOps

    import split

    tree = tmp_path / "train"
    shutil.copytree(demo_tree / "train", tree)
    folds = tmp_path / "folds.csv"
    assert invoke(split.app, tree / "train.csv", tree / "images", "-o", folds, "--folds", "2").exit_code == 0
    out = tmp_path / "runs"
    assert not _copied(_train(folds, out, "--run-name", "a"))
    photo = next((tree / "images").rglob("mask1.*"))
    ImageOps.mirror(Image.open(photo)).save(photo)  # a crop redone: same path, other pixels
    r = _train(folds, out, "--run-name", "b")
    assert not _copied(r) and "the photos' content" in r.output, r.output


@pytest.mark.slow
def test_edited_losses_py_is_not_a_twin(folds, tmp_path):
    """The code that learns is part of a fold's record: a copy of the repository with losses.py edited trains."""
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "maskfold", repo / "maskfold", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ROOT.glob("*.py"):
        shutil.copy(f, repo / f.name)
    out = tmp_path / "runs"
    assert not _copied(_train(folds, out, "--run-name", "a"))

    def run(name):
        cmd = [sys.executable, str(repo / "train.py"), str(folds), *TINY, "--out", str(out), "--run-name", name]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=repo)

    r = run("b")  # the same code at another place: a twin
    assert r.returncode == 0 and "copied to" in r.stderr, r.stderr[-2000:]
    (repo / "losses.py").write_text((repo / "losses.py").read_text() + "\nFOCAL_DEFAULT = 3.0  # a competitor's edit\n")
    r = run("c")
    assert r.returncode == 0 and "copied to" not in r.stderr and "the code" in r.stderr, r.stderr[-2000:]


def test_a_fold_from_before_the_record_is_never_a_twin(folds, tmp_path):
    out = tmp_path / "runs"
    assert not _copied(_train(folds, out, "--run-name", "old"))
    config = out / "old" / "fold0" / "config.json"
    c = json.loads(config.read_text())
    c.pop("learning", None)
    config.write_text(json.dumps(c))
    r = _train(folds, out, "--run-name", "new")
    assert not _copied(r) and "no record" in r.output, r.output


@pytest.mark.slow
def test_torchrun_copies_a_twin_once_and_every_process_ends_well(folds, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    def torchrun(name, port):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
               str(ROOT / "train.py"), str(folds), *TINY, "--out", str(tmp_path / "runs"), "--run-name", name]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    r = torchrun("a", "29541")
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun("b", "29542")
    assert r.returncode == 0 and r.stderr.count("copied to") == 1, r.stderr[-3000:]
    assert (tmp_path / "runs" / "b" / "fold0" / "metrics.json").is_file()
    r = torchrun("b", "29543")  # finished, without --skip-done: refused in one line, every process ends
    assert r.returncode != 0 and "is finished (pass --skip-done" in r.stderr, r.stderr[-3000:]


# ---------------------------------------------------------------- --init-from per fold; the final model and its run


def test_a_run_whose_folds_start_from_their_own_folds_checkpoints_is_one_run(tiny_run, tmp_path):
    folds, run = tiny_run
    out = tmp_path / "runs"
    for k in (0, 1):
        r = invoke(train.app, folds, *TINY, "--out", out, "--run-name", "b", "--fold", k, "--init-from",
                   run / f"fold{k}" / "best.pt")
        assert r.exit_code == 0, r.output
    shared = json.loads((out / "b" / "config.json").read_text())
    assert shared["init_from"] == str(run / "fold{k}" / "best.pt")
    r = invoke(train.app, "--config", out / "b" / "config.json", folds, "--out", out, "--run-name", "c", "--fold", "1",
               "--workers", "0", "--device", "cpu")  # the run's config.json starts fold 1 from fold 1's
    assert r.exit_code == 0, r.output
    assert json.loads((out / "c" / "fold1" / "config.json").read_text())["init_from"] == str(run / "fold1" / "best.pt")
    r = invoke(train.app, folds, *TINY, "--out", out, "--run-name", "c", "--fold", "0", "--init-from",
               run / "fold1" / "best.pt")  # another fold's checkpoint: not as the run's other fold started
    assert r.exit_code == 2 and "(init_from) in fold(s) 1" in r.output, r.output
    r = invoke(train.app, folds, *TINY, "--out", out, "--run-name", "e", "--fold", "0", "--init-from",
               run / "fold1" / "best.pt")  # ... and the leak check still refuses it in a run of its own
    assert r.exit_code == 2 and "leak" in r.output


@pytest.mark.parametrize("first", ["final", "folds"])
def test_the_final_model_and_its_runs_folds_agree_whichever_trains_first(folds, tmp_path, first):
    out = tmp_path / "runs"
    odd = ("--lr", "0.05", "--sampler", "balanced", "--loss", "focal")
    calls = [("all", odd), (0, ())] if first == "final" else [(0, ()), ("all", odd)]
    r = invoke(train.app, folds, *TINY, "--out", out, "--fold", calls[0][0], *calls[0][1])
    assert r.exit_code == 0, r.output
    r = invoke(train.app, folds, *TINY, "--out", out, "--fold", calls[1][0], *calls[1][1])
    assert r.exit_code == 2 and "lr" in r.output and "sampler" in r.output, r.output
    if first == "final":
        assert "all (its final model)" in r.output
        # the run's options, with epochs of its own: fold 0 agrees with the final model
        r = invoke(train.app, folds, *TINY, "--out", out, "--fold", 0, *odd, "--epochs", "2")
        assert r.exit_code == 0, r.output
    else:
        r = invoke(train.app, folds, *TINY, "--out", out, "--fold", 1, "--epochs", "2")
        assert r.exit_code == 2 and "epochs" in r.output  # the K folds share their epochs ...
        r = invoke(train.app, folds, *TINY, "--out", out, "--fold", "all", "--epochs", "2")
        assert r.exit_code == 0, r.output  # ... the final model has its own


def test_predict_refuses_a_final_model_that_trained_otherwise_than_its_folds(tiny_run, demo_tree, tmp_path):
    import shutil

    import predict

    folds, run = tiny_run
    out = tmp_path / "runs"
    shutil.copytree(run, out / run.name)
    run = out / run.name
    r = invoke(train.app, folds, *TINY[:-2], "--out", out, "--fold", "all", "--epochs", "2")  # as tiny_run trained
    assert r.exit_code == 0, r.output
    ev = demo_tree / "eval"
    args = ["--images", ev / "images", "--info", ev / "info.csv", "--tta", "none"]
    assert invoke(predict.app, run, run / "fold_all" / "best.pt", *args, "-o", tmp_path / "ok.csv").exit_code == 0
    config = run / "fold_all" / "config.json"  # as an older train.py let it be: trained with another rate
    config.write_text(json.dumps({**json.loads(config.read_text()), "lr": 0.05}))
    r = invoke(predict.app, run, run / "fold_all" / "best.pt", *args, "-o", tmp_path / "p.csv")
    assert r.exit_code == 2 and "the final model trained with other options" in r.output and "lr" in r.output
    assert not (tmp_path / "p.csv").exists()
