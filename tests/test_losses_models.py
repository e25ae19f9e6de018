import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskfold.labels import NUM_CLASSES, probs18
from maskfold.training.mixing import cutmix

import losses
import models


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g)


def test_ce_and_zero_parameter_variants_equal_cross_entropy(batch):
    logits, y = batch
    ref = F.cross_entropy(logits, y)
    assert torch.allclose(losses.build("ce", np.ones(5))(logits, y), ref)
    assert torch.allclose(losses.build("focal", np.ones(5), gamma=0.0)(logits, y), ref, atol=1e-6)
    assert torch.allclose(losses.build("label_smoothing", np.ones(5), smoothing=0.0)(logits, y), ref)


def test_focal_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    p = torch.softmax(logits, 1)[torch.arange(2), y]
    hand = (-(1 - p) ** 2 * torch.log(p)).mean()
    assert torch.allclose(losses.build("focal", np.ones(2), gamma=2.0)(logits, y), hand)
    assert losses.build("focal", np.ones(2), gamma=2.0)(logits, y) < F.cross_entropy(logits, y)


def test_label_smoothing_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    y = torch.tensor([2])
    logp = torch.log_softmax(logits, 1)[0]
    hand = -(0.9 * logp[2] + 0.1 * logp.mean())
    assert torch.allclose(losses.build("label_smoothing", np.ones(3), smoothing=0.1)(logits, y), hand)


def test_weighted_ce_uses_inverse_frequency(batch):
    logits, y = batch
    counts = np.array([8, 4, 2, 1, 1])
    w = counts.sum() / (5 * counts)
    assert np.allclose(losses.class_weights(counts).numpy(), w)
    nll = -torch.log_softmax(logits, 1)[torch.arange(16), y]
    wy = torch.tensor(w, dtype=torch.float32)[y]
    hand = (wy * nll).sum() / wy.sum()
    assert torch.allclose(losses.build("weighted_ce", counts)(logits, y), hand)


def test_soft_f1_by_hand():
    y = torch.tensor([0, 1, 1])
    perfect = torch.tensor([[20.0, -20.0], [-20.0, 20.0], [-20.0, 20.0]])
    assert losses.build("f1", np.ones(2))(perfect, y) < 1e-6
    uniform = torch.zeros(3, 2)
    # p = 0.5 everywhere: class 0 tp=.5 fp=1 fn=.5 -> f1=1/2.5; class 1 tp=1 fp=.5 fn=1 -> f1=2/3.5
    hand = 1 - (1 / 2.5 + 2 / 3.5) / 2
    assert abs(losses.build("f1", np.ones(2))(uniform, y).item() - hand) < 1e-6


@pytest.mark.parametrize("mode", ["box", "vertical", "half"])
def test_cutmix_weight_is_the_pasted_area(mode):
    for seed in range(20):
        n, H, W = 6, 16, 12
        x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, H, W).contiguous()
        y = torch.arange(n)
        g = torch.Generator().manual_seed(seed)
        xm, ya, yb, lam = cutmix(x, y, 1.0, mode, g)
        for i in range(n):
            if yb[i] != ya[i]:
                kept = (xm[i, 0] == i).float().mean().item()
                assert abs(kept - lam) < 1e-6
                pasted = (xm[i, 0] == yb[i]).float().mean().item()
                assert abs(pasted - (1 - lam)) < 1e-6
        if mode == "half":
            assert lam == 0.5
        if mode in ("vertical", "half"):  # whole columns: the mask region of a face stays whole
            assert bool((xm[:, 0] == xm[:, 0, :1]).all())


def test_multi_head_joint_sums_to_one_and_maps_to_class_code():
    logits = torch.full((1, 8), -10.0)
    logits[0, 2] = 10  # mask: not wear (2)
    logits[0, 3 + 1] = 10  # gender: female (1)
    logits[0, 5 + 0] = 10  # age: <30 (0)
    p = probs18(logits, "multi")
    assert p.shape == (1, NUM_CLASSES) and torch.allclose(p.sum(1), torch.ones(1))
    assert p.argmax(1).item() == 2 * 6 + 1 * 3 + 0
    rnd = probs18(torch.randn(7, 8), "multi")
    assert torch.allclose(rnd.sum(1), torch.ones(7), atol=1e-6)


@pytest.mark.parametrize("head", ["single", "multi"])
def test_heads_give_18_class_outputs(head):
    net = models.create("test_resnet", head, pretrained=False)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, models.HEADS[head])


def test_unknown_model_names_closest():
    from maskfold.cli import UserError
    with pytest.raises(UserError, match="closest: resnet18"):
        models.create("resnet_18", "single", pretrained=False)


def test_persistent_workers_augment_with_each_epochs_seed():
    from torch.utils.data import DataLoader

    from maskfold.training.data import CachedImages, EpochSampler
    rng = np.random.default_rng(0)
    ds = CachedImages(rng.integers(0, 255, (16, 32, 24, 3), dtype=np.uint8), np.zeros(16, int), "seed")
    sampler = EpochSampler(16)
    loader = DataLoader(ds, batch_size=16, sampler=sampler, num_workers=2, persistent_workers=True,
                        multiprocessing_context="fork")
    seen = []
    for epoch, seed in ((0, 11), (1, 12)):
        sampler.set_epoch(epoch, seed)
        x, _ = next(iter(loader))
        order = [i for _, i in sampler]
        assert torch.equal(x, torch.stack([ds[(seed, i)][0] for i in order]))  # what the main process computes
        seen.append(x)
    assert not torch.equal(seen[0], seen[1])
