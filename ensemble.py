"""Blend probability CSVs into a submission, and score the very same recipe out of fold.

    python ensemble.py work/probs_b2.csv work/probs_r50.csv --info data/eval/info.csv -o submission.csv \
        --bias --suspects-out work/suspects.csv --people work/people.csv --oof-people work/people_train.csv
    python ensemble.py a.csv b.csv --info data/eval/info.csv -o sub.csv --mask-from 1 --age-from 2

Inputs may list ImageIDs in any order; the submission follows info.csv. Each input's
out-of-fold probabilities come from the runs its record (<input>.json, written by predict.py)
names, or from --oof RUN given once per input, in the inputs' order. The CV score, the bias
and the per-person rule are computed on those with the same functions that make the
submission; the bias and the rule are applied only where they gain on held-out folds.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from maskfold.blending import choices, rules
from maskfold.blending.oof import OOF, oof_for_inputs
from maskfold.blending.recipe import Fit, Mean, Recipe
from maskfold.blending.rules import Vote
from maskfold.cli import UserError, arg, command, make_app, opt, result
from maskfold.files import check_new, read_info, read_record, record_path, write_csv, write_json
from maskfold.images import stem_key
from maskfold.labelling.label_audit import suspect_people
from maskfold.labels import NUM_CLASSES, TASKS, task_f1
from maskfold.people.people_csv import groups_of
from maskfold.probs import aligned, answered_task, frame, read_provenance, read_truth
from maskfold.runs import task_words

app = make_app()


@dataclass(frozen=True, kw_only=True)
class EnsembleOptions:
    inputs: list[Path] = arg("probability CSVs (ImageID,p0..p17)")
    info: Path = opt(..., "info.csv: the ImageIDs and their order")
    out: Path = opt(..., "submission CSV to write (ImageID,ans)", "--out", "-o")
    weights: Optional[str] = opt(None, "comma-separated weight per input")
    fit_weights: Fit = opt(Fit.none, "choose the weights for out-of-fold macro F1 by greedy ensemble selection: blend "
                           "(one set), task (one set per task: mask, gender and age each from their own blend) or "
                           "none; fitted with each fold held out, applied only if that beats equal weights")
    mean: Mean = opt(Mean.arithmetic, "arithmetic or geometric mean of probabilities")
    mask_from: Optional[int] = opt(None, "take the mask answer from input N (1-based)")
    gender_from: Optional[int] = opt(None, "take the gender answer from input N")
    age_from: Optional[int] = opt(None, "take the age answer from input N")
    oof: Optional[list[Path]] = opt(None, "run folder of an input's out-of-fold files (once per input, in order; "
                                    "default: the runs each input's record names)")
    labels: Optional[Path] = opt(None, "folds.csv whose labels the CV is scored and fitted against; needed where the "
                                 "inputs' runs were trained on different labels (before and after split.py --fixes)")
    bias: bool = opt(False, "fit per-class biases on OOF for macro F1; applied if they gain on held-out folds")
    suspects_out: Optional[Path] = opt(None, "write a CSV of the people whose labels the OOF probabilities doubt")
    people: Optional[Path] = opt(None, "people.csv of the eval photos (people.py): one answer per person")
    oof_people: Optional[Path] = opt(None, "people.csv of the train photos (people.py --also-out, grouped with the "
                                     "eval photos; or --flatten alone): scores the per-person rule out of fold")
    group_size: int = opt(7, "photos per person: a complete person gets 1 worn wrongly, 1 not worn, the rest worn")
    person_vote: Vote = opt(Vote.mean, "how a person's photos pool gender and age: mean (of probabilities), log (their "
                           "product: one sure photo can veto six), clipped (log floored at 0.05) or vote")
    fit_min_sure: bool = opt(False, "choose --min-sure out of fold (each fold's from the others): the sureness "
                             "below which a group's photos keep their own answers")
    min_sure: float = opt(0.0, "use only people.py's groups surer than this (each photo looks more like its own group "
                          "than any other by this much); the rest are answered photo by photo")
    truth: Optional[Path] = opt(None, "ImageID,ans with true classes (demo): print test F1")
    probs_out: Optional[Path] = opt(None, "also write the blended probabilities")
    overwrite: bool = opt(False, "replace existing output files")

    RENAMED = {"--suspects": "suspects_out"}  # ClassVar: the old spelling works for one release

    def sources(self) -> tuple[tuple[str, Optional[int]], ...]:
        return (("mask", self.mask_from), ("gender", self.gender_from), ("age", self.age_from))

    def recipe(self, tasks: list[str | None] | None = None) -> Recipe:
        """The blend of the 18-class inputs (a task's model, `tasks`, stays out: it answers its task through
        --<task>-from), each task from its source."""
        tasks = list(tasks or [None] * len(self.inputs))
        w = input_weights(self) * np.array([t is None for t in tasks], float)
        sources = self.sources()
        if self.fit_weights == "task" and any(tasks):  # before the fit: each task from all inputs that answer it
            sources = tuple((t, np.array([float(a in (None, t)) for a in tasks])) for t in TASKS)
        return Recipe(w, self.mean, sources, tuple(tasks))


def input_weights(o: EnsembleOptions) -> np.ndarray:
    """--weights as numbers, one non-negative weight per input (equal without it)."""
    w = np.ones(len(o.inputs))
    if o.weights:
        try:
            w = np.array([float(x) for x in o.weights.split(",")])
        except ValueError:
            raise UserError(f"--weights {o.weights}: not numbers") from None
        if len(w) != len(o.inputs) or (w < 0).any() or w.sum() <= 0:
            raise UserError(f"--weights: {len(w)} non-negative weights for {len(o.inputs)} inputs")
    return w


def check(o: EnsembleOptions) -> None:
    """The rules between the options: one line for each that cannot hold."""
    input_weights(o)
    if o.fit_weights != "none" and o.weights:
        raise UserError("--fit-weights chooses the weights: drop --weights, or --fit-weights none")
    if o.fit_weights == "task" and any((o.mask_from, o.gender_from, o.age_from)):
        raise UserError("--fit-weights task gives each task its own blend: drop --mask-from/--gender-from/"
                        "--age-from, or use --fit-weights blend")
    if o.group_size < 2:
        raise UserError(f"--group-size {o.group_size}: a person has at least 2 photos (1 worn wrongly, "
                        "1 not worn); without --people every photo is answered alone")
    per_person = (("--group-size", o.group_size != 7), ("--person-vote", o.person_vote != "mean"),
                  ("--min-sure", o.min_sure != 0.0), ("--fit-min-sure", o.fit_min_sure),
                  ("--oof-people", o.oof_people is not None))
    for flag, given in per_person:
        if given and o.people is None:
            raise UserError(f"{flag} shapes the per-person answers: give --people people.csv (without it every "
                            "photo is answered alone)")
    if o.fit_min_sure and o.min_sure != 0.0:
        raise UserError("--fit-min-sure chooses --min-sure out of fold: drop --min-sure, or --fit-min-sure")
    for t, i in (("mask", o.mask_from), ("gender", o.gender_from), ("age", o.age_from)):
        if i is not None and not 1 <= i <= len(o.inputs):
            raise UserError(f"--{t}-from {i}: there are {len(o.inputs)} inputs")


def read_inputs(files: list[Path], ids: pd.Series) -> tuple[list[np.ndarray], list[dict | None]]:
    """Each CSV aligned to info.csv's order (after checking it covers exactly its ImageIDs), and its record."""
    return [aligned(f, ids) for f in files], [read_provenance(f) for f in files]


def check_tasks(o: EnsembleOptions, tasks: list[str | None]) -> None:
    """A task's model (train.py --task) answers its task only: it must be that task's source (--<task>-from), and
    every task needs an answer, from its source or from the 18-class inputs' blend."""
    sources = dict(o.sources())
    if o.fit_weights == "task":  # each task's blend is chosen among the 18-class inputs and that task's models
        missing = [t for t in TASKS if not any(a in (None, t) for a in tasks)]
        if missing:
            raise UserError(f"no input answers {' or '.join(missing)}: add an 18-class input or a {missing[0]} model")
        return
    for i, (f, t) in enumerate(zip(o.inputs, tasks), 1):
        if t is not None and sources[t] != i:
            raise UserError(f"input {i} ({f}) comes from {task_words(t)}, which answers {t} alone: take the {t} "
                            f"answer from it with --{t}-from {i}"
                            + (f" (not input {sources[t]})" if sources[t] else ""))
        if t is not None and o.weights and input_weights(o)[i - 1] > 0:
            raise UserError(f"--weights: input {i} ({f}) answers {t} alone and is not blended: give it weight 0")
    for t, i in sources.items():
        if i is not None and tasks[i - 1] not in (None, t):
            raise UserError(f"--{t}-from {i}: {o.inputs[i - 1]} answers {tasks[i - 1]} alone, not {t}")
    whole = [i for i, t in enumerate(tasks) if t is None]
    if not whole and any(i is None for i in sources.values()):
        missing = [t for t, i in sources.items() if i is None]
        raise UserError(f"no input answers {' or '.join(missing)}: every input is one task's model; add an 18-class "
                        f"input or a {missing[0]} model (--{missing[0]}-from N)")
    if whole and not input_weights(o)[whole].sum() and any(i is None for i in sources.values()):
        raise UserError("--weights: every 18-class input has weight 0, but a task takes its answer from their blend")


def grouping_record(o: EnsembleOptions) -> dict:
    """How hard the out-of-fold check's groups are against the eval folder's, and the eval grouping's estimated
    purity, from people.py's records."""
    train, ev = read_record(o.oof_people), read_record(o.people)
    joint = bool(train.get("grouped_with") and ev.get("images") and train["grouped_with"] == ev["images"])
    if joint:
        print(f"per person: the check's train photos were grouped with the eval photos (people.py --also); "
              f"estimated purity of the eval grouping: {train.get('estimated_purity')}", file=sys.stderr)
    else:
        print("per person: the check's train photos were grouped on their own, with fewer look-alikes than the eval "
              "photos have: it can overstate the gain (people.py --also groups them with the eval photos)",
              file=sys.stderr)
    return {"check_grouped_with_eval": joint, "estimated_purity": train.get("estimated_purity") if joint else None}


@dataclass(frozen=True)
class Decisions:
    """Everything decided out of fold: the recipe, its CV, the bias and the per-person rule."""
    recipe: Recipe
    p_oof: np.ndarray | None
    record: dict
    bias: np.ndarray
    people: bool
    floor: float


def decide(o: EnsembleOptions, cv: OOF | None, blend: Recipe, rule: choices.PersonRule) -> Decisions:
    """Score the blend out of fold and choose what gains there: fitted weights, the bias, the per-person rule."""
    if cv is None:
        return Decisions(blend, None, {"recipe": blend.describe()}, np.zeros(NUM_CLASSES), o.people is not None,
                         o.min_sure)
    record: dict = {}
    p = blend.combine(cv.inputs)  # the very recipe the submission gets
    if o.fit_weights != "none":
        fit = choices.choose_weights(o.fit_weights, cv, blend)
        blend, p, record["fit_weights"] = fit.recipe, fit.p_oof, fit.record
    scores = choices.score(cv, p)
    if scores.below_input is not None:
        i = scores.below_input
        print(f"warning: the blend's CV {scores.blend['f1']:.4f} is below input {i + 1}'s alone "
              f"({scores.inputs[i]:.4f}, {o.inputs[i]}): submit that input alone"
              + ("" if o.fit_weights != "none" else ", or let the folds choose the weights (--fit-weights blend)"),
              file=sys.stderr)
    bias = choices.choose_bias(cv, p) if o.bias else choices.BiasChoice(False)
    if cv.groups is not None:
        people, final = choices.choose_people(cv, p, bias.rows, rule, o.fit_min_sure)
    else:
        if o.people:
            print("per person: applied unchecked (--oof-people scores it out of fold first)", file=sys.stderr)
        people, final = choices.PeopleChoice(o.people is not None, o.min_sure), rules.answers(p, bias.rows)
    record.update(recipe=blend.describe(), **scores.record(), **bias.record(),
                  cv_steps=choices.steps(scores.blend["f1"], bias, people), **people.record(),
                  cv_per_class=choices.per_class(cv.y, final))
    return Decisions(blend, p, record, bias.bias, people.applied, people.floor)


def answer(o: EnsembleOptions, p: np.ndarray, d: Decisions, people, rule: choices.PersonRule
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """The eval answers: (submitted, without the per-person rule, with it or None), and what each step changed."""
    plain = rules.answers(p, d.bias)
    record = {"changed": {"bias": int((plain != p.argmax(1)).sum())}}
    if people is None:
        return plain, plain, None, record
    groups = choices.sure_enough(*people, d.floor)
    print(f"{o.people}: {int((groups >= 0).sum())} of {len(groups)} photos in groups sure enough (> {d.floor:.4f})",
          file=sys.stderr)
    per_person = rule.answers(p, d.bias, *people, d.floor)
    changed = int((per_person != plain).sum())
    print(f"per person: {changed} of {len(plain)} answers change{'' if d.people else ' (not applied)'}",
          file=sys.stderr)
    record["changed"]["people"] = changed
    record.update(people_applied=bool(d.people), people_changed=changed)
    return (per_person if d.people else plain), plain, per_person, record


@command(app, EnsembleOptions, check)
def main(o: EnsembleOptions):
    """Blend probability CSVs into a submission; score the same recipe out of fold."""
    check_new(o.out, o.probs_out, o.suspects_out, overwrite=o.overwrite)
    ids = read_info(o.info)
    probs, records = read_inputs(o.inputs, ids)
    tasks = [answered_task(r, p) for r, p in zip(records, probs)]
    check_tasks(o, tasks)
    blend, rule = o.recipe(tasks), choices.PersonRule(o.group_size, o.person_vote, o.min_sure)
    needs = [name for name, on in (("--bias", o.bias), ("--suspects-out", o.suspects_out),
                                   ("--oof-people", o.oof_people), ("--fit-weights", o.fit_weights != "none")) if on]
    cv = oof_for_inputs(o.inputs, records, o.oof or [], needs, o.labels)
    if cv is not None:
        for i, (f, given, learnt) in enumerate(zip(o.inputs, tasks, cv.tasks), 1):
            if given != learnt:
                raise UserError(f"input {i} ({f}) answers {given or 'all 18 classes'}, but its runs "
                                f"({cv.names[i - 1]}) "
                                f"learnt {learnt or 'all 18 classes'} (train.py --task): pair it with its own runs")
    summary = {"out": str(o.out), "inputs": len(o.inputs), "images": len(ids)}
    people = groups_of(o.people, [stem_key(i) for i in ids], o.group_size, "info.csv") if o.people else None
    if cv is not None and o.oof_people:
        cv.groups = groups_of(o.oof_people, cv.keys, o.group_size, "the out-of-fold photos")
        summary.update(grouping_record(o))
    elif o.fit_min_sure:
        raise UserError("--fit-min-sure chooses the floor out of fold: it needs --oof-people")
    truth = read_truth(o.truth, ids, str(o.info)) if o.truth else None
    d = decide(o, cv, blend, rule)
    p = d.recipe.combine(probs)
    ans, plain, per_person, changed = answer(o, p, d, people, rule)
    summary.update(d.record, **changed)
    if o.suspects_out:
        write_csv(suspect_people(cv.paths, cv.y, d.p_oof, 50), o.suspects_out)
    if o.probs_out:
        write_csv(frame(p, ids), o.probs_out, float_format="%.6g")
    write_csv(pd.DataFrame({"ImageID": ids, "ans": ans}), o.out)
    if truth is not None:
        summary.update(test_scores(truth, plain, per_person, ans))
    write_json(record_path(o.out), {"kind": "submission", **{k: v for k, v in summary.items() if k != "out"},
                                    "input_files": [str(f.resolve()) for f in o.inputs],
                                    "input_runs": cv.names if cv is not None else None, "input_tasks": tasks})
    summary["files"] = [str(f) for f in (o.out, record_path(o.out), o.probs_out, o.suspects_out) if f]
    result(summary)


def test_scores(truth: np.ndarray, plain: np.ndarray, per_person: np.ndarray | None, submitted: np.ndarray) -> dict:
    """F1 on the demo's hidden truth: the submission's, and without and with the per-person rule."""
    s = task_f1(truth, submitted)
    out = {"test_f1": round(s["f1"], 5), "test_acc": round(float((truth == submitted).mean()), 5),
           "test_f1_tasks": {t: round(s[t], 5) for t in TASKS}}
    print(f"test: macro F1 {s['f1']:.4f} (" + ", ".join(f"{t} {s[t]:.4f}" for t in TASKS) + ")", file=sys.stderr)
    if per_person is not None:
        a, b = task_f1(truth, plain), task_f1(truth, per_person)
        out.update(test_f1_without_people=round(a["f1"], 5), test_f1_with_people=round(b["f1"], 5))
        print(f"test: macro F1 without --people {a['f1']:.4f}, with {b['f1']:.4f} ("
              + ", ".join(f"{t} {b[t] - a[t]:+.4f}" for t in TASKS) + ")", file=sys.stderr)
    return out


if __name__ == "__main__":
    app()
