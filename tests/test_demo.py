"""The harder demo: the real data's make-up, shared rooms and recorded label noise (its calibration is a
bench measurement, not a test)."""
import numpy as np
import pandas as pd
import pytest

from maskfold import hard_demo

import demo
from conftest import invoke


def test_hard_people_have_the_real_make_up():
    people = hard_demo.make_people(20000, np.random.default_rng(0), 0, ["a", "b"])
    ages = np.array([p["age"] for p in people])
    assert np.mean([p["gender"] == "female" for p in people]) == pytest.approx(0.61, abs=0.01)
    bands = np.array([(ages < 30).mean(), ((ages >= 30) & (ages < 60)).mean(), (ages >= 60).mean()])
    assert bands == pytest.approx([0.47, 0.45, 0.08], abs=0.01)
    assert set(ages[ages >= 60]) == {60} and ((ages == 58) | (ages == 59)).mean() > 0.03
    cue = np.array([p["age_cue"] for p in people])
    assert np.std(cue - ages) == pytest.approx(hard_demo.AGE_SPREAD, rel=0.05)  # a spread per person
    assert np.mean([p["looks_other"] for p in people]) == pytest.approx(hard_demo.LOOKS_OTHER, abs=0.01)


def test_some_people_share_a_room_and_differ_only_by_themselves():
    people = hard_demo.make_people(400, np.random.default_rng(1), 0, ["a"])
    settings = pd.Series([(tuple(p["bg"]), tuple(p["tint"]), p["face_w"]) for p in people])
    shared = settings.duplicated(keep=False)
    assert 0.2 < shared.mean() < 0.4
    rooms = settings[shared].groupby(settings[shared]).groups
    for idx in list(rooms.values())[:10]:
        assert len({tuple(people[i]["shirt"]) for i in idx}) == len(idx)  # each wears their own


def test_label_noise_is_applied_to_the_files_and_recorded_for_scoring(tmp_path):
    r = invoke(demo.app, tmp_path / "d", "--people", "30", "--eval-people", "2", "--label-noise", "0.5",
               "--seed", "4")
    assert r.exit_code == 0, r.output
    noise = pd.read_csv(tmp_path / "d" / "train" / "label_noise.csv", dtype={"id": str})
    assert len(noise) == 15 and set(noise["kind"]) <= {"gender", "swap", "age"}
    train = pd.read_csv(tmp_path / "d" / "train" / "train.csv", dtype={"id": str}).set_index("id")
    for _, row in noise.iterrows():
        if row["kind"] == "gender":
            assert train.loc[row["id"], "gender"] == row["recorded"] != row["true"]
        elif row["kind"] == "age":
            recorded, true = int(row["recorded"]), int(row["true"])
            assert train.loc[row["id"], "age"] == recorded
            assert (recorded >= 30) != (true >= 30) or (recorded >= 60) != (true >= 60)
    clean = invoke(demo.app, tmp_path / "c", "--people", "30", "--eval-people", "2", "--label-noise", "0",
                   "--seed", "4")
    assert clean.exit_code == 0
    assert len(pd.read_csv(tmp_path / "c" / "train" / "label_noise.csv")) == 0
    swapped = noise[noise["kind"] == "swap"]["id"]
    assert len(swapped)
    for pid in swapped:  # the same person drawn without noise: the files hold each other's photo
        folder = train.loc[pid, "path"]
        noisy, plain = (tmp_path / d / "train" / "images" / folder for d in ("d", "c"))
        assert next(noisy.glob("normal.*")).read_bytes() == next(plain.glob("incorrect_mask.*")).read_bytes()
        assert next(noisy.glob("incorrect_mask.*")).read_bytes() == next(plain.glob("normal.*")).read_bytes()


def test_bad_kind_or_noise_is_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    r = subprocess.run([sys.executable, str(ROOT / "demo.py"), str(tmp_path / "d"), "--kind", "medium"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "'medium' is not one of 'hard', 'easy'" in r.stderr
    assert r.stderr.startswith("error: Invalid value for '--kind'") and not (tmp_path / "d").exists()
    r = invoke(demo.app, tmp_path / "d", "--label-noise", "1.5")
    assert r.exit_code == 2 and "--label-noise" in r.output


class _Fills:
    """Stands in for PIL's ImageDraw: records the colours draw_cue paints."""

    def __init__(self):
        self.fills = []

    def rectangle(self, box, fill):
        self.fills.append(fill)


def test_a_persons_hard_cue_is_hard_in_all_seven_photos():
    """The light and the veil are the person's: their photos' cue colours differ by a few percent, so one
    answer per person cannot undo a cue that is hard for the person (the real data's photos err together)."""
    people = hard_demo.make_people(200, np.random.default_rng(3), 0, ["a"])
    assert 0.1 < np.mean([p["veil"] < 1 for p in people]) < 0.3
    spreads, lights = [], []
    for p in people[:40]:
        photos = []
        for seed in range(7):  # seven photos: each its own generator, as demo.py draws them
            draw = _Fills()
            hard_demo.draw_cue(draw, p, 0, 50, 0, 40, np.random.default_rng(seed))
            photos.append([draw.fills[0], draw.fills[-1]])  # the band and a stripe
        photos = np.array(photos, float)
        spreads.append((photos.max(0) - photos.min(0)).max() / max(photos.mean(0).max(), 1.0))
        lights.append(photos[:, 0].mean())
    assert max(spreads) < 0.08  # one person: the same light and veil in every photo
    assert np.std(lights) > 20  # while people's lights differ
