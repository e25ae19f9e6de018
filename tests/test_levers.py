"""The winners' levers in train.py: --sampler and --epoch-fraction, timm's optimizers with --opt-kwargs and
--layer-decay, --drop-path, --avg-best. Each test fails if its option is accepted and ignored."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from maskfold.training import averaging, data, trainer
from maskfold.training.data import EpochSampler, sampling_weights

import train
from conftest import invoke

TINY = ["--model", "test_resnet", "--no-pretrained", "--epochs", "1", "--img-size", "32", "24", "--batch-size", "16",
        "--workers", "0", "--device", "cpu", "--oof-tta", "none"]


@pytest.fixture(scope="module")
def folds(tiny_run):
    return tiny_run[0]  # the session's 2-fold folds.csv of the demo tree


def trained(folds, out, monkeypatch, *extra):
    """Train fold 0; the Fold train.py built, and its result line."""
    seen = []
    real = trainer.build
    monkeypatch.setattr(trainer, "build", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1])
    r = invoke(train.app, folds, *TINY, "--out", out, *extra)
    assert r.exit_code == 0, r.output
    return seen[0], json.loads(r.stdout.strip().splitlines()[-1])


def test_samplers_draw_by_class_as_named():
    targets = np.array([0] * 90 + [1] * 10)
    share = {}
    for kind in ("uniform", "balanced", "sqrt"):
        s = EpochSampler(100, weights=sampling_weights(targets, kind), draws=20_000 if kind != "uniform" else None)
        s.set_epoch(0, 5)
        drawn = targets[[i for _, i in s]]
        share[kind] = (drawn == 0).mean()
    assert share["uniform"] == 0.9  # each photo once
    assert abs(share["balanced"] - 0.5) < 0.02  # each class as often
    assert abs(share["sqrt"] - 90 ** 0.5 / (90 ** 0.5 + 10 ** 0.5)) < 0.02  # 0.75: half way


def test_a_draw_is_seeded_shared_between_processes_and_cut_by_the_fraction():
    w = sampling_weights(np.array([0] * 30 + [1] * 10), "balanced")
    one = EpochSampler(40, weights=w, draws=30)
    one.set_epoch(3, 77)
    whole = [i for _, i in one]
    ranks = []
    for rank in (0, 1):
        s = EpochSampler(40, weights=w, draws=30, rank=rank, world=2)
        s.set_epoch(3, 77)
        ranks.append([i for _, i in s])
        assert len(ranks[-1]) == len(s) == 15
    assert ranks[0] == whole[0::2] and ranks[1] == whole[1::2]  # one draw, each slot to one process
    again = EpochSampler(40, weights=w, draws=30)
    again.set_epoch(3, 77)
    assert [i for _, i in again] == whole  # a resumed epoch draws the same photos
    again.set_epoch(4, 78)
    assert [i for _, i in again] != whole
    part = EpochSampler(40, draws=10)
    part.set_epoch(0, 1)
    order = [i for _, i in part]
    assert len(order) == len(set(order)) == 10  # uniform with a fraction: a tenth... without repeats


def test_balanced_sampler_reaches_training(folds, tmp_path, monkeypatch):
    drawn = {}
    real = data.CachedImages.__getitem__

    def spy(self, key):
        drawn.setdefault(run, []).append(int(self.labels[key[1]]))
        return real(self, key)

    monkeypatch.setattr(data.CachedImages, "__getitem__", spy)
    for run in ("uniform", "balanced"):
        fold, _ = trained(folds, tmp_path, monkeypatch, "--sampler", run, "--run-name", run)
    wear = {k: np.mean(np.array(v) < 6) for k, v in drawn.items()}  # classes 0-5: mask worn (5 of 7 photos)
    assert wear["uniform"] > 0.65 and wear["balanced"] < 0.5, wear
    cfg = json.loads((tmp_path / "balanced" / "config.json").read_text())
    assert cfg["sampler"] == "balanced"


def test_epoch_fraction_cuts_the_steps(folds, tmp_path, monkeypatch):
    whole, _ = trained(folds, tmp_path, monkeypatch, "--batch-size", "4", "--run-name", "whole")
    half, _ = trained(folds, tmp_path, monkeypatch, "--batch-size", "4", "--epoch-fraction", "0.5", "--run-name", "h")
    assert half.steps == round(whole.steps / 2) or abs(half.steps - whole.steps / 2) <= 1, (half.steps, whole.steps)


def test_timm_optimizer_with_its_settings_and_layer_decay(folds, tmp_path, monkeypatch):
    fold, _ = trained(folds, tmp_path, monkeypatch, "--opt", "lion", "--opt-kwargs", "betas=(0.8,0.9)", "--lr",
                      "1e-3", "--head", "multi", "--run-name", "lion")
    assert type(fold.opt).__name__ == "Lion" and all(g["betas"] == (0.8, 0.9) for g in fold.opt.param_groups)
    decays = {g["weight_decay"] for g in fold.opt.param_groups}
    assert decays == {0.0, 1e-4}  # biases and norms are not decayed
    plain_lrs = {g["initial_lr"] for g in fold.opt.param_groups}
    assert plain_lrs == {1e-3}
    fold, _ = trained(folds, tmp_path, monkeypatch, "--layer-decay", "0.5", "--lr", "1e-3", "--head", "multi",
                      "--run-name", "ld")
    lrs = sorted({round(g["initial_lr"], 10) for g in fold.opt.param_groups})
    assert len(lrs) >= 3 and lrs[-1] == 1e-3 and lrs[0] < 1e-3 * 0.5 ** 2  # each layer down at half the rate above
    heads = {id(p) for p in fold.net.heads.parameters()}
    assert all(g["initial_lr"] == 1e-3 for g in fold.opt.param_groups if heads & {id(p) for p in g["params"]})
    r = invoke(train.app, folds, *TINY, "--out", tmp_path, "--opt", "lion", "--opt-kwargs", "momentum_x=1",
               "--run-name", "bad")
    assert r.exit_code == 2 and "--opt-kwargs momentum_x=1: lion refuses it" in r.output, r.output


def test_drop_path_reaches_the_blocks(folds, tmp_path, monkeypatch):
    from timm.layers import DropPath

    fold, _ = trained(folds, tmp_path, monkeypatch, "--drop-path", "0.2", "--run-name", "dp")
    rates = [m.drop_prob for m in fold.net.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.2)
    plain, _ = trained(folds, tmp_path, monkeypatch, "--run-name", "nodp")
    assert not [m for m in plain.net.modules() if isinstance(m, DropPath) and m.drop_prob > 0]


def test_average_of_states():
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(4)}
    b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}
    out = averaging.average([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and out["n"] == 4


@pytest.mark.parametrize("better", [True, False])
def test_avg_best_becomes_the_checkpoint_only_when_it_validates_better(folds, tmp_path, monkeypatch, better):
    kept_states = []
    real_avg, real_val = averaging.averaged_net, trainer.validate

    def spy_avg(fold):
        kept_states.extend(s for _, _, s in fold.top)
        return real_avg(fold)

    def val(fold, images, labels, ema=False, tta=False, net=None):
        v, p = real_val(fold, images, labels, ema=ema, tta=tta, net=net)
        if net is not None:  # the average: told to validate better (or worse) than any epoch
            v = dict(v, val_f1=1.0 if better else -1.0)
        return v, p

    monkeypatch.setattr(averaging, "averaged_net", spy_avg)
    monkeypatch.setattr(trainer, "validate", val)
    fold, m = trained(folds, tmp_path, monkeypatch, "--epochs", "3", "--avg-best", "2", "--run-name", str(better))
    assert len(kept_states) == 2 and m["avg_best"]["kept"] is better and len(m["avg_best"]["epochs"]) == 2
    ck = torch.load(tmp_path / str(better) / "fold0" / "best.pt", weights_only=True)
    mean = averaging.average(kept_states)
    same = all(torch.allclose(ck["state_dict"][k].double(), mean[k].double()) for k in mean)
    assert same is better
    assert (m["f1"] == 1.0) is better
    assert ("averaged_epochs" in ck) is better
    oof = pd.read_csv(tmp_path / str(better) / "fold0" / "oof.csv")
    assert len(oof) > 0


def test_a_config_carries_the_levers_to_the_next_round_and_the_fold_they_build(folds, tmp_path, monkeypatch):
    """Round 2 from round 1's config.json (as the README's recipe does): the levers are the same options, and the
    fold built from them has them; a run's folds that differ in one are refused."""
    levers = ["--sampler", "sqrt", "--epoch-fraction", "0.5", "--avg-best", "2", "--opt", "adamp", "--opt-kwargs",
              "betas=(0.8,0.9)", "--layer-decay", "0.7", "--drop-path", "0.1", "--epochs", "2"]
    trained(folds, tmp_path, monkeypatch, *levers, "--run-name", "r1")
    seen = []
    real = trainer.build
    monkeypatch.setattr(trainer, "build", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1])
    r = invoke(train.app, "--config", tmp_path / "r1" / "config.json", "--out", tmp_path, "--run-name", "r2",
               "--fold", "1", "--workers", "0", "--device", "cpu")
    assert r.exit_code == 0, r.output
    a, b = (json.loads((tmp_path / run / f"fold{k}" / "config.json").read_text()) for run, k in (("r1", 0), ("r2", 1)))
    for key in ("sampler", "epoch_fraction", "avg_best", "optimizer", "opt_kwargs", "layer_decay", "drop_path"):
        assert a[key] == b[key], key
    fold = seen[0]
    assert type(fold.opt).__name__ == "AdamP" and fold.opt.param_groups[0]["betas"] == (0.8, 0.9)
    assert fold.cfg.sampler == "sqrt" and fold.cfg.avg_best == 2
    assert json.loads(r.stdout.strip().splitlines()[-1])["avg_best"]["epochs"] == [1, 2]
    other = invoke(train.app, folds, *TINY, "--out", tmp_path, "--run-name", "r1", "--fold", "1",
                   *[x if x != "sqrt" else "balanced" for x in levers])
    assert other.exit_code == 2 and "other options (sampler)" in other.output, other.output
