"""Blend probability CSVs into a submission, and score the very same recipe out of fold.

    python ensemble.py work/probs_b2.csv work/probs_r50.csv --info data/eval/info.csv -o submission.csv \
        --bias --suspects work/suspects.csv --people work/people.csv --oof-people work/people_train.csv
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

from maskfold.blending import recipe
from maskfold.blending.oof import OOF, oof_for_inputs, suspects
from maskfold.blending.recipe import Mean, Recipe
from maskfold.cli import UserError, arg, choose, command, make_app, opt, result
from maskfold.files import check_new, read_info, read_table, write_csv, write_json
from maskfold.images import stem_key
from maskfold.labels import NUM_CLASSES, PROB_COLS, TASKS
from maskfold.people.grouping import groups_of
from maskfold.probs import read_probs, read_provenance

app = make_app()


@dataclass(frozen=True, kw_only=True)
class EnsembleOptions:
    inputs: list[Path] = arg("probability CSVs (ImageID,p0..p17)")
    info: Path = opt(..., "info.csv: the ImageIDs and their order")
    out: Path = opt(..., "submission CSV to write (ImageID,ans)", "--out", "-o")
    weights: Optional[str] = opt(None, "comma-separated weight per input")
    fit_weights: str = opt("none", "choose the weights for out-of-fold macro F1 by greedy ensemble selection: blend "
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
    suspects: Optional[Path] = opt(None, "CSV of people whose labels the OOF probabilities doubt")
    people: Optional[Path] = opt(None, "people.csv of the eval photos (people.py): one answer per person")
    oof_people: Optional[Path] = opt(None, "people.csv of the train photos (people.py --also-out, grouped with the "
                                     "eval photos; or --flatten alone): scores the per-person rule out of fold")
    group_size: int = opt(7, "photos per person: a complete person gets 1 worn wrongly, 1 not worn, the rest worn")
    person_vote: str = opt("mean", "how a person's photos pool gender and age: mean (of probabilities), log (their "
                           "product: one sure photo can veto six), clipped (log floored at 0.05) or vote")
    fit_min_sure: bool = opt(False, "choose --min-sure out of fold (each fold's from the others): the sureness "
                             "below which a group's photos keep their own answers")
    min_sure: float = opt(0.0, "use only people.py's groups surer than this (each photo looks more like its own group "
                          "than any other by this much); the rest are answered photo by photo")
    truth: Optional[Path] = opt(None, "ImageID,ans with true classes (demo): print test F1")
    probs_out: Optional[Path] = opt(None, "also write the blended probabilities")
    overwrite: bool = opt(False, "replace existing output files")

    def recipe(self) -> Recipe:
        w = np.ones(len(self.inputs))
        if self.weights:
            try:
                w = np.array([float(x) for x in self.weights.split(",")])
            except ValueError:
                raise UserError(f"--weights {self.weights}: not numbers") from None
            if len(w) != len(self.inputs) or (w < 0).any() or w.sum() <= 0:
                raise UserError(f"--weights: {len(w)} non-negative weights for {len(self.inputs)} inputs")
        choose(self.person_vote, recipe.VOTES, "--person-vote")
        choose(self.fit_weights, recipe.FITS, "--fit-weights")
        if self.fit_weights != "none" and self.weights:
            raise UserError("--fit-weights chooses the weights: drop --weights, or --fit-weights none")
        if self.fit_weights == "task" and any((self.mask_from, self.gender_from, self.age_from)):
            raise UserError("--fit-weights task gives each task its own blend: drop --mask-from/--gender-from/"
                            "--age-from, or use --fit-weights blend")
        if self.group_size < 2:
            raise UserError(f"--group-size {self.group_size}: a person has at least 2 photos (1 worn wrongly, "
                            "1 not worn); without --people every photo is answered alone")
        per_person = (("--group-size", self.group_size != 7), ("--person-vote", self.person_vote != "mean"),
                      ("--min-sure", self.min_sure != 0.0), ("--fit-min-sure", self.fit_min_sure),
                      ("--oof-people", self.oof_people is not None))
        for flag, given in per_person:
            if given and self.people is None:
                raise UserError(f"{flag} shapes the per-person answers: give --people people.csv (without it every "
                                "photo is answered alone)")
        if self.fit_min_sure and self.min_sure != 0.0:
            raise UserError("--fit-min-sure chooses --min-sure out of fold: drop --min-sure, or --fit-min-sure")
        sources = (("mask", self.mask_from), ("gender", self.gender_from), ("age", self.age_from))
        for t, i in sources:
            if i is not None and not 1 <= i <= len(self.inputs):
                raise UserError(f"--{t}-from {i}: there are {len(self.inputs)} inputs")
        return Recipe(w, self.mean, sources)


def read_inputs(files: list[Path], ids: pd.Series) -> tuple[list[np.ndarray], list[dict | None]]:
    """Each CSV aligned to info.csv's order (after checking it covers exactly its ImageIDs), and its record."""
    out, records, want = [], [], set(ids)
    for f in files:
        df = read_probs(f, "ImageID")
        have = set(df["ImageID"])
        if have != want:
            extra, missing = sorted(have - want), sorted(want - have)
            raise UserError(f"{f}: ImageIDs differ from info.csv ({len(missing)} missing, {len(extra)} extra, "
                            f"e.g. {(missing + extra)[0]})")
        out.append(df.set_index("ImageID").loc[ids, PROB_COLS].to_numpy())
        records.append(read_provenance(f))
    return out, records


def read_truth(path: Path, ids: pd.Series) -> np.ndarray:
    t = read_table(path, dtype={"ImageID": str})
    if not {"ImageID", "ans"} <= set(t.columns) or set(t["ImageID"]) != set(ids):
        raise UserError(f"{path}: needs ImageID,ans for exactly the ImageIDs of info.csv")
    return t.set_index("ImageID").loc[ids, "ans"].to_numpy(int)


def sure_enough(groups: np.ndarray, sure: np.ndarray, floor: float) -> np.ndarray:
    """Groups surer than `floor`; the other photos answered alone (-1)."""
    return np.where(sure > floor, groups, -1)


def grouping_record(o: EnsembleOptions, summary: dict) -> None:
    """Say how hard the out-of-fold check's groups are against the eval folder's, and the eval grouping's
    estimated purity, from people.py's records."""
    import json

    def rec(p):
        try:
            return json.loads(Path(f"{p}.json").read_text())
        except (OSError, ValueError):
            return {}

    train, ev = rec(o.oof_people), rec(o.people)
    joint = bool(train.get("grouped_with") and ev.get("images") and train["grouped_with"] == ev["images"])
    summary.update(check_grouped_with_eval=joint, estimated_purity=train.get("estimated_purity") if joint else None)
    if joint:
        print(f"per person: the check's train photos were grouped with the eval photos (people.py --also); "
              f"estimated purity of the eval grouping: {train.get('estimated_purity')}", file=sys.stderr)
    else:
        print("per person: the check's train photos were grouped on their own, with fewer look-alikes than the eval "
              "photos have: it can overstate the gain (people.py --also groups them with the eval photos)",
              file=sys.stderr)


def choose_weights(o: EnsembleOptions, cv: OOF, base: Recipe, summary: dict) -> tuple[Recipe, np.ndarray]:
    """The recipe to submit and the out-of-fold probabilities that score it. Fitted weights are applied if,
    fitted on the other folds, they beat equal weights on each held-out fold and the fit on every fold changes
    something; the CV (and the bias and per-person checks after it) then scores those held-out answers, never
    the in-sample fit."""
    held = recipe.held_out_recipes(base, cv.inputs, cv.y, cv.folds, o.fit_weights)
    fitted = recipe.fit_recipe(base, cv.inputs, cv.y, o.fit_weights)
    f_held = recipe.task_f1(cv.y, held.argmax(1))["f1"]
    f_equal = recipe.task_f1(cv.y, base.combine(cv.inputs).argmax(1))["f1"]
    f_in_sample = recipe.task_f1(cv.y, fitted.combine(cv.inputs).argmax(1))["f1"]
    singles = [recipe.task_f1(cv.y, q.argmax(1))["f1"] for q in cv.inputs]
    best = int(np.argmax(singles))
    gain = f_held - f_equal
    same = fitted.describe() == base.describe()
    applied = bool(gain > 0 and not same)
    why = "applied" if applied else \
        "not applied: the fit on every fold chose the equal weights" if same else "not applied: it loses held out"
    chosen = fitted if applied else base
    summary["fit_weights"] = {"how": o.fit_weights, "held_out_f1": round(f_held, 5), "equal_f1": round(f_equal, 5),
                              "best_input_f1": round(singles[best], 5), "best_input": cv.names[best],
                              "gain_over_equal": round(gain, 5),
                              "gain_over_best_input": round(f_held - singles[best], 5), "applied": applied,
                              "why": why, "applied_weights": chosen.describe(), "fitted": fitted.describe(),
                              "fitted_in_sample_f1": round(f_in_sample, 5),
                              "cv_scores": "held out" if applied else "equal weights"}
    print(f"fit weights ({o.fit_weights}): held-out CV macro F1 {f_held:.4f} (each fold's weights fitted on the "
          f"others), equal weights {f_equal:.4f} ({gain:+.4f}), best input {singles[best]:.4f} ({cv.names[best]}); "
          f"fitted on every fold: {fitted.describe()} (in sample {f_in_sample:.4f}); {why}", file=sys.stderr)
    return chosen, held if applied else base.combine(cv.inputs)


def cv_and_rules(o: EnsembleOptions, cv: OOF, p: np.ndarray, summary: dict) -> tuple[np.ndarray, bool, float]:
    """Score the recipe's out-of-fold probabilities `p`; decide whether the bias and the per-person rule are
    applied (each only if it gains on held-out folds). Returns (bias, people rule applied, the groups' sureness
    floor)."""
    for name, q in [*zip(cv.names, cv.inputs), ("blend", p)]:
        s = recipe.task_f1(cv.y, q.argmax(1))
        print(f"CV {name}{cv.coverage}: macro F1 {s['f1']:.4f} " + " ".join(f"{t} {s[t]:.4f}" for t in TASKS),
              file=sys.stderr)
        summary.setdefault("cv", {})[name] = round(s["f1"], 5)
    summary["cv_f1"] = summary["cv"]["blend"]
    summary["cv_inputs"] = [round(recipe.task_f1(cv.y, q.argmax(1))["f1"], 5) for q in cv.inputs]
    best = int(np.argmax(summary["cv_inputs"]))
    if len(cv.inputs) > 1 and summary["cv_inputs"][best] > summary["cv_f1"]:
        summary["blend_below_input"] = best + 1
        print(f"warning: the blend's CV {summary['cv_f1']:.4f} is below input {best + 1}'s alone "
              f"({summary['cv_inputs'][best]:.4f}, {o.inputs[best]}): submit that input alone"
              + ("" if o.fit_weights != "none" else ", or let the folds choose the weights (--fit-weights blend)"),
              file=sys.stderr)
    summary["cv_folds"] = [int(k) for k in np.unique(cv.folds)]
    summary["cv_f1_tasks"] = {t: round(v, 5) for t, v in recipe.task_f1(cv.y, p.argmax(1)).items() if t != "f1"}
    plain = recipe.task_f1(cv.y, p.argmax(1))
    rows, b = np.zeros(NUM_CLASSES), np.zeros(NUM_CLASSES)
    if o.bias:
        held = recipe.held_out_biases(p, cv.y, cv.folds)
        gain = recipe.task_f1(cv.y, recipe.answers(p, held))["f1"] - plain["f1"]
        summary.update(bias_cv_gain=round(gain, 5), bias_applied=bool(gain > 0))
        print(f"bias: held-out CV macro F1 {plain['f1']:.4f} -> {plain['f1'] + gain:.4f}; "
              f"{'applied' if gain > 0 else 'not applied'}", file=sys.stderr)
        if gain > 0:
            rows, b = held, recipe.fit_bias(p, cv.y)
    steps = summary["cv_steps"] = [{"step": "blend", "f1": round(plain["f1"], 5), "applied": True}]
    if o.bias:
        steps.append({"step": "bias (held out)", "f1": round(plain["f1"] + summary["bias_cv_gain"], 5),
                      "applied": summary["bias_applied"]})
    final = recipe.answers(p, rows)
    if cv.groups is None:
        if o.people:
            print("per person: applied unchecked (--oof-people scores it out of fold first)", file=sys.stderr)
        summary["cv_per_class"] = per_class(cv.y, final)
        return b, o.people is not None, o.min_sure
    before = recipe.task_f1(cv.y, final)
    if o.fit_min_sure:  # scored held out: each fold answered with the floor the other folds chose
        floor, grouped = choose_floor(o, cv, p, rows, final)
    else:
        floor = o.min_sure
        grouped = recipe.answers(p, rows, sure_enough(*cv.groups, floor), o.group_size, o.person_vote)
    summary["min_sure"] = float(floor) if np.isfinite(floor) else None  # JSON has no infinity
    summary["min_sure_groups"] = "every group" if floor == -np.inf else "none (each photo alone)" \
        if floor == np.inf else f"surer than {floor:.4f}"
    after = recipe.task_f1(cv.y, grouped)
    gain = after["f1"] - before["f1"]
    steps.append({"step": "per person", "f1": round(after["f1"], 5), "applied": bool(gain >= 0)})
    summary["cv_per_class"] = per_class(cv.y, grouped if gain >= 0 else final)
    summary["people_cv"] = {"f1": round(before["f1"], 5), "f1_people": round(after["f1"], 5),
                            **{f"{t}_change": round(after[t] - before[t], 5) for t in TASKS}}
    print(f"per person: CV macro F1 {before['f1']:.4f} -> {after['f1']:.4f} ("
          + ", ".join(f"{t} {after[t] - before[t]:+.4f}" for t in TASKS)
          + f"); {'applied' if gain >= 0 else 'not applied: it loses out of fold'}", file=sys.stderr)
    return b, gain >= 0, floor


def choose_floor(o: EnsembleOptions, cv: OOF, p: np.ndarray, rows: np.ndarray,
                 alone: np.ndarray) -> tuple[float, np.ndarray]:
    """The sureness floor for the per-person rule that scores best out of fold (candidates: none, and the
    deciles of the groups' sureness), and the answers that estimate it held out (each fold answered with the
    floor the other folds chose)."""
    groups, sure = cv.groups
    candidates = [-np.inf, *np.unique(np.quantile(sure[np.isfinite(sure)], np.linspace(0.1, 0.9, 9)))] \
        if np.isfinite(sure).any() else [-np.inf]
    answers = [recipe.answers(p, rows, sure_enough(groups, sure, t), o.group_size, o.person_vote) for t in candidates]
    answers.append(alone)  # no group at all: the rule off
    floors = [*candidates, np.inf]
    held = np.zeros_like(alone)
    for k in np.unique(cv.folds):
        other = cv.folds != k
        best = int(np.argmax([recipe.task_f1(cv.y[other], a[other])["f1"] for a in answers]))
        held[~other] = answers[best][~other]
    best = int(np.argmax([recipe.task_f1(cv.y, a)["f1"] for a in answers]))
    floor = float(floors[best])
    share = float((sure > floor).mean())
    print(f"per person: groups surer than {floor:.4f} chosen out of fold ({share:.1%} of the train photos)",
          file=sys.stderr)
    return floor, held


def per_class(y: np.ndarray, pred: np.ndarray) -> list[float]:
    from sklearn.metrics import f1_score

    return [round(float(f), 4) for f in f1_score(y, pred, labels=range(NUM_CLASSES), average=None, zero_division=0)]


@command(app, EnsembleOptions)
def main(o: EnsembleOptions):
    """Blend probability CSVs into a submission; score the same recipe out of fold."""
    check_new(o.out, o.probs_out, o.suspects, overwrite=o.overwrite)
    blend = o.recipe()
    ids = read_info(o.info)
    probs, records = read_inputs(o.inputs, ids)
    needs = [name for name, on in (("--bias", o.bias), ("--suspects", o.suspects), ("--oof-people", o.oof_people),
                                   ("--fit-weights", o.fit_weights != "none")) if on]
    cv = oof_for_inputs(o.inputs, records, o.oof or [], needs, o.labels)
    summary = {"out": str(o.out), "inputs": len(o.inputs), "images": len(ids)}
    people = groups_of(o.people, [stem_key(i) for i in ids], o.group_size, "info.csv") if o.people else None
    if cv is not None and o.oof_people:
        cv.groups = groups_of(o.oof_people, cv.keys, o.group_size, "the out-of-fold photos")
        if o.people:
            grouping_record(o, summary)
    elif o.fit_min_sure:
        raise UserError("--fit-min-sure chooses the floor out of fold: it needs --oof-people")
    truth = read_truth(o.truth, ids) if o.truth else None
    p_oof = blend.combine(cv.inputs) if cv is not None else None  # the very recipe the submission gets
    if cv is not None and o.fit_weights != "none":
        blend, p_oof = choose_weights(o, cv, blend, summary)
    summary["recipe"] = blend.describe()
    if cv is not None:
        b, use_people, floor = cv_and_rules(o, cv, p_oof, summary)
    else:
        b, use_people, floor = np.zeros(NUM_CLASSES), o.people is not None, o.min_sure
    p = blend.combine(probs)
    plain = recipe.answers(p, b)
    summary["changed"] = {"bias": int((plain != p.argmax(1)).sum())}
    ans = plain
    if people is not None:
        groups = sure_enough(*people, floor)
        print(f"{o.people}: {int((groups >= 0).sum())} of {len(groups)} photos in groups sure enough (> {floor:.4f})",
              file=sys.stderr)
        per_person = recipe.answers(p, b, groups, o.group_size, o.person_vote)
        ans = per_person if use_people else plain
        summary.update(people_applied=bool(use_people), people_changed=int((per_person != plain).sum()))
        summary["changed"]["people"] = summary["people_changed"]
        print(f"per person: {summary['people_changed']} of {len(ans)} answers change"
              f"{'' if use_people else ' (not applied)'}", file=sys.stderr)
    if o.suspects:
        write_csv(suspects(cv, p_oof, 50), o.suspects)
    if o.probs_out:
        write_csv(pd.DataFrame(p, columns=PROB_COLS).assign(ImageID=ids.to_numpy())[["ImageID"] + PROB_COLS],
                  o.probs_out, float_format="%.6g")
    write_csv(pd.DataFrame({"ImageID": ids, "ans": ans}), o.out)
    if truth is not None:
        report_test(summary, truth, plain, per_person if people is not None else None, ans)
    write_json(Path(f"{o.out}.json"), {"kind": "submission", **{k: v for k, v in summary.items() if k != "out"},
                                       "input_files": [str(f.resolve()) for f in o.inputs],
                                       "input_runs": cv.names if cv is not None else None})
    summary["files"] = [str(f) for f in (o.out, f"{o.out}.json", o.probs_out, o.suspects) if f]
    result(summary)


def report_test(summary: dict, truth: np.ndarray, plain: np.ndarray, per_person: np.ndarray | None,
                submitted: np.ndarray) -> None:
    """F1 on the demo's hidden truth: the submission's, and without and with the per-person rule."""
    s = recipe.task_f1(truth, submitted)
    summary.update(test_f1=round(s["f1"], 5), test_acc=round(float((truth == submitted).mean()), 5),
                   test_f1_tasks={t: round(s[t], 5) for t in TASKS})
    print(f"test: macro F1 {s['f1']:.4f} (" + ", ".join(f"{t} {s[t]:.4f}" for t in TASKS) + ")", file=sys.stderr)
    if per_person is not None:
        a, b = recipe.task_f1(truth, plain), recipe.task_f1(truth, per_person)
        summary.update(test_f1_without_people=round(a["f1"], 5), test_f1_with_people=round(b["f1"], 5))
        print(f"test: macro F1 without --people {a['f1']:.4f}, with {b['f1']:.4f} ("
              + ", ".join(f"{t} {b[t] - a[t]:+.4f}" for t in TASKS) + ")", file=sys.stderr)


if __name__ == "__main__":
    app()
