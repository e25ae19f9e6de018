"""pseudo.py and train.py --extra: each fold's labels from that fold's own models, pseudo-labelled photos in
training only, and a foreign, stale or overlapping file refused in one line."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskfold.labelling.pseudo_labels import person_answers, qualifying_groups
from maskfold.labels import NUM_CLASSES, decode
from maskfold.prediction import inference, sources
from maskfold.probs import sha256

import predict
import pseudo
import split
import train
from conftest import invoke

TINY = ("--model", "test_resnet", "--no-pretrained", "--epochs", "1", "--img-size", "32", "24", "--batch-size", "16",
        "--workers", "0", "--device", "cpu")


@pytest.fixture(scope="module")
def eval_probs(demo_tree, tiny_run, tmp_path_factory):
    """(probs.csv of the tiny run on the eval photos, its folder)."""
    _, run = tiny_run
    out = tmp_path_factory.mktemp("pseudo") / "probs.csv"
    ev = demo_tree / "eval"
    r = invoke(predict.app, run, "--images", ev / "images", "--info", ev / "info.csv", "-o", out)
    assert r.exit_code == 0, r.output
    return out


def make_pseudo(demo_tree, probs, out, *extra):
    ev = demo_tree / "eval"
    return invoke(pseudo.app, probs, "--info", ev / "info.csv", "--images", ev / "images", "-o", out, *extra)


@pytest.fixture(scope="module")
def pseudo_csv(demo_tree, eval_probs):
    out = eval_probs.parent / "pseudo.csv"
    r = make_pseudo(demo_tree, eval_probs, out, "--min-conf", "0")  # every eval photo, for each fold
    assert r.exit_code == 0, r.output
    return out


def people_csv(demo_tree, path):
    """The eval photos' true people, as people.py writes them."""
    truth = pd.read_csv(demo_tree / "eval" / "people_truth.csv", dtype=str)
    truth["group"] = pd.factorize(truth["person"])[0]
    truth[["ImageID", "group"]].assign(size=7, sure=0.5).to_csv(path, index=False)
    return path


def test_each_folds_labels_come_from_that_folds_own_models(demo_tree, tiny_run, eval_probs, tmp_path, monkeypatch):
    """Fold k's column holds what fold k's checkpoint answers, never the other folds' or their average: fold 0's
    models say class 3 for every photo, fold 1's class 16."""
    loaded = []

    def fake_load(path, device, create):
        loaded.append(Path(path))
        return Path(path).parent.name, {"img_size": [32, 24], "head": "single"}

    def fake_predict(nets, files, batch_size, dev, amp, tta, chunk=2048, each=False):
        assert each
        out = np.full((len(nets), len(files), NUM_CLASSES), 1e-4)
        for i, (fold, _) in enumerate(nets):
            out[i, :, 3 if fold == "fold0" else 16] = 1
        return out / out.sum(2, keepdims=True)

    monkeypatch.setattr(sources, "load_model", fake_load)
    monkeypatch.setattr(inference, "predict_all", fake_predict)
    out = tmp_path / "pseudo.csv"
    r = make_pseudo(demo_tree, eval_probs, out)
    assert r.exit_code == 0, r.output
    _, run = tiny_run
    assert sorted(p.resolve() for p in loaded) == sorted((run / f"fold{k}" / "best.pt").resolve() for k in (0, 1))
    df = pd.read_csv(out)
    assert len(df) == 21 and (df["label_fold0"] == 3).all() and (df["label_fold1"] == 16).all()
    record = json.loads(Path(f"{out}.json").read_text())
    assert record["folds"] == [0, 1] and record["photos_per_fold"] == {"0": 21, "1": 21}


def test_a_person_shares_one_answer_and_unsure_groups_give_none():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(NUM_CLASSES) * 0.3, size=14)
    groups = np.repeat([0, 1], 7)
    ans, conf, soft = person_answers(p, groups, 7)
    _, gender, age = decode(ans)
    for g in (0, 1):
        rows = groups == g
        assert len(set(gender[rows])) == 1 and len(set(age[rows])) == 1
        assert np.allclose(soft[rows, 3:5], p[rows].reshape(-1, 3, 2, 3).sum((1, 3)).mean(0))  # the person's gender
        masks = sorted(decode(ans[rows])[0])
        assert masks == [0, 0, 0, 0, 0, 1, 2]  # a whole person: one worn wrongly, one not worn
    alone, conf_alone, _ = person_answers(p, np.full(14, -1), 7)
    assert (alone == p.argmax(1)).all() and (conf <= 1).all() and (conf_alone <= 1).all()
    q = qualifying_groups(np.array([0] * 7 + [1] * 7 + [2] * 3), np.array([0.5] * 7 + [0.1] * 7 + [0.5] * 3), 0.2, 7)
    assert (q[:7] == 0).all() and (q[7:] == -1).all()  # group 1 is not sure enough, group 2 too small


def test_people_give_each_group_one_gender_and_age_and_truth_is_scored(demo_tree, eval_probs, tmp_path):
    people = people_csv(demo_tree, tmp_path / "people.csv")
    out = tmp_path / "pseudo.csv"
    r = make_pseudo(demo_tree, eval_probs, out, "--people", people, "--min-conf", "0",
                    "--truth", demo_tree / "eval" / "truth.csv")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    for k in (0, 1):
        gender = decode(df[f"label_fold{k}"].to_numpy())[1]
        assert (df.assign(g=gender).groupby("person")["g"].nunique() == 1).all()  # one gender per person and fold
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(summary["right_per_fold"]) == {"0", "1"} and 0 <= summary["right_per_fold"]["0"]["right"] <= 1
    strict = make_pseudo(demo_tree, eval_probs, tmp_path / "strict.csv", "--people", people, "--min-sure", "0.9")
    assert strict.exit_code == 0, strict.output
    assert len(pd.read_csv(tmp_path / "strict.csv")) == 0  # no group is surer than 0.9 here


class Spy:
    """Records what each CachedImages (the training set) was made of."""
    made = []

    def __init__(self, real):
        self.real = real

    def __call__(self, images, targets, aug, soft=None):
        Spy.made.append((len(images), np.asarray(targets).copy(), soft))
        return self.real(images, targets, aug, soft)


def test_extra_adds_its_folds_rows_to_training_only(tiny_run, pseudo_csv, tmp_path, monkeypatch):
    import maskfold.training.data as datasets

    folds, _ = tiny_run
    monkeypatch.setattr(datasets, "CachedImages", Spy(datasets.CachedImages))
    Spy.made = []
    r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--run-name", "r2", "--fold", 1,
               "--extra", pseudo_csv)
    assert r.exit_code == 0, r.output
    table = pd.read_csv(folds)
    extra = pd.read_csv(pseudo_csv)
    rows = extra[extra["label_fold1"] >= 0]
    n_train = int((table["fold"] != 1).sum())
    (size, targets, soft), = Spy.made
    assert soft is None
    assert size == n_train + len(rows) and len(rows) > 0
    assert (targets[n_train:] == rows["label_fold1"].to_numpy()).all()  # fold 1's labels, not another fold's
    oof = pd.read_csv(tmp_path / "runs" / "r2" / "fold1" / "oof.csv")
    assert len(oof) == int((table["fold"] == 1).sum())  # validation: folds.csv's fold-1 photos only
    assert not set(oof["path"]) & set(extra["path"])
    config = json.loads((tmp_path / "runs" / "r2" / "fold1" / "config.json").read_text())
    assert config["extra"] == str(pseudo_csv) and config["extra_rows"] == len(rows)


def test_extra_soft_draws_each_pseudo_label_from_its_folds_probabilities(tiny_run, pseudo_csv, tmp_path,
                                                                         monkeypatch):
    import maskfold.training.data as datasets
    from maskfold.labelling.pseudo_labels import soft_cols

    folds, _ = tiny_run
    monkeypatch.setattr(datasets, "CachedImages", Spy(datasets.CachedImages))
    Spy.made = []
    r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--run-name", "soft", "--fold", 0,
               "--extra", pseudo_csv, "--extra-soft")
    assert r.exit_code == 0, r.output
    (size, targets, soft), = Spy.made
    extra = pd.read_csv(pseudo_csv)
    rows = extra[extra["label_fold0"] >= 0]
    n_train = size - len(rows)
    assert np.isnan(soft[:n_train]).all() and np.allclose(soft[n_train:], rows[soft_cols(0)].to_numpy())
    r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--run-name", "bad", "--extra-soft")
    assert r.exit_code == 2 and "give --extra" in r.output, r.output


def test_a_soft_label_is_drawn_per_epoch_and_a_real_label_kept():
    from maskfold.training.data import CachedImages

    soft = np.full((3, 8), np.nan)
    soft[1] = [0, 0, 1, 0, 1, 1, 0, 0]  # sure: not worn, female, young -> class 2*6 + 3 + 0
    soft[2] = [1, 0, 0, 0.5, 0.5, 1, 0, 0]  # worn, young, either gender
    ds = CachedImages(np.zeros((3, 8, 8, 3), np.uint8), np.array([5, 9, 9]), "none", soft)
    seen = {i: {int(ds[(seed, i)][1]) for seed in range(40)} for i in range(3)}
    assert seen == {0: {5}, 1: {15}, 2: {0, 3}}
    assert int(ds[(7, 2)][1]) == int(ds[(7, 2)][1])  # the same epoch seed, the same draw (resumable)


def rewrite(path: Path, df: pd.DataFrame, **record_changes) -> None:
    """Edit a pseudo.csv and keep its record matching (as if pseudo.py had written it)."""
    df.to_csv(path, index=False)
    rec = json.loads(Path(f"{path}.json").read_text())
    rec.update(record_changes, sha256=sha256(path))
    Path(f"{path}.json").write_text(json.dumps(rec))


def copy_pseudo(pseudo_csv, tmp_path) -> Path:
    out = pseudo_csv.parent / f"copy_{tmp_path.name}.csv"
    shutil.copy(pseudo_csv, out)
    shutil.copy(f"{pseudo_csv}.json", f"{out}.json")
    return out


def refused(tiny_run, extra, tmp_path, needle, folds=None, fold=0):
    r = invoke(train.app, folds or tiny_run[0], *TINY, "--out", tmp_path / "runs", "--run-name", "r2", "--fold", fold,
               "--extra", extra)
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "runs").exists()


def test_labels_of_another_split_are_refused(demo_tree, tiny_run, pseudo_csv, tmp_path):
    """Runs of another person-to-fold map: fold 0's labels could come from a model that saw fold 0's people."""
    other = tmp_path / "other.csv"
    train_dir = demo_tree / "train"
    assert invoke(split.app, train_dir / "train.csv", train_dir / "images", "-o", other, "--folds", "2",
                  "--seed", "7").exit_code == 0
    refused(tiny_run, pseudo_csv, tmp_path, "another person-to-fold map", folds=other)


def test_a_stale_or_unrecorded_file_is_refused(tiny_run, pseudo_csv, tmp_path):
    stale = copy_pseudo(pseudo_csv, tmp_path)
    rec = json.loads(Path(f"{stale}.json").read_text())
    rec["runs"][0]["checkpoints"]["0"]["sha256"] = "0" * 16  # as if fold 0 had been trained again since
    Path(f"{stale}.json").write_text(json.dumps(rec))
    refused(tiny_run, stale, tmp_path, "is stale")
    rec["runs"][0]["checkpoints"]["0"]["path"] = str(tmp_path / "gone" / "best.pt")  # deleted since: unchecked
    Path(f"{stale}.json").write_text(json.dumps(rec))
    refused(tiny_run, stale, tmp_path, "cannot be checked")
    rec = json.loads(Path(f"{pseudo_csv}.json").read_text())
    rec["inputs"][0]["sha256"] = "0" * 64  # as if the probabilities had been predicted again since
    Path(f"{stale}.json").write_text(json.dumps(rec))
    refused(tiny_run, stale, tmp_path, "the probabilities it was made from, changed")
    Path(f"{stale}.json").unlink()
    refused(tiny_run, stale, tmp_path, "no record of the runs")
    shutil.copy(f"{pseudo_csv}.json", f"{stale}.json")
    rewrite(stale, pd.read_csv(pseudo_csv).drop(columns=["label_fold0"]))
    refused(tiny_run, stale, tmp_path, "no label_fold0 column")


def test_train_photos_and_foreign_photos_are_refused(demo_tree, tiny_run, pseudo_csv, tmp_path):
    folds, _ = tiny_run
    table = pd.read_csv(folds)
    df = pd.read_csv(pseudo_csv)
    train_photo = (folds.parent / table["path"].iloc[0]).resolve()
    same = copy_pseudo(pseudo_csv, tmp_path)
    bad = df.copy()
    bad.loc[0, "path"] = str(Path(bad.loc[0, "path"]).parent / "copied.jpg")
    copied = (pseudo_csv.parent / bad.loc[0, "path"]).resolve()
    shutil.copy(train_photo, copied)  # a train photo under an eval name
    try:
        rewrite(same, bad)
        refused(tiny_run, same, tmp_path, "is the same image as the train photo")
    finally:
        copied.unlink()
    outside = df.copy()
    outside.loc[0, "path"] = str(train_photo)
    rewrite(same, outside)
    refused(tiny_run, same, tmp_path, "is a train photo of folds.csv")
    elsewhere = tmp_path / "elsewhere.jpg"
    shutil.copy(pseudo_csv.parent / df["path"].iloc[0], elsewhere)
    moved = df.copy()
    moved.loc[0, "path"] = str(elsewhere)
    rewrite(same, moved)
    refused(tiny_run, same, tmp_path, "is not in")
    missing = df.copy()
    missing.loc[0, "path"] = "nowhere.jpg"
    rewrite(same, missing)
    refused(tiny_run, same, tmp_path, "row 2: no such photo")


def test_a_pseudo_file_given_as_folds_csv_is_refused(tiny_run, pseudo_csv, tmp_path):
    folds, _ = tiny_run
    mixed = folds.parent / f"mixed_{tmp_path.name}.csv"
    table = pd.read_csv(folds, dtype={"id": str})
    extra = pd.read_csv(pseudo_csv, dtype={"id": str})
    pd.concat([table, extra[table.columns]]).to_csv(mixed, index=False)
    r = invoke(train.app, mixed, *TINY, "--out", tmp_path / "runs", "--fold", 0)
    assert r.exit_code == 2 and "fold -1, a pseudo-label" in r.output and "--extra" in r.output, r.output


def test_pseudo_refuses_what_cannot_give_honest_labels(demo_tree, tiny_run, eval_probs, tmp_path):
    _, run = tiny_run
    bare = tmp_path / "bare.csv"
    shutil.copy(eval_probs, bare)  # no record: which models made it is unknown
    r = make_pseudo(demo_tree, bare, tmp_path / "a.csv")
    assert r.exit_code == 2 and "no record of the runs" in r.output, r.output
    r = make_pseudo(demo_tree, eval_probs, tmp_path / "b.csv", "--min-sure", "0.5")
    assert r.exit_code == 2 and "give --people" in r.output, r.output
    partial = tmp_path / "partial"
    shutil.copytree(run, partial)
    shutil.rmtree(partial / "fold1")
    probs = tmp_path / "partial.csv"
    ev = demo_tree / "eval"
    r = invoke(predict.app, partial, "--images", ev / "images", "--info", ev / "info.csv", "-o", probs)
    assert r.exit_code == 0, r.output
    r = make_pseudo(demo_tree, probs, tmp_path / "c.csv")
    assert r.exit_code == 2 and "fold(s) 1 not finished" in r.output, r.output
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "c.csv").exists()


def test_the_report_labels_a_run_trained_with_pseudo_labels():
    from maskfold.pages import report_sections as report

    runs = [report.Run(Path(f"runs/{name}"), config, pd.DataFrame(), {}, 3) for name, config in
            (("r1", {"model": "resnet18", "lr": 0.001}),
             ("r2", {"model": "resnet18", "lr": 0.001, "extra": "/w/pseudo.csv", "extra_rows": 840, "fold": 0}))]
    report.label_runs(runs)
    assert runs[0].label == "r1" and runs[1].label == "pseudo-labels pseudo.csv (fold 0: +840 photos)"


def test_a_run_from_before_an_option_existed_is_skipped_not_refused(tiny_run, tmp_path):
    """Folds whose config.json predates --extra and --extra-soft trained as their defaults say: --skip-done skips
    them, and a new fold joins their run."""
    folds, run = tiny_run
    old = tmp_path / "runs" / run.name
    shutil.copytree(run, old)
    for config in old.glob("fold*/config.json"):
        c = json.loads(config.read_text())
        del c["extra"], c["extra_soft"]
        config.write_text(json.dumps(c))
    r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--fold", 0, "--skip-done")
    assert r.exit_code == 0 and "skipped" in r.output, r.output


def test_probabilities_predicted_from_checkpoint_files_name_their_run(demo_tree, tiny_run, tmp_path):
    """predict.py given every fold's best.pt one by one: the record lists the run once per checkpoint, and pseudo.py
    takes them together; given one fold's only, it is refused as predicted from fewer folds than the run has."""
    _, run = tiny_run
    ev = demo_tree / "eval"
    for name, ckpts in (("all", sorted(run.glob("fold*/best.pt"))), ("one", [run / "fold0" / "best.pt"])):
        probs = tmp_path / f"{name}.csv"
        r = invoke(predict.app, *ckpts, "--images", ev / "images", "--info", ev / "info.csv", "-o", probs)
        assert r.exit_code == 0, r.output
        r = make_pseudo(demo_tree, probs, tmp_path / f"pseudo_{name}.csv")
        if name == "all":
            assert r.exit_code == 0, r.output
        else:
            assert r.exit_code == 2 and "predicted from fold(s) [0]" in r.output, r.output


def test_min_conf_and_min_photos_choose_the_rows(demo_tree, eval_probs, tmp_path):
    loose = make_pseudo(demo_tree, eval_probs, tmp_path / "loose.csv", "--min-conf", "0")
    strict = make_pseudo(demo_tree, eval_probs, tmp_path / "strict.csv", "--min-conf", "0.99")
    assert loose.exit_code == 0 and strict.exit_code == 0, loose.output + strict.output
    conf = pd.read_csv(tmp_path / "loose.csv")[["sure_fold0", "sure_fold1"]].max(axis=1)
    assert len(pd.read_csv(tmp_path / "strict.csv")) == int((conf >= 0.99).sum()) < len(conf)
    people = pd.read_csv(people_csv(demo_tree, tmp_path / "people.csv"))
    first = people["group"] == people["group"].iloc[0]
    people.loc[first[first].index[:3], "group"] = 99  # one person split 4 + 3
    people.to_csv(tmp_path / "split.csv", index=False)
    counts = {}
    for n in ("7", "3"):
        r = make_pseudo(demo_tree, eval_probs, tmp_path / f"p{n}.csv", "--people", tmp_path / "split.csv",
                        "--min-conf", "0", "--min-photos", n)
        assert r.exit_code == 0, r.output
        counts[n] = len(pd.read_csv(tmp_path / f"p{n}.csv"))
    assert counts == {"7": 14, "3": 21}


def test_min_conf_per_task_keeps_the_rows_each_task_is_sure_of(demo_tree, eval_probs, tmp_path):
    from maskfold.labels import decode

    loose = make_pseudo(demo_tree, eval_probs, tmp_path / "loose.csv", "--min-conf", "0")
    assert loose.exit_code == 0, loose.output
    df = pd.read_csv(tmp_path / "loose.csv")
    rows = df[df["label_fold0"] >= 0]
    m, g, a = decode(rows["label_fold0"].to_numpy())
    idx = np.arange(len(rows))
    conf = {t: rows[[f"{t}{i}_fold0" for i in range(n)]].to_numpy()[idx, c]
            for (t, n), c in zip({"mask": 3, "gender": 2, "age": 3}.items(), (m, g, a))}
    v = np.unique(conf["age"])  # the CSV rounds: cut half way between two of its values, near the median
    k = len(v) // 2
    cut = round(float(v[k - 1] + v[k]) / 2, 8)
    r = make_pseudo(demo_tree, eval_probs, tmp_path / "age.csv", "--min-conf", f"age={cut},mask=0,gender=0")
    assert r.exit_code == 0, r.output
    kept = pd.read_csv(tmp_path / "age.csv")
    assert set(kept.loc[kept["label_fold0"] >= 0, "ImageID"]) == set(rows.loc[conf["age"] >= cut, "ImageID"])
    assert 0 < (conf["age"] >= cut).sum() < len(rows)
    assert json.loads((tmp_path / "age.csv.json").read_text())["min_conf"] == {"mask": [0] * 3, "gender": [0] * 2,
                                                                             "age": [cut] * 3}
    for bad in ("height=0.9", "mask=1.5", "mask=high", "mask=0.5/0.9", "gender=0.5/0.5/0.5"):
        r = make_pseudo(demo_tree, eval_probs, tmp_path / "bad.csv", "--min-conf", bad)
        assert r.exit_code == 2 and "--min-conf" in r.output and not (tmp_path / "bad.csv").exists(), r.output


def test_min_conf_per_class_asks_each_answer_what_its_class_needs(demo_tree, eval_probs, tmp_path):
    """As the winning team's thresholds (mask=0.5/0.95/0.95): one mask class at a cut, the others at 1."""
    assert make_pseudo(demo_tree, eval_probs, tmp_path / "loose.csv", "--min-conf", "0").exit_code == 0
    rows = pd.read_csv(tmp_path / "loose.csv").query("label_fold0 >= 0")
    mask = decode(rows["label_fold0"].to_numpy())[0]
    sure = rows[[f"mask{i}_fold0" for i in range(3)]].to_numpy()[np.arange(len(rows)), mask]
    c = int(np.bincount(mask).argmax())  # the class answered most
    v = np.unique(sure[mask == c])
    cut = round(float(v[len(v) // 2 - 1] + v[len(v) // 2]) / 2, 8)  # between two of the CSV's values
    each = [cut if i == c else 1 for i in range(3)]
    r = make_pseudo(demo_tree, eval_probs, tmp_path / "c.csv", "--min-conf",
                    f"mask={'/'.join(map(str, each))},gender=0,age=0")
    assert r.exit_code == 0, r.output
    kept = pd.read_csv(tmp_path / "c.csv").query("label_fold0 >= 0")
    want = rows.loc[(mask == c) & (sure >= cut), "ImageID"]
    assert set(kept["ImageID"]) == set(want) and 0 < len(want) < len(rows)
    assert json.loads((tmp_path / "c.csv.json").read_text())["min_conf"]["mask"] == each


def test_the_final_models_labels_are_as_sure_as_min_conf_asks(demo_tree, eval_probs, tmp_path):
    """`label` (train.py --fold all) is every fold's models together: kept where they are that sure, not wherever
    some fold kept its own label."""
    assert make_pseudo(demo_tree, eval_probs, tmp_path / "loose.csv", "--min-conf", "0").exit_code == 0
    loose = pd.read_csv(tmp_path / "loose.csv")
    v = np.unique(loose["sure"])
    cut = round(float(v[len(v) // 2 - 1] + v[len(v) // 2]) / 2, 8)
    r = make_pseudo(demo_tree, eval_probs, tmp_path / "p.csv", "--min-conf", str(cut))
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "p.csv").set_index("ImageID")
    labelled = set(df.index[df["label"] >= 0])
    assert labelled == set(loose.loc[loose["sure"] >= cut, "ImageID"]) and labelled
    folds = [c for c in df.columns if c.startswith("label_fold")]
    assert (df.loc[df["label"] < 0, folds] >= 0).any(axis=None)  # a fold kept a row the final model must not take


def test_pseudo_takes_and_says_its_threads(demo_tree, eval_probs, tmp_path):
    import torch

    r = make_pseudo(demo_tree, eval_probs, tmp_path / "p.csv", "--min-conf", "0", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "threads 1 (--threads)" in r.stderr and torch.get_num_threads() == 1
    r = make_pseudo(demo_tree, eval_probs, tmp_path / "bad.csv", "--threads", "0")
    assert r.exit_code == 2 and "--threads 0" in r.output and not (tmp_path / "bad.csv").exists()
