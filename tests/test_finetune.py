"""Fine-tuning as the users do: real ImageNet weights that install here (bench/lite_weights.py), a frozen start,
the EMA's warm-up and the automatic augmentation policies. Each test fails if its option is accepted and ignored."""
import json
import sys

import numpy as np
import pytest
import torch

from maskfold.cli import UserError
from maskfold.training import trainer

import train
from conftest import ROOT, invoke

sys.path.insert(0, str(ROOT / "bench"))
import lite_weights  # noqa: E402

TINY = ["--model", "test_resnet", "--no-pretrained", "--epochs", "1", "--img-size", "32", "24", "--batch-size", "16",
        "--workers", "0", "--device", "cpu", "--oof-tta", "none"]


@pytest.fixture(scope="module")
def folds(tiny_run):
    return tiny_run[0]


def built(folds, out, monkeypatch, *args):
    """Train fold 0; the Fold train.py built, its weights as they were before training, and the result line."""
    seen, before = [], []
    real = trainer.build

    def spy(*a, **kw):
        fold = real(*a, **kw)
        before.append({k: v.detach().clone() for k, v in fold.net.state_dict().items()})
        seen.append(fold)
        return fold

    monkeypatch.setattr(trainer, "build", spy)
    r = invoke(train.app, folds, *args, "--out", out)
    assert r.exit_code == 0, r.output
    return seen[0], before[0], json.loads(r.stdout.strip().splitlines()[-1])


def test_the_converted_lite0_calls_a_cat_a_cat(lite0_weights):
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(torch.load(lite0_weights, weights_only=True), strict=False)
    cls, p = lite_weights.imagenet_class(model)
    assert cls in lite_weights.CATS and p > 0.2
    missing = set(model.state_dict()) - set(torch.load(lite0_weights, weights_only=True))
    assert all(k.endswith("num_batches_tracked") for k in missing)


@pytest.mark.parametrize("wrong", ["bn_weight_and_bias", "two_blocks"])
def test_a_wrong_mapping_is_refused_and_writes_nothing(tmp_path, monkeypatch, wrong):
    """Tensors that fit by shape but stand in the wrong place load without a word: the cat must say so."""
    real = lite_weights.renamed

    def swapped(source, model):
        w = real(source, model)
        if wrong == "two_blocks":
            a, b = "blocks.1.1.conv_pw.weight", "blocks.2.0.conv_pw.weight"
            w[a], w[b] = w[b], w[a]
        else:  # every BatchNorm's weight taken for its bias and back
            for k in [k for k in w if k.endswith(".weight") and k[:-7] + ".bias" in w and w[k].ndim == 1]:
                w[k], w[k[:-7] + ".bias"] = w[k[:-7] + ".bias"], w[k]
        return w

    monkeypatch.setattr(lite_weights, "renamed", swapped)
    with pytest.raises(UserError, match="a wrong mapping"):
        lite_weights.convert("lite0", tmp_path)
    assert not list(tmp_path.iterdir())


def test_fine_tuning_a_pretrained_lite0_end_to_end(folds, lite0_weights, tmp_path, monkeypatch):
    """--pretrained-file loads the backbone, the 18-way head is new, and the input is normalised with the
    backbone's own statistics (0.5, not ImageNet's); one epoch trains and finishes the fold."""
    args = ["--model", "tf_efficientnet_lite0", "--pretrained-file", lite0_weights, "--epochs", "1", "--img-size",
            "64", "48", "--batch-size", "16", "--workers", "0", "--device", "cpu", "--oof-tta", "none"]
    fold, before, m = built(folds, tmp_path, monkeypatch, *args)
    imagenet = torch.load(lite0_weights, weights_only=True)
    assert torch.equal(before["conv_stem.weight"], imagenet["conv_stem.weight"])
    assert torch.equal(before["blocks.6.0.conv_pwl.weight"], imagenet["blocks.6.0.conv_pwl.weight"])
    assert before["classifier.weight"].shape == (18, 1280)  # a new head, not ImageNet's 1000 classes
    assert fold.mean == [0.5, 0.5, 0.5] and fold.std == [0.5, 0.5, 0.5]
    assert m["fold"] == 0 and 0 <= m["f1"] <= 1
    config = json.loads((tmp_path / "tf_efficientnet_lite0" / "fold0" / "config.json").read_text())
    assert config["pretrained_file"] == str(lite0_weights) and config["learning"]["files"]["pretrained_file"]


def test_a_frozen_start_is_the_heads_and_said_in_the_history(folds, tmp_path, monkeypatch):
    fold, _, _ = built(folds, tmp_path, monkeypatch, *TINY[:4], "2", *TINY[5:], "--freeze-epochs", "1",
                       "--head", "multi")
    assert {n for n, p in fold.net.named_parameters() if id(p) in fold.head} == \
        {f"heads.{t}.{w}" for t in ("mask", "gender", "age") for w in ("weight", "bias")}
    hist = (tmp_path / "test_resnet" / "fold0" / "history.csv").read_text().splitlines()
    assert "frozen" in hist[0] and "backbone frozen" in (tmp_path / "test_resnet" / "fold0" / "train.log").read_text()
    r = invoke(train.app, folds, *TINY, "--out", tmp_path, "--freeze-epochs", "1", "--run-name", "x")
    assert r.exit_code == 2 and "--freeze-epochs 1" in r.output  # one epoch frozen of one: the backbone must train


def test_the_backbone_stays_put_while_frozen(folds, tmp_path, monkeypatch):
    from maskfold.training import loop

    kept = []
    real = loop.train_one

    def spy(fold, loader, sampler, epoch):
        row = real(fold, loader, sampler, epoch)
        kept.append({n: p.detach().clone() for n, p in fold.net.named_parameters()})
        return row

    monkeypatch.setattr(loop, "train_one", spy)
    fold, before, _ = built(folds, tmp_path, monkeypatch, *TINY[:4], "2", *TINY[5:], "--freeze-epochs", "1",
                            "--scheduler", "none")
    frozen, free = kept
    for name, p in frozen.items():
        moved = not torch.equal(p, before[name])
        assert moved == (name in ("fc.weight", "fc.bias")), name  # epoch 1: the head alone
    assert not torch.equal(free["conv1.0.weight"], frozen["conv1.0.weight"])  # epoch 2: the backbone too


def test_the_ema_warm_up_is_taken_and_can_be_turned_off(folds, tmp_path, monkeypatch):
    from maskfold.training import loop

    real = loop.train_one

    def gap(*flags):
        after = []

        def spy(fold, *a):
            row = real(fold, *a)
            after.append(tuple(m.state_dict()["conv1.0.weight"].clone() for m in (fold.ema.module, fold.net)))
            return row

        monkeypatch.setattr(loop, "train_one", spy)
        _, before, _ = built(folds, tmp_path, monkeypatch, *TINY, "--ema", "0.999", "--run-name", "_".join(flags),
                             "--batch-size", "4", *flags)  # some 20 steps
        ema, net = after[0]
        return float((ema - net).norm() / (before["conv1.0.weight"] - net).norm())

    warm, cold = gap("--ema-warmup"), gap("--no-ema-warmup")
    # both copy the weights at the first step (timm's); then warm follows them, cold stays near that first copy
    assert warm < 0.5 * cold, (warm, cold)


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment"])
def test_the_automatic_policies_augment_seeded_per_photo(name):
    from maskfold.training.data import CachedImages

    images = np.random.default_rng(0).integers(0, 256, (6, 32, 24, 3), dtype=np.uint8)
    ds = CachedImages(images, np.zeros(6, int), name)
    a, b, c = ds[(1, 3)][0].numpy(), ds[(1, 3)][0].numpy(), ds[(2, 3)][0].numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)  # seeded by (epoch, photo)
    changed = np.mean([not np.array_equal(ds[(e, 3)][0].numpy(), images[3]) for e in range(20)])
    assert changed > 0.5 and a.shape == images[3].shape and a.dtype == np.uint8
    if name == "randaugment":
        steps = [type(t).__name__ for t in ds.tf.transforms]
        assert steps == ["HorizontalFlip", "TorchvisionPolicy", "CoarseDropout"]
