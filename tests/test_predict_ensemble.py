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
    assert s["checkpoints"] == 2 and s["tta"] == ["flip"]
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
    assert run_predict(run, demo_tree, tmp_path / "n.csv", "--tta", "none").exit_code == 0
    assert not np.allclose(pd.read_csv(tmp_path / "n.csv")[PROB_COLS], df[PROB_COLS], atol=1e-4)


def test_tta_views_reach_the_probabilities_and_the_record(run, demo_tree, tmp_path, monkeypatch):
    from maskfold import tta

    seen = []
    real = tta.views
    monkeypatch.setattr(tta, "views", lambda x, names: seen.append(names) or real(x, names))
    monkeypatch.setattr("maskfold.forward.views", tta.views)
    out = {}
    for spec in ("none", "flip", "flip,shift,scale"):
        r = run_predict(run, demo_tree, tmp_path / f"{spec}.csv", "--tta", spec)
        assert r.exit_code == 0, r.output
        record = json.loads((tmp_path / f"{spec}.csv.json").read_text())
        assert record["tta"] == ([] if spec == "none" else spec.split(","))
        out[spec] = pd.read_csv(tmp_path / f"{spec}.csv")[PROB_COLS].to_numpy()
    assert ("flip", "shift", "scale") in seen and () in seen
    assert not np.allclose(out["flip"], out["flip,shift,scale"], atol=1e-5)
    r = run_predict(run, demo_tree, tmp_path / "x.csv", "--tta", "flip,rotate")
    assert r.exit_code == 2 and "--tta rotate: unknown" in r.output and not (tmp_path / "x.csv").exists()


def test_tta_views_move_the_image_as_named():
    import torch

    from maskfold.tta import affine, parse, passes, views

    x = torch.zeros(1, 1, 20, 20)
    x[..., 8:12, 8:12] = 1.0
    assert torch.allclose(affine(x), x, atol=1e-6)
    right = affine(x, tx=0.1)  # 2 pixels to the right
    assert right[0, 0, 10, 11] > 0.9 and right[0, 0, 10, 8] < 0.1
    near = affine(x, scale=1.5)
    assert near.sum() > x.sum() * 1.5  # closer: the square grows
    assert len(views(x, parse("flip,shift,scale"))) == passes(parse("flip,shift,scale")) == 6
    assert parse("none") == () and parse(True) == ("flip",)


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
    from maskfold.blending import rules
    rng = np.random.default_rng(0)
    y = rng.integers(0, 18, 400)
    logits = rng.normal(size=(400, 18))
    logits[np.arange(400), y] += 1.0
    logits[:, 4] += 1.5  # a systematic bias a fitted offset can undo
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    b = rules.fit_bias(p, y)
    assert b[4] < 0 and scores(y, (np.log(p) + b).argmax(1))["f1"] > scores(y, p.argmax(1))["f1"] + 0.02
    folds = np.arange(400) % 4
    rows = rules.held_out_biases(p, y, folds)
    scrambled = y.copy()
    scrambled[folds == 0] = 4  # fold 0's labels changed: only the other folds' fits may notice
    again = rules.held_out_biases(p, scrambled, folds)
    assert np.array_equal(rows[folds == 0], again[folds == 0])
    assert not np.array_equal(rows[folds != 0], again[folds != 0])
    seen = []
    rules.held_out_biases(p, y, folds, fit=lambda pp, yy: seen.append((len(pp), len(yy))) or np.zeros(18))
    assert seen == [(300, 300)] * 4


def test_cv_from_oof_and_suspects(run, demo_tree, tmp_path):
    assert run_predict(run, demo_tree, tmp_path / "p.csv").exit_code == 0
    r = invoke(ensemble.app, tmp_path / "p.csv", "--info", demo_tree / "eval" / "info.csv", "-o", tmp_path / "s.csv",
               "--oof", run, "--bias", "--suspects-out", tmp_path / "sus.csv", "--truth",
               demo_tree / "eval" / "truth.csv")
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
    from maskfold.prediction.inference import predict_all

    whole = predict_all(nets, files, 8, "cpu", False, True)
    chunked = predict_all(nets, files, 8, "cpu", False, True, chunk=5)  # 21 images: 5 chunks, the last of 1
    assert whole.shape == (len(files), 18) and np.allclose(whole.sum(axis=1), len(nets), atol=1e-4)
    assert np.allclose(whole, chunked, atol=1e-5)


def test_batch_size_option_reaches_the_model(run, demo_tree, tmp_path, monkeypatch):
    from maskfold.prediction import inference
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
    from maskfold.prediction import inference

    net, ck = predict.load_model(sorted(run.glob("fold*/best.pt"))[0], "cpu")
    images = np.random.default_rng(0).integers(0, 256, (9, *ck["img_size"], 3), dtype=np.uint8)
    cpu = inference.predict_probs(net, ck["head"], images, ck["mean"], ck["std"], "cpu", 4, None, tta=True)
    gpu = inference.predict_probs(net.to("cuda"), ck["head"], images, ck["mean"], ck["std"], "cuda", 4, None, tta=True)
    assert np.allclose(cpu, gpu, atol=1e-4)


def planted(n=600, seed=0):
    """Labels and three inputs: one mostly right, one right on mask only, one that answers the next class."""
    from maskfold.labels import decode, joint

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 18, n)

    def sure(cls, right=0.8):
        p = rng.dirichlet(np.ones(18), n) * (1 - right)
        p[np.arange(n), cls] += right
        return p

    good = sure(np.where(rng.random(n) < 0.85, y, rng.integers(0, 18, n)))
    wrong = sure((y + 1) % 18)
    m, g, a = decode(y)
    mask_only = joint(np.eye(3)[m] * 0.9 + 0.1 / 3, np.full((n, 2), 0.5), np.full((n, 3), 1 / 3))
    return y, [good, wrong, mask_only], np.arange(n) % 3


def test_fitted_weights_drop_a_harmful_input_and_each_task_finds_its_input():
    from maskfold.blending import recipe

    y, (good, wrong, mask_only), folds = planted()
    base = recipe.Recipe(np.ones(2))
    fitted = recipe.fit_recipe(base, [good, wrong], y, "blend")
    assert fitted.weights[0] > 0 and fitted.weights[1] == 0
    held = recipe.held_out_recipes(base, [good, wrong], y, folds, "blend")
    assert scores(y, held.argmax(1))["f1"] > scores(y, base.combine([good, wrong]).argmax(1))["f1"] + 0.1
    # mask_only answers the mask better than `good` does; gender and age only `good` knows
    noisy_mask = good.copy()
    flip = np.random.default_rng(1).random(len(y)) < 0.3
    noisy_mask = noisy_mask.reshape(-1, 3, 6)
    noisy_mask[flip] = np.roll(noisy_mask[flip], 1, axis=1)
    noisy_mask = noisy_mask.reshape(-1, 18)
    per_task = dict(recipe.fit_recipe(base, [noisy_mask, mask_only], y, "task").sources)
    assert per_task["mask"][1] > 0 and per_task["gender"][1] == 0 and per_task["age"][1] == 0


def test_fit_weights_option_applies_what_wins_held_out(run, demo_tree, tmp_path):
    """Two runs with the same checkpoints; the second's out-of-fold answers are planted wrong (the next class).
    Fitted weights must drop it, beat equal weights held out, and make the submission the first input's."""
    import shutil

    assert run_predict(run, demo_tree, tmp_path / "a.csv").exit_code == 0
    good, bad = tmp_path / "good", tmp_path / "bad"
    for copy, shift in ((good, 0), (bad, 1)):
        shutil.copytree(run, copy)
        for f in copy.glob("fold*/oof.csv"):
            df = pd.read_csv(f)
            p = np.full((len(df), 18), 0.01)
            p[np.arange(len(df)), (df["label"].to_numpy() + shift) % 18] = 0.83
            df[PROB_COLS] = p
            df.to_csv(f, index=False)
    for name, copy in (("g.csv", good), ("b.csv", bad)):
        assert run_predict(copy, demo_tree, tmp_path / name).exit_code == 0
    info = demo_tree / "eval" / "info.csv"
    r = invoke(ensemble.app, tmp_path / "g.csv", tmp_path / "b.csv", "--info", info, "-o", tmp_path / "s.csv",
               "--fit-weights", "blend", "--probs-out", tmp_path / "sp.csv")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    fw = s["fit_weights"]
    assert fw["applied"] and fw["gain_over_equal"] > 0 and fw["fitted"]["weights"] == [1.0, 0.0]
    assert s["recipe"]["weights"] == [1.0, 0.0]
    alone = pd.read_csv(tmp_path / "g.csv")[PROB_COLS].to_numpy()
    assert np.allclose(pd.read_csv(tmp_path / "sp.csv")[PROB_COLS].to_numpy(), alone, atol=1e-5)
    record = json.loads((tmp_path / "s.csv.json").read_text())
    assert record["kind"] == "submission" and record["recipe"]["weights"] == [1.0, 0.0]
    assert len(record["cv_per_class"]) == 18 and record["cv_steps"][0]["step"] == "blend"
    for extra, needle in ((["--weights", "1,1"], "drop --weights"), (["--mask-from", "1"], "gives each task")):
        how = "task" if "--mask-from" in extra else "blend"
        r = invoke(ensemble.app, tmp_path / "g.csv", tmp_path / "b.csv", "--info", info, "-o", tmp_path / "x.csv",
                   "--fit-weights", how, *extra)
        assert r.exit_code == 2 and needle in r.output and not (tmp_path / "x.csv").exists(), r.output
