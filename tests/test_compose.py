"""Where the rounds meet: runs on different labels, --aug files, --init-from, age fixes and --old-age, fitted
weights, --config, TTA, per-person options, grouping rules; each gives the right answer or one line."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskfold.blending import choices, recipe
from maskfold.blending.oof import OOF
from maskfold.labels import encode, task_f1, train_targets
from maskfold.people import grouping
from maskfold.probs import write_probs

import ensemble
import people
import predict
import pseudo
import train
from conftest import fake_run, invoke, person_probs, run_ensemble

TINY = ("--model", "test_resnet", "--no-pretrained", "--epochs", "1", "--img-size", "32", "24", "--batch-size", "16",
        "--workers", "0", "--device", "cpu")


def one_line(r, needle):
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output

# ---------------------------------------------------------------- blends of runs trained on different labels


def relabelled(tmp: Path, runs: dict, truth: np.ndarray, paths: list[str]) -> tuple[Path, Path, Path]:
    """Run F: A's answers, trained on labels where person 0 is male (a fixed folds.csv); its input F.csv; and
    folds_fixed.csv with those labels, beside the folds.csv the runs name."""
    fixed = truth.copy()
    fixed[:7] = encode(fixed[:7] // 6, 0, fixed[:7] % 3)
    oof = pd.concat([pd.read_csv(f) for f in sorted(runs["A"].glob("fold*/oof.csv"))]).reset_index(drop=True)
    oof["label"] = fixed
    run = fake_run(tmp / "runs", "F", oof, tmp / "work" / "folds_fixed.csv")
    a = pd.read_csv(tmp / "A.csv")
    write_probs(a, tmp / "F.csv", {"runs": [{"run": str(run), "folds": [0, 1]}]})
    folds = pd.DataFrame({"path": paths, "person": [p.split("/")[1] for p in paths], "age": 40,
                          "mask_label": fixed // 6, "gender_label": fixed // 3 % 2, "label": fixed,
                          "fold": oof["fold"]})
    (tmp / "work").mkdir(exist_ok=True)
    folds.to_csv(tmp / "work" / "folds_fixed.csv", index=False)
    return run, tmp / "F.csv", tmp / "work" / "folds_fixed.csv"


def test_a_blend_of_runs_on_different_labels_is_scored_against_the_labels_named(blend_runs):
    tmp, inputs, runs, truth, paths = blend_runs
    _, f_csv, folds_fixed = relabelled(tmp, runs, truth, paths)
    r, _ = run_ensemble(tmp, [inputs[0], f_csv])
    one_line(r, "trained on different labels")
    assert "--labels" in r.output and not (tmp / "sub.csv").exists()
    cvs = []
    for order in ([inputs[0], f_csv], [f_csv, inputs[0]]):
        r, s = run_ensemble(tmp, order, "--labels", folds_fixed, "--overwrite")
        assert r.exit_code == 0, r.output
        cvs.append((s["cv_f1"], sorted(s["cv"].values())))
    assert cvs[0] == cvs[1]  # the same runs, the same labels: the same CV, whichever input comes first
    r, s = run_ensemble(tmp, [f_csv], "--overwrite")  # alone, F is scored against its own (fixed) labels
    r2, s2 = run_ensemble(tmp, [f_csv], "--labels", folds_fixed, "--overwrite")
    assert s["cv_f1"] == s2["cv_f1"]
    pd.read_csv(folds_fixed).iloc[:-1].to_csv(tmp / "short.csv", index=False)
    r, _ = run_ensemble(tmp, [inputs[0], f_csv], "--labels", tmp / "short.csv", "--overwrite")
    one_line(r, "are not in it")


def test_fitted_weights_on_runs_split_differently_are_refused(blend_runs):
    tmp, inputs, runs, _, _ = blend_runs
    for f in runs["B"].glob("fold*/oof.csv"):  # B's folds the other way round: another split
        df = pd.read_csv(f)
        df["fold"] = 1 - df["fold"]
        df.to_csv(f, index=False)
    r, _ = run_ensemble(tmp, inputs, "--fit-weights", "blend")
    one_line(r, "split differently")
    assert "--fit-weights" in r.output

# ---------------------------------------------------------------- fitted weights: what is applied is what is scored


def planted_oof(n=600, seed=0):
    from test_predict_ensemble import planted

    y, inputs, folds = planted(n, seed)
    return OOF(["good", "wrong", "mask"], inputs, y, folds, [f"/p/{i}.jpg" for i in range(n)])


def test_fitted_weights_are_scored_held_out_and_recorded_as_applied(monkeypatch):
    cv = planted_oof()
    o = ensemble.EnsembleOptions(inputs=[Path("a"), Path("b"), Path("c")], info=Path("i"), out=Path("o"),
                                 fit_weights="blend")
    base = o.recipe()
    fit = choices.choose_weights("blend", cv, base)
    chosen, p, fw = fit.recipe, fit.p_oof, fit.record
    held = recipe.held_out_recipes(base, cv.inputs, cv.y, cv.folds, "blend")
    assert fw["applied"] and fw["applied_weights"] == chosen.describe() != base.describe()
    assert np.allclose(p, held)  # the CV, bias and per-person checks see the held-out answers
    assert fw["held_out_f1"] == round(task_f1(cv.y, p.argmax(1))["f1"], 5)
    assert fw["fitted_in_sample_f1"] >= fw["held_out_f1"]
    # a fit on every fold that chooses equal weights changes nothing: not "applied", whatever the held-out gain
    monkeypatch.setattr(recipe, "fit_recipe", lambda base, probs, y, how: base)
    fit = choices.choose_weights("blend", cv, base)
    chosen, p = fit.recipe, fit.p_oof
    assert not fit.record["applied"] and "equal weights" in fit.record["why"]
    assert chosen is base and np.allclose(p, base.combine(cv.inputs))

# ---------------------------------------------------------------- options that only work with others


@pytest.mark.parametrize("extra, flag", [
    (["--group-size", "5"], "--group-size"), (["--person-vote", "log"], "--person-vote"),
    (["--min-sure", "0.2"], "--min-sure"), (["--oof-people", "x.csv"], "--oof-people"),
])
def test_per_person_options_without_people_are_refused(blend_runs, extra, flag):
    tmp, inputs, _, _, _ = blend_runs
    r, _ = run_ensemble(tmp, inputs, *extra)
    one_line(r, f"{flag} shapes the per-person answers")


def test_min_sure_beside_fit_min_sure_is_refused(blend_runs):
    tmp, inputs, _, _, _ = blend_runs
    pd.DataFrame({"ImageID": pd.read_csv(tmp / "info.csv")["ImageID"], "group": np.repeat([0, 1], 7)}).to_csv(
        tmp / "people.csv", index=False)
    r, _ = run_ensemble(tmp, inputs, "--people", tmp / "people.csv", "--fit-min-sure", "--min-sure", "0.1")
    one_line(r, "--fit-min-sure chooses --min-sure")


def test_pseudo_min_photos_follows_the_group_size():
    o = pseudo.PseudoOptions(inputs=[Path("p.csv")], info=Path("i"), images=Path("e"), out=Path("o"),
                             people=Path("people.csv"), group_size=5)
    pseudo.check(o)  # refused before: the default --min-photos 7 exceeded --group-size 5
    assert pseudo.min_photos(o) == 5


def test_pseudo_refuses_groups_made_with_every_folds_answers(tmp_path):
    people_csv = tmp_path / "people.csv"
    people_csv.write_text("ImageID,group\n")
    Path(f"{people_csv}.json").write_text(json.dumps({"probs": True}))
    with pytest.raises(pseudo.UserError, match="by looks alone"):
        pseudo.check_looks_alone(people_csv)
    Path(f"{people_csv}.json").write_text(json.dumps({"probs": False}))
    pseudo.check_looks_alone(people_csv)

# ---------------------------------------------------------------- grouping: the rules hold, the answers must help


def test_completing_whole_people_never_puts_a_photo_where_its_counts_forbid():
    """Four photos in groups of two: three of them a sure 'no mask'. The only allowed pair forms; the other two
    'no mask' photos stay apart instead of being forced together."""
    F = np.eye(4, dtype=np.float32)
    tok = np.zeros((4, 4), np.int32)
    tok[:3, 0] = 1
    label = grouping.complete(F, np.arange(4), 2, tok)
    for g in np.unique(label):
        assert grouping.allowed(tok[label == g].sum(0))
    assert len(np.unique(label)) == 3


def test_the_models_answers_are_used_only_where_they_raise_the_checked_purity(tmp_path):
    """Looks that tell every person apart, answers surely wrong (each person 'sure male' on some photos and 'sure
    female' on others): grouped with them, people split. With --also photos to check on, looks alone win."""
    rng = np.random.default_rng(0)
    n_people = 8
    person = np.repeat(np.arange(n_people), 7)
    centres = rng.normal(size=(n_people, 32))
    F = (centres[person] + rng.normal(scale=0.1, size=(len(person), 32))).astype(np.float32)
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    male = np.tile([1, 1, 1, 0, 0, 0, 0], n_people).astype(bool)
    answers = {"mask": np.full((len(person), 3), 1 / 3), "age": np.full((len(person), 3), 1 / 3),
               "gender": np.where(male[:, None], [0.999, 0.001], [0.001, 0.999])}
    also = [f"p{p}/{i}.jpg" for p, i in zip(person[28:], range(28))]  # the last 4 people: the check's train photos
    o = people.PeopleOptions(images=tmp_path, out=tmp_path / "p.csv")
    label, checked = people.choose_grouping(o, F, [], answers, also)
    assert checked["checked"] and not checked["answers_used"]
    assert checked["also_purity_looks_alone"] == 1.0 > checked["also_purity_with_answers"]
    assert grouping.purity(label, person) == 1.0
    label, checked = people.choose_grouping(o, F, [], answers, [])  # nothing to check on: as asked
    assert checked["answers_used"] and not checked["checked"]

# ---------------------------------------------------------------- age fixes and --old-age


def test_a_fixed_age_band_reaches_training_at_any_old_age():

    df = pd.DataFrame({"mask_label": [0, 0, 0, 0], "gender_label": [0, 0, 0, 0], "age": [59, 45, 58, 59],
                       "age_label": [1, 2, 1, 1], "fix": ["age", "photo", "", ""]})
    # row 0: an age fix out of 60+ to 59; row 1: a photo fix to the old band; rows 2-3: as labelled
    assert train_targets(df, 58).tolist() == [1, 2, 2, 2]
    assert train_targets(df, 60).tolist() == [1, 2, 1, 1]


def test_the_audit_reads_ages_as_the_runs_trained_them():
    from maskfold.labelling.label_audit import person_rows, suggest_age

    rows = pd.DataFrame({"gender_label": [0] * 7, "age_label": [1] * 7, "age": [58] * 7, "label": [1] * 7,
                         "stem": ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]})
    m = {"gender": np.tile([0.9, 0.1], (7, 1)), "age": np.tile([0.1, 0.1, 0.8], (7, 1)),
         "mask": np.tile([0.9, 0.05, 0.05], (7, 1))}
    assert [r["field"] for r in person_rows("x", rows, m, old_age=60)] == ["age"]
    assert person_rows("x", rows, m, old_age=58) == []  # a 58-year-old the runs learnt as 60+: no doubt
    # a fix out of 60+ must stay out under --old-age 58, and one into 60+ must be 60+ under both
    assert suggest_age(62, 1, old_age=58) == 57 and suggest_age(50, 2, old_age=58) == 60
    assert suggest_age(62, 1) == 59

# ---------------------------------------------------------------- train.py: --aug files, --init-from, --config


def aug_file(path, *steps):
    import albumentations as A

    A.save(A.Compose(list(steps)), str(path), data_format="json")
    return path


def test_aug_files_that_normalise_or_resize_are_refused(tiny_run, tmp_path):
    import albumentations as A

    folds, _ = tiny_run
    for name, step, needle in (("n.json", A.Normalize(), "drop its Normalize"),
                               ("r.json", A.Resize(64, 48), "turns a 32x24 uint8 crop into 64x48"),
                               ("c.json", A.RandomCrop(16, 12, p=0.1), "into 16x12")):
        r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--aug", aug_file(tmp_path / name, step))
        one_line(r, needle)
    assert not (tmp_path / "runs").exists()
    from maskfold.training.augment import check_aug_file

    check_aug_file(str(aug_file(tmp_path / "ok.json", A.HorizontalFlip(), A.RandomResizedCrop((32, 24)))), (32, 24))


def test_init_from_a_checkpoint_that_saw_this_folds_people_is_refused(tiny_run, tmp_path):
    folds, run = tiny_run
    other = tmp_path / "elsewhere.pt"
    shutil.copy(run / "fold0" / "best.pt", other)  # without its config.json: the checkpoint's own record
    for source in (run / "fold0" / "best.pt", other):
        r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--fold", "1", "--init-from", source)
        one_line(r, "trained with fold 0 held out, so on fold 1's validation people")
    r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--fold", "1", "--init-from",
               run / "fold1" / "best.pt")
    assert r.exit_code == 0, r.output


def test_config_of_a_run_keeps_its_folder_and_oof_tta_and_a_path_can_be_unset(tiny_run, tmp_path):
    folds, run = tiny_run
    shared = json.loads((run / "config.json").read_text())
    assert {"out", "oof_tta", "amp_dtype", "workers"} <= set(shared) and "fold" not in shared
    out = tmp_path / "work" / "runs"
    r = invoke(train.app, folds, *TINY, "--out", out, "--oof-tta", "none", "--run-name", "first")
    assert r.exit_code == 0, r.output
    r = invoke(train.app, "--config", out / "first" / "config.json", "--run-name", "second", "--fold", "1")
    assert r.exit_code == 0, r.output
    second = json.loads((out / "second" / "fold1" / "config.json").read_text())
    assert second["oof_tta"] == "none" and Path(second["out"]) == out  # not runs/ in the working folder
    r = invoke(train.app, "--config", out / "first" / "config.json", "--run-name", "first", "--fold", "1",
               "--oof-tta", "flip")
    one_line(r, "oof_tta")  # a run's folds share their out-of-fold TTA
    cfg = train.TrainConfig(folds_csv=folds, model="m", extra=Path("none"), init_from=Path("None"))
    assert cfg.extra is None and cfg.init_from is None
    r = invoke(train.app, "--config", tmp_path / "missing.json")
    one_line(r, "--config")


def test_an_input_predicted_with_other_views_than_its_oof_is_refused(tiny_run, demo_tree, tmp_path):
    _, run = tiny_run
    ev = demo_tree / "eval"
    r = invoke(predict.app, run, "--images", ev / "images", "--info", ev / "info.csv", "-o", tmp_path / "p.csv",
               "--tta", "none")
    assert r.exit_code == 0, r.output
    r = invoke(ensemble.app, tmp_path / "p.csv", "--info", ev / "info.csv", "-o", tmp_path / "s.csv")
    one_line(r, "predicted with --tta none, but the out-of-fold answers")
    assert "--oof-tta flip" in r.output and not (tmp_path / "s.csv").exists()

# ---------------------------------------------------------------- a round that changes nothing is not trained again


def test_a_fold_whose_labels_and_options_are_a_finished_folds_is_copied_not_trained(tiny_run, demo_tree, tmp_path):
    import split

    folds, run = tiny_run
    train_dir = demo_tree / "train"
    fixes = tmp_path / "fixes.csv"
    person = pd.read_csv(folds)["person"].iloc[0]
    pd.DataFrame([(person, "", "gender", "x", "female", 0.5, "")],  # the audit accepted nothing
                 columns=["person", "path", "field", "label", "suggested", "sure", "apply"]).to_csv(fixes, index=False)
    same = folds.parent / "folds_same.csv"
    r = invoke(split.app, train_dir / "train.csv", train_dir / "images", "-o", same, "--folds", "2", "--fixes", fixes)
    assert r.exit_code == 0 and "a round trained on it repeats the one before" in r.output, r.output
    out = tmp_path / "runs"
    shutil.copytree(run, out / run.name)  # beside the session's run, not in its folder
    run = out / run.name
    args = (*TINY, "--out", out, "--run-name", "same_labels", "--fold", "0")
    r = invoke(train.app, same, *args)
    assert r.exit_code == 0 and "copied to" in r.output, r.output
    copied = out / "same_labels" / "fold0"
    assert (copied / "best.pt").read_bytes() == (run / "fold0" / "best.pt").read_bytes()
    assert json.loads((copied / "config.json").read_text())["copied_from"] == str((run / "fold0").resolve())
    r = invoke(train.app, same, *args, "--skip-done")  # finished now, like any fold
    assert r.exit_code == 0 and "is finished; skipped" in r.output
    # another seed, or other labels: trained
    r = invoke(train.app, same, *TINY, "--out", out, "--run-name", "other_seed", "--fold", "0", "--seed", "7")
    assert r.exit_code == 0 and "copied to" not in r.output and "best epoch" in r.output, r.output
    same.unlink()


def test_old_spellings_of_renamed_options_still_work_and_say_so(tiny_run, demo_tree, tmp_path):
    """--size, --folds (audit.py), --suspects, --people (demo.py) and --no-tta: one release more, with a note."""
    import audit
    import demo

    folds, run = tiny_run
    r = invoke(people.app, demo_tree / "eval" / "images", "-o", tmp_path / "p.csv", "--size", "7")
    assert r.exit_code == 0 and "--size is now --group-size" in r.output, r.output
    r = invoke(audit.app, run, "--folds", folds, "-o", tmp_path / "i.csv")
    assert r.exit_code == 0 and "--folds is now --folds-csv" in r.output, r.output
    r = invoke(audit.app, run, "-o", tmp_path / "j.csv")
    one_line(r, "--folds-csv FOLDS_CSV")
    r = invoke(demo.app, tmp_path / "d", "--people", "6", "--eval-people", "1", "--kind", "easy")
    assert r.exit_code == 0 and "--people is now --train-people" in r.output, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["train_people"] == 6
    ev = demo_tree / "eval"
    r = invoke(predict.app, run, "--images", ev / "images", "--info", ev / "info.csv", "-o", tmp_path / "n.csv",
               "--no-tta")
    assert r.exit_code == 0 and "--no-tta is now --tta none" in r.output, r.output
    assert json.loads((tmp_path / "n.csv.json").read_text())["tta"] == []


# ---------------------------------------------------------------- the recipe as a competitor runs it


def test_a_blend_below_its_best_input_says_so(blend_runs):
    """G is right on every photo, W surely wrong: their blend scores below G alone, and says to submit G."""
    tmp, _, _, truth, paths = blend_runs
    m, g, a = truth // 6, truth // 3 % 2, truth % 3
    ids = pd.read_csv(tmp / "info.csv")["ImageID"]
    inputs = []
    for name, p in (("G", person_probs(m, g, a, {})), ("W", person_probs((m + 1) % 3, 1 - g, a, {}, sure=0.95))):
        oof = pd.DataFrame(p, columns=[f"p{i}" for i in range(18)])
        oof.insert(0, "fold", [0] * 7 + [1] * 7)
        oof.insert(0, "label", truth)
        oof.insert(0, "path", paths)
        run = fake_run(tmp / "runs", name, oof, tmp / "work" / "folds.csv")
        df = pd.DataFrame(p, columns=[f"p{i}" for i in range(18)])
        df.insert(0, "ImageID", ids)
        write_probs(df, tmp / f"{name}.csv", {"runs": [{"run": str(run), "folds": [0, 1]}]})
        inputs.append(tmp / f"{name}.csv")
    r, s = run_ensemble(tmp, inputs)
    assert r.exit_code == 0, r.output
    assert s["cv_f1"] < s["cv_inputs"][0] == 1.0 and s["blend_below_input"] == 1
    assert "is below input 1's alone" in r.stderr and "--fit-weights blend" in r.stderr
    r, s = run_ensemble(tmp, inputs[:1], "--overwrite")  # one input: nothing to compare
    assert "is below input" not in r.stderr and "blend_below_input" not in s


def test_small_mistakes_get_their_line(tiny_run, demo_tree, tmp_path):
    from maskfold.cli import UserError, choose

    with pytest.raises(UserError, match="did you mean adamw"):
        choose("adamW", ["sgd", "adam", "adamw", "madgrad"], "--opt")
    folds, run = tiny_run
    ev = demo_tree / "eval"
    r = invoke(predict.app, run.parent, "--images", ev / "images", "--info", ev / "info.csv", "-o", tmp_path / "p.csv")
    one_line(r, "a folder of runs")
    assert f"e.g. {run}" in r.output
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(["path", "person", "age", "mask_label", "gender_label", "label", "fold"]) + "\n")
    r = invoke(train.app, empty, *TINY, "--out", tmp_path / "runs")
    one_line(r, "no rows")


def test_results_csv_forgets_a_deleted_run(tiny_run, tmp_path):
    folds, run = tiny_run
    out = tmp_path / "runs"
    shutil.copytree(run.parent, out)
    for name in ("a", "b"):
        r = invoke(train.app, folds, *TINY, "--out", out, "--run-name", name, "--fold", "0", "--seed", str(len(name)))
        assert r.exit_code == 0, r.output
    assert {"a", "b"} <= set(pd.read_csv(out / "results.csv")["run"])
    shutil.rmtree(out / "a")
    r = invoke(train.app, folds, *TINY, "--out", out, "--run-name", "b", "--fold", "1", "--seed", "1")
    assert r.exit_code == 0, r.output
    assert "a" not in set(pd.read_csv(out / "results.csv")["run"])
    assert "a" not in set(pd.read_csv(out / "summary.csv")["run"])
