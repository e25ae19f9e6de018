"""people.py's grouping, the per-person rule, and ensemble.py's pairing of inputs with their runs."""
import itertools
import json

import numpy as np
import pandas as pd
import pytest

from maskfold.blending import rules
from maskfold.labels import PROB_COLS, encode
from maskfold.people import grouping
from maskfold.probs import write_probs

import people
from conftest import fake_run, invoke, person_probs, run_ensemble

# ---------------------------------------------------------------- the per-person rule

def test_mask_assignment_is_the_best_of_every_choice():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(30, 7, 3))
    got = rules.assign_masks(c)
    for person, masks in zip(c, got):
        best = max(itertools.permutations(range(7), 2),
                   key=lambda jk: person[:, 0].sum() + person[jk[0], 1] - person[jk[0], 0] + person[jk[1], 2]
                   - person[jk[1], 0])
        assert sorted(masks.tolist()) == [0, 0, 0, 0, 0, 1, 2]
        assert (masks[best[0]], masks[best[1]]) == (1, 2)


def test_per_person_rule_corrects_gender_age_and_masks():
    masks = [0, 0, 0, 0, 0, 1, 2]
    # person A: one photo calls her male, one calls a worn mask 'not worn'; person B: one photo says old
    a = person_probs(masks, [1] * 7, [1] * 7, {2: encode(0, 0, 1), 4: encode(2, 1, 1)})
    b = person_probs(masks, [0] * 7, [0] * 7, {6: encode(2, 0, 2)})
    p = np.vstack([a, b])
    groups = np.repeat([0, 1], 7)
    truth = np.concatenate([encode(masks, [1] * 7, [1] * 7), encode(masks, [0] * 7, [0] * 7)])
    alone = rules.answers(p)
    assert (alone != truth).sum() == 3
    assert rules.answers(p, 0.0, groups, 7).tolist() == truth.tolist()


def test_one_confident_photo_does_not_outvote_six():
    """Six photos at p(female) = 0.9 and one at 1e-6: the person is female, except under the product of the
    photos' beliefs ("log"), which one photo can veto."""
    p = np.zeros((7, 18))
    for i in range(7):
        female = 1e-6 if i == 6 else 0.9
        mask = [0, 0, 0, 0, 0, 1, 2][i]
        p[i, encode(mask, 1, 1)] = female
        p[i, encode(mask, 0, 1)] = 1 - female
    groups = np.zeros(7, int)
    for vote in ("mean", "clipped", "vote"):
        assert (rules.answers(p, 0.0, groups, 7, vote) // 3 % 2 == 1).all(), vote
    assert (rules.answers(p, 0.0, groups, 7, "log") // 3 % 2 == 0).all()


def test_incomplete_people_keep_their_masks_per_photo():
    """Five photos of a person: gender and age decided together, masks left to each photo (two 'not worn'
    stay two)."""
    p = person_probs([0, 0, 2, 2, 1], [1] * 5, [0] * 5, {0: encode(0, 0, 0)})
    got = rules.answers(p, 0.0, np.zeros(5, int), 7)
    assert got.tolist() == encode([0, 0, 2, 2, 1], [1] * 5, [0] * 5).tolist()
    assert rules.answers(p, 0.0, np.full(5, -1), 7).tolist() == rules.answers(p).tolist()  # ungrouped: alone


# ---------------------------------------------------------------- grouping

def test_grouping_recovers_people_from_noisy_looks():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 64))
    person = np.repeat(np.arange(40), 7)
    F = centres[person] + rng.normal(scale=0.9, size=(280, 64))
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    order = rng.permutation(280)
    label = grouping.group(F[order].astype(np.float32), 7)
    assert np.bincount(label).tolist() == [7] * 40
    assert grouping.purity(label, person[order]) == 1.0
    assert grouping.purity(np.arange(280) // 7, person[order]) < 0.1  # the shuffled order alone is no grouping


def test_a_folder_of_incomplete_people_is_not_forced_into_sevens():
    rng = np.random.default_rng(2)
    sizes = [7, 5, 3, 7, 2, 6]
    centres = rng.normal(size=(len(sizes), 64))
    person = np.repeat(np.arange(len(sizes)), sizes)
    F = centres[person] + rng.normal(scale=0.5, size=(len(person), 64))
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    label = grouping.group(F.astype(np.float32), 7)
    assert np.bincount(label).max() <= 7 and grouping.purity(label, person) == 1.0


def test_people_py_on_demo_photos(demo_tree, tmp_path):
    r = invoke(people.app, demo_tree / "eval" / "images", "-o", tmp_path / "people.csv", "--info",
               demo_tree / "eval" / "info.csv", "--truth", demo_tree / "eval" / "people_truth.csv", "--preview",
               tmp_path / "people.jpg")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["purity"] == 1.0 and s["sizes"] == {"7": 3} and s["share_in_groups_of_size"] == 1.0
    df = pd.read_csv(tmp_path / "people.csv")
    assert list(df.columns) == ["ImageID", "group", "size", "sure", "margin"] and len(df) == 21
    assert (tmp_path / "people.jpg").stat().st_size > 10_000 and (tmp_path / "people.csv.json").is_file()
    r = invoke(people.app, demo_tree / "train" / "images", "--flatten", "-o", tmp_path / "train.csv")
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["photos"] == 84 and s["purity"] >= 0.95, s


def test_people_py_size_and_preview_options(demo_tree, tmp_path):
    from PIL import Image
    sheets = {}
    for groups in (2, 5):
        r = invoke(people.app, demo_tree / "eval" / "images", "-o", tmp_path / f"p{groups}.csv", "--size", "3",
                   "--preview", tmp_path / f"p{groups}.jpg", "--preview-groups", groups)
        assert r.exit_code == 0, r.output
        df = pd.read_csv(tmp_path / f"p{groups}.csv")
        assert df.groupby("group").size().max() <= 3 and df["group"].nunique() >= 7
        sheets[groups] = Image.open(tmp_path / f"p{groups}.jpg").size
    assert sheets[2][0] == sheets[5][0] and sheets[2][1] < sheets[5][1]  # one row per group, 3 photos wide


@pytest.mark.parametrize("case", ["one photo", "no faces"])
def test_people_py_on_odd_folders(tmp_path, case):
    from PIL import Image
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(1 if case == "one photo" else 9):
        Image.new("RGB", (384, 512), (40 * (i % 5), 128, 200 - 20 * i)).save(folder / f"{i:040x}.jpg")
    r = invoke(people.app, folder, "-o", tmp_path / "people.csv")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "people.csv")
    assert len(df) == (1 if case == "one photo" else 9) and df.groupby("group").size().max() <= 7



def test_people_py_matches_info_ids_by_name_then_stem_and_refuses_what_it_cannot(tmp_path):
    """info.csv names raw photos (.png), the folder holds their crops (.jpg); a missing or ambiguous photo is
    one line and nothing written."""
    from PIL import Image
    folder = tmp_path / "crops"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (48, 64), (60 * i, 90, 30)).save(folder / f"{i}.jpg")
    info = tmp_path / "info.csv"
    pd.DataFrame({"ImageID": ["2.png", "0.png", "1.jpg"], "ans": 0}).to_csv(info, index=False)
    r = invoke(people.app, folder, "-o", tmp_path / "ok.csv", "--info", info)
    assert r.exit_code == 0, r.output
    assert pd.read_csv(tmp_path / "ok.csv")["ImageID"].tolist() == ["2.jpg", "0.jpg", "1.jpg"]
    pd.DataFrame({"ImageID": ["2.png", "7.png"], "ans": 0}).to_csv(info, index=False)
    r = invoke(people.app, folder, "-o", tmp_path / "missing.csv", "--info", info)
    assert r.exit_code == 2 and f"1 image(s) of {info} missing, first 7.png" in r.stderr
    Image.new("RGB", (48, 64)).save(folder / "2.bmp")
    r = invoke(people.app, folder, "-o", tmp_path / "twice.csv", "--info", info)
    assert r.exit_code == 2 and "more than one file for 2.png (2.bmp, 2.jpg)" in r.stderr
    assert not (tmp_path / "missing.csv").exists() and not (tmp_path / "twice.csv").exists()

# ---------------------------------------------------------------- ensemble: records, pairing, --people

def test_cv_scores_the_recomposed_blend_it_submits(blend_runs):
    tmp, inputs, runs, truth, _ = blend_runs
    r, plain = run_ensemble(tmp, inputs, "--truth", tmp / "truth.csv")
    assert r.exit_code == 0, r.output
    r, s = run_ensemble(tmp, inputs, "--mask-from", "1", "--gender-from", "2", "--truth", tmp / "truth.csv",
                        "--overwrite")
    assert s["test_f1"] == 1.0 and s["cv_f1"] == 1.0 and plain["cv_f1"] < 1.0  # the OOF is recomposed too
    assert s["cv"][str(runs["A"])] < 1.0 and s["cv"][str(runs["B"])] < 1.0


@pytest.mark.parametrize("case,needle", [
    ("count", "2 inputs but 1 --oof runs"),
    ("order", "was predicted by"),
    ("no record", "no record of its runs"),
    ("stale", "describes another version"),
])
def test_inputs_and_oof_runs_that_do_not_pair_are_refused(blend_runs, case, needle):
    tmp, inputs, runs, _, _ = blend_runs
    extra = ["--bias"]
    if case == "count":
        extra += ["--oof", runs["A"]]
    elif case == "order":
        extra += ["--oof", runs["B"], "--oof", runs["A"]]
    elif case == "no record":
        (tmp / "B.csv.json").unlink()
    else:
        inputs[1].write_text(inputs[1].read_text().replace("0.8", "0.80"))
    r, _ = run_ensemble(tmp, inputs, *extra)
    assert r.exit_code == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp / "sub.csv").exists()


def test_an_input_without_a_record_pairs_with_oof_given_in_order(blend_runs):
    tmp, inputs, runs, _, _ = blend_runs
    for f in inputs:
        (tmp / f"{f.name}.json").unlink()
    r, s = run_ensemble(tmp, inputs, "--oof", runs["A"], "--oof", runs["B"], "--mask-from", "1", "--gender-from", "2")
    assert r.exit_code == 0 and s["cv_f1"] == 1.0
    r, s = run_ensemble(tmp, inputs, "--overwrite")
    assert r.exit_code == 0 and "cv_f1" not in s and "no CV score" in r.stderr


def write_people(path, keys, groups):
    pd.DataFrame({"ImageID": keys, "group": groups}).to_csv(path, index=False)
    return path


def erring_run(tmp, truth, paths) -> pd.Series:
    """Run C, whose photos err here and there, as real ones do (each person's others outvote the error), with
    its out-of-fold file and its eval probabilities C.csv; returns the eval ImageIDs."""
    masks = [0, 0, 0, 0, 0, 1, 2]
    p = np.vstack([person_probs(masks, [1] * 7, [1] * 7, {2: encode(0, 0, 1), 4: encode(2, 1, 1)}),
                   person_probs(masks, [0] * 7, [1] * 7, {6: encode(2, 0, 2)})])
    oof = pd.DataFrame(p, columns=PROB_COLS)
    oof.insert(0, "fold", [0] * 7 + [1] * 7)
    oof.insert(0, "label", truth)
    oof.insert(0, "path", paths)
    run = fake_run(tmp / "runs", "C", oof, tmp / "work" / "folds.csv")
    ids = pd.read_csv(tmp / "info.csv")["ImageID"]
    df = pd.DataFrame(p, columns=PROB_COLS)
    df.insert(0, "ImageID", ids)
    write_probs(df, tmp / "C.csv", {"runs": [{"run": str(run), "folds": [0, 1]}]})
    return ids


def test_people_rule_is_scored_out_of_fold_and_applied_only_if_it_gains(blend_runs):
    tmp, _, _, truth, paths = blend_runs
    ids = erring_run(tmp, truth, paths)
    keys = [p.split("/", 1)[1] for p in paths]  # person folder / file, as people.py --flatten names them
    right = write_people(tmp / "people.csv", ids, np.repeat([0, 1], 7))
    oof_right = write_people(tmp / "train_people.csv", keys, np.repeat([0, 1], 7))
    r, s = run_ensemble(tmp, [tmp / "C.csv"], "--people", right, "--oof-people", oof_right, "--truth",
                        tmp / "truth.csv")
    assert r.exit_code == 0, r.output
    assert s["people_applied"] and s["people_cv"]["f1_people"] == 1.0 > s["people_cv"]["f1"]
    assert s["test_f1_with_people"] == 1.0 > s["test_f1_without_people"] and s["test_f1"] == 1.0
    assert s["people_changed"] == 3 and "3 of 14 answers change" in r.stderr
    mixed = write_people(tmp / "mixed.csv", keys, np.arange(14) % 2)  # every group two people's photos
    r, s = run_ensemble(tmp, [tmp / "C.csv"], "--people", right, "--oof-people", mixed, "--truth", tmp / "truth.csv",
                        "--overwrite")
    assert not s["people_applied"] and "not applied: it loses out of fold" in r.stderr
    assert s["test_f1"] == s["test_f1_without_people"] < 1.0


@pytest.mark.parametrize("case,needle", [
    ("missing", "1 missing"), ("unknown", "1 unknown"), ("too big", "has 8 photos, more than --group-size 7"),
])
def test_bad_people_csv_is_refused(blend_runs, case, needle):
    tmp, inputs, _, _, _ = blend_runs
    ids = pd.read_csv(tmp / "info.csv")["ImageID"].tolist()
    groups = list(np.repeat([0, 1], 7))
    if case == "missing":
        ids, groups = ids[1:], groups[1:]
    elif case == "unknown":
        ids, groups = ids + ["f" * 40 + ".jpg"], groups + [2]
    else:
        groups = [0] * 8 + [1] * 6
    r, _ = run_ensemble(tmp, inputs, "--people", write_people(tmp / "bad.csv", ids, groups))
    assert r.exit_code == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp / "sub.csv").exists()


def test_groups_people_py_is_not_sure_of_are_answered_photo_by_photo(blend_runs):
    tmp, _, _, truth, paths = blend_runs
    masks = [0, 0, 0, 0, 0, 1, 2]
    p = np.vstack([person_probs(masks, [1] * 7, [1] * 7, {2: encode(0, 0, 1)}),
                   person_probs(masks, [0] * 7, [1] * 7, {6: encode(2, 0, 2)})])
    ids = pd.read_csv(tmp / "info.csv")["ImageID"]
    df = pd.DataFrame(p, columns=PROB_COLS)
    df.insert(0, "ImageID", ids)
    df.to_csv(tmp / "C.csv", index=False)
    groups = pd.DataFrame({"ImageID": ids, "group": np.repeat([0, 1], 7), "sure": np.repeat([0.2, -0.1], 7)})
    groups.to_csv(tmp / "people.csv", index=False)
    r, s = run_ensemble(tmp, [tmp / "C.csv"], "--people", tmp / "people.csv", "--truth", tmp / "truth.csv")
    assert r.exit_code == 0, r.output
    assert s["people_changed"] == 1 and "7 of 14 photos in groups sure enough" in r.stderr  # person 0 only
    r, s = run_ensemble(tmp, [tmp / "C.csv"], "--people", tmp / "people.csv", "--min-sure", "-1", "--overwrite")
    assert s["people_changed"] == 2


def test_person_vote_option_reaches_the_rule(blend_runs):
    """One photo at p(female) = 1e-6 among six at 0.9: --person-vote mean answers female, log male."""
    tmp = blend_runs[0]
    ids = pd.read_csv(tmp / "info.csv")["ImageID"]
    p = np.zeros((14, 18))
    for i in range(14):
        mask = [0, 0, 0, 0, 0, 1, 2][i % 7]
        female = 1e-6 if i == 6 else 0.9
        p[i, encode(mask, 1, 1)], p[i, encode(mask, 0, 1)] = female, 1 - female
    df = pd.DataFrame(p, columns=PROB_COLS)
    df.insert(0, "ImageID", ids)
    df.to_csv(tmp / "V.csv", index=False)
    pd.DataFrame({"ImageID": ids, "group": np.repeat([0, 1], 7), "sure": 0.5}).to_csv(tmp / "pv.csv", index=False)
    genders = {}
    for vote in ("mean", "log"):
        r, _ = run_ensemble(tmp, [tmp / "V.csv"], "--people", tmp / "pv.csv", "--person-vote", vote, "--overwrite")
        assert r.exit_code == 0, r.output
        genders[vote] = pd.read_csv(tmp / "sub.csv")["ans"].to_numpy()[:7] // 3 % 2
    assert (genders["mean"] == 1).all() and (genders["log"] == 0).all()
    r, _ = run_ensemble(tmp, [tmp / "V.csv"], "--person-vote", "median", "--overwrite")
    assert r.exit_code == 2 and "'--person-vote'" in r.output and "'median' is not one of" in r.output


def room_mates(rng, pairs=12):
    """Pairs of people who share a room: their looks are one centre plus noise; in each pair one is a man, one a
    woman, and each person has one photo without a mask and one worn wrongly, as the model answers surely."""
    centres = rng.normal(size=(pairs, 64))
    person = np.repeat(np.arange(2 * pairs), 7)
    F = centres[person // 2] + rng.normal(scale=0.35, size=(len(person), 64))
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    masks = np.tile([0, 0, 0, 0, 0, 1, 2], 2 * pairs)
    male = person % 2 == 0
    answers = {"mask": np.eye(3)[masks] * 0.995 + 0.005 / 3,
               "gender": np.where(male[:, None], [0.995, 0.005], [0.005, 0.995]),
               "age": np.full((len(person), 3), 1 / 3)}
    return F.astype(np.float32), person, masks, answers


def test_the_models_answers_keep_apart_room_mates_the_looks_cannot():
    rng = np.random.default_rng(5)
    F, person, masks, answers = room_mates(rng)
    order = rng.permutation(len(person))
    F, person, masks = F[order], person[order], masks[order]
    answers = {t: v[order] for t, v in answers.items()}
    plain = grouping.group(F, 7)
    assert grouping.purity(plain, person) < 0.5  # two people per room: the looks alone cannot tell them
    told = grouping.group(F, 7, answers=answers)
    assert grouping.purity(told, person) == 1.0
    for g in np.unique(told):  # never two 'no mask' photos, never both genders in one group
        assert (masks[told == g] == 2).sum() <= 1 and len(set(person[told == g] % 2)) == 1
    # the hard rules alone (no answer features) already keep the genders apart
    hard = grouping.group(F, 7, answers=answers, weight=0.0)
    assert all(len(set(person[hard == g] % 2)) == 1 for g in np.unique(hard))


def test_people_py_probs_and_also_group_both_folders_in_one_run(demo_tree, tmp_path, monkeypatch):
    from maskfold.labels import NUM_CLASSES

    ids = pd.read_csv(demo_tree / "eval" / "info.csv")["ImageID"]
    probs = pd.DataFrame(np.full((len(ids), NUM_CLASSES), 1 / NUM_CLASSES), columns=PROB_COLS)
    probs.insert(0, "ImageID", ids)
    probs.to_csv(tmp_path / "probs.csv", index=False)
    seen = []
    real = grouping.group
    monkeypatch.setattr(grouping, "group", lambda F, size, **kw: seen.append((len(F), kw)) or real(F, size, **kw))
    r = invoke(people.app, demo_tree / "eval" / "images", "-o", tmp_path / "people.csv", "--info",
               demo_tree / "eval" / "info.csv", "--probs", tmp_path / "probs.csv", "--also",
               demo_tree / "train" / "images", "--also-out", tmp_path / "train.csv", "--truth",
               demo_tree / "eval" / "people_truth.csv")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["purity"] == 1.0 and s["mixed_groups"] == 0
    # one grouping of both folders, by looks alone and with the answers: the --also photos' purity chooses
    assert [n for n, _ in seen] == [21 + 84] * 2 and seen[0][1]["answers"] is None
    assert seen[1][1]["answers"]["gender"].shape == (105, 2)
    assert s["answers"]["checked"] and {"also_purity_with_answers", "also_purity_looks_alone"} <= set(s["answers"])
    train = pd.read_csv(tmp_path / "train.csv")
    assert len(train) == 84 and train["ImageID"].str.contains("/").all()
    assert s["also_photos"] == 84 and s["estimated_purity"] >= 0.95 and "estimated_purity" in \
        json.loads((tmp_path / "train.csv.json").read_text())
    assert len(pd.read_csv(tmp_path / "people.csv")) == 21
    r = invoke(people.app, demo_tree / "eval" / "images", "-o", tmp_path / "p2.csv", "--also",
               demo_tree / "train" / "images")
    assert r.exit_code == 2 and "--also-out" in r.output
    probs.iloc[:5].to_csv(tmp_path / "few.csv", index=False)
    r = invoke(people.app, demo_tree / "eval" / "images", "-o", tmp_path / "p3.csv", "--info",
               demo_tree / "eval" / "info.csv", "--probs", tmp_path / "few.csv")
    assert r.exit_code == 2 and "no probabilities for 16 of the photos" in r.output


def test_min_sure_chosen_out_of_fold_needs_the_check_and_keeps_unsure_groups_apart(blend_runs):
    tmp, _, _, truth, paths = blend_runs
    ids = erring_run(tmp, truth, paths)
    keys = [x.split("/", 1)[1] for x in paths]
    pd.DataFrame({"ImageID": ids, "group": np.repeat([0, 1], 7), "sure": 0.3}).to_csv(tmp / "people.csv", index=False)
    r, _ = run_ensemble(tmp, [tmp / "C.csv"], "--people", tmp / "people.csv", "--fit-min-sure")
    assert r.exit_code == 2 and "needs --oof-people" in r.output
    # train groups: both right, person 0's surer; the chosen floor must keep the rule where it is right
    pd.DataFrame({"ImageID": keys, "group": np.repeat([0, 1], 7), "sure": np.repeat([0.4, 0.2], 7)}).to_csv(
        tmp / "train_people.csv", index=False)
    r, s = run_ensemble(tmp, [tmp / "C.csv"], "--people", tmp / "people.csv", "--oof-people",
                        tmp / "train_people.csv", "--fit-min-sure", "--truth", tmp / "truth.csv", "--overwrite")
    assert r.exit_code == 0, r.output
    # every group chosen (no floor at all): said in words, and no -Infinity, which is not JSON
    assert s["min_sure"] is None and s["min_sure_groups"] == "every group" and s["people_applied"]
    assert "chosen out of fold" in r.stderr

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))

    strict(r.stdout.strip().splitlines()[-1])
    assert strict((tmp / "sub.csv.json").read_text())["min_sure"] is None
    assert "grouped on their own" in r.stderr  # the check's groups were not made with the eval photos
