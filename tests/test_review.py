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
