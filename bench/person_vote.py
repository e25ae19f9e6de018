"""How a person's photos should pool their gender and age (ensemble.py --person-vote), measured out of fold.

    python bench/person_vote.py work/runs/mobilenetv3_small_100 --people work/people_train.csv \
        --eval-probs work/probs.csv --eval-people work/people.csv --truth demo_data/eval/truth.csv

Scores macro F1 with each vote on the run's out-of-fold photos grouped by people.py (and on the eval photos
where the demo's truth is given), then again after making some photos hard: for a share of the people, two
of their photos get a confidently wrong gender or age, as an occluded or badly cropped photo does.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import pandas as pd
import typer

from common import ROOT  # noqa: F401  (puts the project on the path)
from maskfold.blending.oof import OOF, read_run_oof
from maskfold.blending.rules import VOTES, answers
from maskfold.images import stem_key
from maskfold.labels import PROB_COLS, task_f1
from maskfold.people.people_csv import read_people

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def harden(p: np.ndarray, groups: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Two photos of `share` of the people turned confidently wrong on gender or on age."""
    q = p.reshape(-1, 3, 2, 3).copy()
    people = np.unique(groups[groups >= 0])
    for g in rng.choice(people, int(round(share * len(people))), replace=False):
        rows = rng.choice(np.flatnonzero(groups == g), 2, replace=False)
        for r in rows:
            if rng.random() < 0.5:
                q[r] = q[r][:, ::-1, :] ** 4  # the other gender, and sure of it
            else:
                q[r] = np.roll(q[r], 1, axis=2) ** 4  # another age band
            q[r] /= q[r].sum()
            q[r] = 1e-3 * p[r].reshape(3, 2, 3) + (1 - 1e-3) * q[r]
    return q.reshape(len(p), -1)


def scores(p, y, groups) -> dict:
    out = {"alone": round(task_f1(y, answers(p))["f1"], 4)}
    for vote in VOTES:
        out[vote] = round(task_f1(y, answers(p, 0.0, groups, 7, vote))["f1"], 4)
    return out


@app.command()
def main(run: Path, people: Annotated[Path, typer.Option()],
         eval_probs: Annotated[Optional[Path], typer.Option()] = None,
         eval_people: Annotated[Optional[Path], typer.Option()] = None,
         truth: Annotated[Optional[Path], typer.Option()] = None,
         hard_share: Annotated[float, typer.Option()] = 0.3, seeds: Annotated[int, typer.Option()] = 5):
    oof = read_run_oof(run)
    cv = OOF([str(run)], [oof[PROB_COLS].to_numpy()], oof["label"].to_numpy(int), oof["fold"].to_numpy(int),
             list(oof.index))
    ppl = read_people(people, 7)
    groups = ppl.loc[cv.keys, "group"].to_numpy()
    p, y = cv.inputs[0], cv.y
    rows = {"oof": scores(p, y, groups)}
    for s in range(seeds):
        rows[f"oof_hard_seed{s}"] = scores(harden(p, groups, hard_share, np.random.default_rng(s)), y, groups)
    if eval_probs and eval_people and truth:
        ev = pd.read_csv(eval_probs, dtype={"ImageID": str})
        t = pd.read_csv(truth, dtype={"ImageID": str}).set_index("ImageID").loc[ev["ImageID"], "ans"].to_numpy()
        eg = read_people(eval_people, 7).loc[[stem_key(i) for i in ev["ImageID"]], "group"].to_numpy()
        pe = ev[PROB_COLS].to_numpy()
        rows["test"] = scores(pe, t, eg)
        for s in range(seeds):
            rows[f"test_hard_seed{s}"] = scores(harden(pe, eg, hard_share, np.random.default_rng(s)), t, eg)
    df = pd.DataFrame(rows).T
    print(df.to_string(), file=sys.stderr)
    hard = df[df.index.str.contains("hard")]
    summary = {"clean_oof": rows["oof"],
               "hard_oof_mean": hard[hard.index.str.startswith("oof")].mean().round(4).to_dict()}
    if "test" in rows:
        summary.update(clean_test=rows["test"],
                       hard_test_mean=hard[hard.index.str.startswith("test")].mean().round(4).to_dict())
    print(json.dumps(summary))


if __name__ == "__main__":
    app()
