import json

import numpy as np
import pandas as pd
import pytest
import torch

from maskfold.labels import PROB_COLS, scores

import ensemble
import predict
from conftest import invoke


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run[1]


def run_predict(run, demo_tree, out, *extra):
    return invoke(predict.app, run, "--images", demo_tree / "eval" / "images", "--info",
                  demo_tree / "eval" / "info.csv", "-o", out, "--device", "cpu", *extra)


def test_predict_writes_info_order_and_averages_folds(run, demo_tree, tmp_path):
    r = run_predict(run, demo_tree, tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["checkpoints"] == 2 and s["tta"] is True
    df = pd.read_csv(tmp_path / "p.csv")
    info = pd.read_csv(demo_tree / "eval" / "info.csv")
    assert df["ImageID"].tolist() == info["ImageID"].tolist()
    assert np.allclose(df[PROB_COLS].sum(axis=1), 1, atol=1e-4)
    # the run average equals the mean of its two checkpoints, each predicted alone
    singles = []
    for k in (0, 1):
        assert run_predict(run / f"fold{k}" / "best.pt", demo_tree, tmp_path / f"f{k}.csv").exit_code == 0
        singles.append(pd.read_csv(tmp_path / f"f{k}.csv")[PROB_COLS].to_numpy())
    assert np.allclose((singles[0] + singles[1]) / 2, df[PROB_COLS].to_numpy(), atol=1e-4)
    assert run_predict(run, demo_tree, tmp_path / "n.csv", "--no-tta").exit_code == 0
    assert not np.allclose(pd.read_csv(tmp_path / "n.csv")[PROB_COLS], df[PROB_COLS], atol=1e-4)


def test_predict_missing_image_refused(run, demo_tree, tmp_path):
    info = pd.read_csv(demo_tree / "eval" / "info.csv")
    info.loc[len(info)] = ["0" * 40 + ".jpg", 0]
    info.to_csv(tmp_path / "info.csv", index=False)
    r = invoke(predict.app, run, "--images", demo_tree / "eval" / "images", "--info", tmp_path / "info.csv",
               "-o", tmp_path / "p.csv", "--device", "cpu")
    assert r.exit_code == 2 and "1 image(s) of info.csv missing" in r.stderr
    assert not (tmp_path / "p.csv").exists()


def test_predict_unreadable_image_refused(run, demo_tree, tmp_path):
    import shutil
    images = tmp_path / "images"
    shutil.copytree(demo_tree / "eval" / "images", images)
    victim = sorted(images.glob("[0-9a-f]*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:300])
    r = invoke(predict.app, run, "--images", images, "--info", demo_tree / "eval" / "info.csv", "-o",
               tmp_path / "p.csv", "--device", "cpu")
    assert r.exit_code == 2 and victim.name in r.stderr and not (tmp_path / "p.csv").exists()


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["other", "evil", "classes", "architecture"])
def test_predict_refuses_foreign_and_unsafe_checkpoints(run, demo_tree, tmp_path, kind):
    ck = tmp_path / "x.pt"
    marker = tmp_path / "pwned"
    if kind == "other":
        torch.save({"weights": torch.zeros(3)}, ck)
    elif kind == "evil":
        torch.save({"model": Evil(str(marker))}, ck)
    else:
        good = torch.load(run / "fold0" / "best.pt", weights_only=True)
        if kind == "classes":
            good["num_classes"] = 10
        else:  # weights of one architecture, labelled as another
            good["model"] = "test_efficientnet"
        torch.save(good, ck)
    r = run_predict(ck, demo_tree, tmp_path / "p.csv")
    assert r.exit_code == 2 and str(ck) in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


def _probs(path, ids, p):
    df = pd.DataFrame(p, columns=PROB_COLS)
    df.insert(0, "ImageID", ids)
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def hand(tmp_path):
    ids = ["a.jpg", "b.jpg", "c.jpg"]
    pd.DataFrame({"ImageID": ids, "ans": 0}).to_csv(tmp_path / "info.csv", index=False)
    p1 = np.full((3, 18), 0.01)
    p1[0, 0], p1[1, 5], p1[2, 17] = 0.83, 0.83, 0.83
    p2 = np.full((3, 18), 0.01)
    p2[0, 1], p2[1, 5], p2[2, 16] = 0.83, 0.83, 0.83
    p2[0, 0] = 0.005
    p2[0, 2] = 0.015
    # the second file lists its rows in another order
    f1 = _probs(tmp_path / "p1.csv", ids, p1)
    f2 = _probs(tmp_path / "p2.csv", ids[::-1], p2[::-1])
    return tmp_path, f1, f2, p1, p2


def test_blend_equals_hand_mean_in_info_order(hand):
    tmp, f1, f2, p1, p2 = hand
    r = invoke(ensemble.app, f1, f2, "--info", tmp / "info.csv", "-o", tmp / "sub.csv", "--probs-out", tmp / "b.csv")
    assert r.exit_code == 0, r.output
    sub = pd.read_csv(tmp / "sub.csv")
    mean = (p1 + p2) / 2
    assert sub["ImageID"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert sub["ans"].tolist() == mean.argmax(1).tolist() == [1, 5, 16]
    assert np.allclose(pd.read_csv(tmp / "b.csv")[PROB_COLS], mean, atol=1e-6)
    r = invoke(ensemble.app, f1, f2, "--info", tmp / "info.csv", "-o", tmp / "w.csv", "--weights", "3,1")
    assert pd.read_csv(tmp / "w.csv")["ans"].tolist() == (0.75 * p1 + 0.25 * p2).argmax(1).tolist() == [0, 5, 17]


def test_geometric_mean(hand):
    tmp, f1, f2, p1, p2 = hand
    invoke(ensemble.app, f1, f2, "--info", tmp / "info.csv", "-o", tmp / "g.csv", "--mean", "geometric",
           "--probs-out", tmp / "gp.csv")
    g = np.sqrt(p1 * p2)
    assert np.allclose(pd.read_csv(tmp / "gp.csv")[PROB_COLS], g / g.sum(1, keepdims=True), atol=1e-6)


def test_by_task_recomposition_by_hand(tmp_path):
    ids = ["x.jpg"]
    pd.DataFrame({"ImageID": ids, "ans": 0}).to_csv(tmp_path / "info.csv", index=False)
    a = np.full((1, 18), 0.0)
    a[0, 2 * 6 + 0 * 3 + 0] = 1.0  # says: not wear, male, young
    b = np.full((1, 18), 0.0)
    b[0, 0 * 6 + 1 * 3 + 2] = 1.0  # says: wear, female, old
    fa, fb = _probs(tmp_path / "a.csv", ids, a), _probs(tmp_path / "b.csv", ids, b)
    r = invoke(ensemble.app, fa, fb, "--info", tmp_path / "info.csv", "-o", tmp_path / "s.csv",
               "--mask-from", "1", "--gender-from", "2", "--age-from", "2")
    assert r.exit_code == 0, r.output
    assert pd.read_csv(tmp_path / "s.csv")["ans"].tolist() == [2 * 6 + 1 * 3 + 2]


@pytest.mark.parametrize("case,needle", [
    ("nan", "non-finite"), ("columns", "missing probability columns"), ("ids", "ImageIDs differ"),
    ("weights", "--weights"), ("sum", "not a probability vector"),
])
def test_blend_bad_inputs(hand, case, needle):
    tmp, f1, f2, p1, p2 = hand
    extra = []
    if case == "nan":
        df = pd.read_csv(f2)
        df.loc[1, "p3"] = np.nan
        df.to_csv(f2, index=False)
    elif case == "columns":
        pd.read_csv(f2).drop(columns="p17").to_csv(f2, index=False)
    elif case == "ids":
        df = pd.read_csv(f2)
        df.loc[0, "ImageID"] = "zzz.jpg"
        df.to_csv(f2, index=False)
    elif case == "weights":
        extra = ["--weights", "1,2,3"]
    else:
        df = pd.read_csv(f2)
        df.loc[0, "p0"] = 0.9
        df.to_csv(f2, index=False)
    r = invoke(ensemble.app, f1, f2, "--info", tmp / "info.csv", "-o", tmp / "sub.csv", *extra)
    assert r.exit_code == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp / "sub.csv").exists()


def test_bias_undoes_a_planted_offset_and_held_out_fits_never_see_their_fold():
    from maskfold import recipe
    rng = np.random.default_rng(0)
    y = rng.integers(0, 18, 400)
    logits = rng.normal(size=(400, 18))
    logits[np.arange(400), y] += 1.0
    logits[:, 4] += 1.5  # a systematic bias a fitted offset can undo
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    b = recipe.fit_bias(p, y)
    assert b[4] < 0 and scores(y, (np.log(p) + b).argmax(1))["f1"] > scores(y, p.argmax(1))["f1"] + 0.02
    folds = np.arange(400) % 4
    rows = recipe.held_out_biases(p, y, folds)
    scrambled = y.copy()
    scrambled[folds == 0] = 4  # fold 0's labels changed: only the other folds' fits may notice
    again = recipe.held_out_biases(p, scrambled, folds)
    assert np.array_equal(rows[folds == 0], again[folds == 0])
    assert not np.array_equal(rows[folds != 0], again[folds != 0])
    seen = []
    recipe.held_out_biases(p, y, folds, fit=lambda pp, yy: seen.append((len(pp), len(yy))) or np.zeros(18))
    assert seen == [(300, 300)] * 4


def test_cv_from_oof_and_suspects(run, demo_tree, tmp_path):
    assert run_predict(run, demo_tree, tmp_path / "p.csv").exit_code == 0
    r = invoke(ensemble.app, tmp_path / "p.csv", "--info", demo_tree / "eval" / "info.csv", "-o", tmp_path / "s.csv",
               "--oof", run, "--bias", "--suspects", tmp_path / "sus.csv", "--truth", demo_tree / "eval" / "truth.csv")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    oof = pd.concat([pd.read_csv(f) for f in sorted(run.glob("fold*/oof.csv"))])
    assert abs(s["cv_f1"] - scores(oof["label"], oof[PROB_COLS].to_numpy().argmax(1))["f1"]) < 1e-4
    assert "bias_cv_gain" in s and "test_f1" in s and s["bias_applied"] == (s["bias_cv_gain"] > 0)
    sus = pd.read_csv(tmp_path / "sus.csv")
    assert sus["mean_p_label"].is_monotonic_increasing and (sus["images"] == 7).all()


def test_chunked_prediction_equals_one_pass(run, demo_tree):
    nets = [predict.load_model(p, "cpu") for p in sorted(run.glob("fold*/best.pt"))]
    info = pd.read_csv(demo_tree / "eval" / "info.csv")
    files = predict.image_files(demo_tree / "eval" / "images", info["ImageID"].tolist())
    whole = predict.predict_all(nets, files, 8, "cpu", False, True)
    chunked = predict.predict_all(nets, files, 8, "cpu", False, True, chunk=5)  # 21 images: 5 chunks, the last of 1
    assert whole.shape == (len(files), 18) and np.allclose(whole.sum(axis=1), len(nets), atol=1e-4)
    assert np.allclose(whole, chunked, atol=1e-5)


def test_batch_size_option_reaches_the_model(run, demo_tree, tmp_path, monkeypatch):
    from maskfold import inference
    sizes = []
    real = inference.predict_probs

    def spy(net, head, images, *args, **kw):
        sizes.append(args[3])  # batch_size, after mean, std, device
        return real(net, head, images, *args, **kw)

    monkeypatch.setattr(inference, "predict_probs", spy)
    r = run_predict(run, demo_tree, tmp_path / "p.csv", "--batch-size", "7")
    assert r.exit_code == 0, r.output
    assert sizes and set(sizes) == {7}


@pytest.mark.gpu
def test_probabilities_on_cuda_match_the_cpu(run):
    """The inference loop on a GPU (channels-last, autocast off) gives the CPU's probabilities."""
    from maskfold import inference

    net, ck = predict.load_model(sorted(run.glob("fold*/best.pt"))[0], "cpu")
    images = np.random.default_rng(0).integers(0, 256, (9, *ck["img_size"], 3), dtype=np.uint8)
    cpu = inference.predict_probs(net, ck["head"], images, ck["mean"], ck["std"], "cpu", 4, None, tta=True)
    gpu = inference.predict_probs(net.to("cuda"), ck["head"], images, ck["mean"], ck["std"], "cuda", 4, None, tta=True)
    assert np.allclose(cpu, gpu, atol=1e-4)
