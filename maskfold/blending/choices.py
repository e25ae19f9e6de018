"""What ensemble.py decides out of fold, each decision a value: the weights, the class bias, the per-person rule
and its sureness floor. Each is fitted with every fold held out in turn and applied only where it gains there.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from maskfold.blending import recipe, rules
from maskfold.blending.oof import OOF
from maskfold.blending.recipe import Recipe
from maskfold.labels import NUM_CLASSES, TASKS, per_class_f1, task_f1


@dataclass(frozen=True)
class WeightChoice:
    """The recipe to submit and the out-of-fold probabilities that score it (held out where weights were fitted)."""
    recipe: Recipe
    p_oof: np.ndarray
    record: dict


def choose_weights(how: str, cv: OOF, base: Recipe) -> WeightChoice:
    """Fitted weights, applied if, fitted on the other folds, they beat equal weights on each held-out fold and the
    fit on every fold changes something; the CV (and the bias and per-person checks after it) then scores those
    held-out answers, never the in-sample fit."""
    held = recipe.held_out_recipes(base, cv.inputs, cv.y, cv.folds, how)
    fitted = recipe.fit_recipe(base, cv.inputs, cv.y, how)
    f_held = task_f1(cv.y, held.argmax(1))["f1"]
    f_equal = task_f1(cv.y, base.combine(cv.inputs).argmax(1))["f1"]
    f_in_sample = task_f1(cv.y, fitted.combine(cv.inputs).argmax(1))["f1"]
    singles = [task_f1(cv.y, q.argmax(1))["f1"] if w > 0 else -1.0 for q, w in zip(cv.inputs, base.weights)]
    best = int(np.argmax(singles))  # of the inputs in the blend (a task's model answers one task, not a class)
    best_f1 = round(singles[best], 5) if singles[best] >= 0 else None
    gain = f_held - f_equal
    same = fitted.describe() == base.describe()
    applied = bool(gain > 0 and not same)
    why = "applied" if applied else \
        "not applied: the fit on every fold chose the equal weights" if same else "not applied: it loses held out"
    chosen = fitted if applied else base
    record = {"how": how, "held_out_f1": round(f_held, 5), "equal_f1": round(f_equal, 5),
              "best_input_f1": best_f1, "best_input": cv.names[best] if best_f1 is not None else None,
              "gain_over_equal": round(gain, 5),
              "gain_over_best_input": round(f_held - best_f1, 5) if best_f1 is not None else None,
              "applied": applied, "why": why, "applied_weights": chosen.describe(), "fitted": fitted.describe(),
              "fitted_in_sample_f1": round(f_in_sample, 5), "cv_scores": "held out" if applied else "equal weights"}
    print(f"fit weights ({how}): held-out CV macro F1 {f_held:.4f} (each fold's weights fitted on the others), "
          f"equal weights {f_equal:.4f} ({gain:+.4f}), best input {singles[best]:.4f} ({cv.names[best]}); fitted "
          f"on every fold: {fitted.describe()} (in sample {f_in_sample:.4f}); {why}", file=sys.stderr)
    return WeightChoice(chosen, held if applied else base.combine(cv.inputs), record)


@dataclass(frozen=True)
class CvScores:
    """The CV of each input and of the blend (macro F1, and per task)."""
    inputs: list[float]  # a task's model (train.py --task): its task's macro F1
    blend: dict[str, float]
    names: list[str]
    folds: list[int]
    tasks: list[str | None] | None = None

    def record(self) -> dict:
        out = {"cv": {**{n: round(f, 5) for n, f in zip(self.names, self.inputs)}, "blend": round(self.blend["f1"], 5)},
               "cv_f1": round(self.blend["f1"], 5), "cv_inputs": [round(f, 5) for f in self.inputs],
               "cv_folds": self.folds, "cv_f1_tasks": {t: round(self.blend[t], 5) for t in TASKS}}
        below = self.below_input
        return out | ({"blend_below_input": below + 1} if below is not None else {})

    @property
    def below_input(self) -> int | None:
        """The input that scores better alone than the blend, if one does."""
        whole = [f if not (self.tasks and self.tasks[i]) else -1.0 for i, f in enumerate(self.inputs)]
        best = int(np.argmax(whole))
        return best if sum(f >= 0 for f in whole) > 1 and round(whole[best], 5) > round(self.blend["f1"], 5) else None


def score(cv: OOF, p: np.ndarray) -> CvScores:
    """The CV of each input and of the blend's out-of-fold probabilities `p`, printed."""
    inputs = []
    tasks = list(cv.tasks or [None] * len(cv.inputs))
    for name, q, task in [*zip(cv.names, cv.inputs, tasks), ("blend", p, None)]:
        s = task_f1(cv.y, q.argmax(1))
        if task:  # a task's model (train.py --task): its own task's F1 alone
            s = {**s, "f1": s[task]}
            print(f"CV {name}{cv.coverage}: {task} only, macro F1 {s[task]:.4f}", file=sys.stderr)
        else:
            print(f"CV {name}{cv.coverage}: macro F1 {s['f1']:.4f} " + " ".join(f"{t} {s[t]:.4f}" for t in TASKS),
                  file=sys.stderr)
        inputs.append(s)
    return CvScores([s["f1"] for s in inputs[:-1]], inputs[-1], list(cv.names), [int(k) for k in np.unique(cv.folds)],
                    tasks)


@dataclass(frozen=True)
class BiasChoice:
    """Per-class biases: `rows` each out-of-fold photo's, fitted without its fold; `bias` the one the submission
    gets (fitted on every fold); zeros where not applied."""
    asked: bool
    applied: bool = False
    gain: float | None = None
    rows: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES))

    def record(self) -> dict:
        return {"bias_cv_gain": round(self.gain, 5), "bias_applied": self.applied} if self.asked else {}


def choose_bias(cv: OOF, p: np.ndarray) -> BiasChoice:
    plain = task_f1(cv.y, p.argmax(1))["f1"]
    held = rules.held_out_biases(p, cv.y, cv.folds)
    gain = task_f1(cv.y, rules.answers(p, held))["f1"] - plain
    applied = bool(gain > 0)
    print(f"bias: held-out CV macro F1 {plain:.4f} -> {plain + gain:.4f}; {'applied' if applied else 'not applied'}",
          file=sys.stderr)
    if not applied:
        return BiasChoice(True, False, gain)
    return BiasChoice(True, True, gain, held, rules.fit_bias(p, cv.y))


def sure_enough(groups: np.ndarray, sure: np.ndarray, floor: float) -> np.ndarray:
    """Groups surer than `floor`; the other photos answered alone (-1)."""
    return np.where(sure > floor, groups, -1)


@dataclass(frozen=True)
class PersonRule:
    """How a person's photos share an answer: their groups' sureness floor, the photos' pooling and a whole
    person's size."""
    size: int
    vote: str
    floor: float = 0.0

    def answers(self, p: np.ndarray, bias, groups: np.ndarray, sure: np.ndarray, floor: float | None = None):
        floor = self.floor if floor is None else floor
        return rules.answers(p, bias, sure_enough(groups, sure, floor), self.size, self.vote)


@dataclass(frozen=True)
class PeopleChoice:
    """Whether the per-person rule is applied, with which floor, and what it scored out of fold."""
    applied: bool
    floor: float
    checked: bool = False
    before: dict | None = None
    after: dict | None = None

    def record(self) -> dict:
        if not self.checked:
            return {}
        words = "every group" if self.floor == -np.inf else "none (each photo alone)" if self.floor == np.inf \
            else f"surer than {self.floor:.4f}"
        return {"min_sure": float(self.floor) if np.isfinite(self.floor) else None,  # JSON has no infinity
                "min_sure_groups": words,
                "people_cv": {"f1": round(self.before["f1"], 5), "f1_people": round(self.after["f1"], 5),
                              **{f"{t}_change": round(self.after[t] - self.before[t], 5) for t in TASKS}}}


def choose_people(cv: OOF, p: np.ndarray, bias_rows: np.ndarray, rule: PersonRule,
                  fit_floor: bool) -> tuple[PeopleChoice, np.ndarray]:
    """The per-person rule scored out of fold on the train photos' groups (`cv.groups`), with the floor given or
    chosen held out; applied if it does not lose. Returns the choice and the out-of-fold answers it leaves."""
    alone = rules.answers(p, bias_rows)
    before = task_f1(cv.y, alone)
    if fit_floor:  # scored held out: each fold answered with the floor the other folds chose
        floor, grouped = choose_floor(cv, p, bias_rows, alone, rule)
    else:
        floor, grouped = rule.floor, rule.answers(p, bias_rows, *cv.groups)
    after = task_f1(cv.y, grouped)
    applied = after["f1"] - before["f1"] >= 0
    print(f"per person: CV macro F1 {before['f1']:.4f} -> {after['f1']:.4f} ("
          + ", ".join(f"{t} {after[t] - before[t]:+.4f}" for t in TASKS)
          + f"); {'applied' if applied else 'not applied: it loses out of fold'}", file=sys.stderr)
    return PeopleChoice(bool(applied), floor, True, before, after), grouped if applied else alone


def choose_floor(cv: OOF, p: np.ndarray, rows: np.ndarray, alone: np.ndarray,
                 rule: PersonRule) -> tuple[float, np.ndarray]:
    """The sureness floor for the per-person rule that scores best out of fold (candidates: none, and the
    deciles of the groups' sureness), and the answers that estimate it held out (each fold answered with the
    floor the other folds chose)."""
    groups, sure = cv.groups
    candidates = [-np.inf, *np.unique(np.quantile(sure[np.isfinite(sure)], np.linspace(0.1, 0.9, 9)))] \
        if np.isfinite(sure).any() else [-np.inf]
    answers = [rule.answers(p, rows, groups, sure, t) for t in candidates]
    answers.append(alone)  # no group at all: the rule off
    floors = [*candidates, np.inf]
    held = np.zeros_like(alone)
    for k in np.unique(cv.folds):
        other = cv.folds != k
        best = int(np.argmax([task_f1(cv.y[other], a[other])["f1"] for a in answers]))
        held[~other] = answers[best][~other]
    best = int(np.argmax([task_f1(cv.y, a)["f1"] for a in answers]))
    floor = float(floors[best])
    print(f"per person: groups surer than {floor:.4f} chosen out of fold ({float((sure > floor).mean()):.1%} of the "
          "train photos)", file=sys.stderr)
    return floor, held


def steps(blend_f1: float, bias: BiasChoice, people: PeopleChoice) -> list[dict]:
    """The CV of each step the submission takes, held out, and whether it was applied."""
    out = [{"step": "blend", "f1": round(blend_f1, 5), "applied": True}]
    if bias.asked:
        out.append({"step": "bias (held out)", "f1": round(blend_f1 + bias.gain, 5), "applied": bias.applied})
    if people.checked:
        out.append({"step": "per person", "f1": round(people.after["f1"], 5), "applied": people.applied})
    return out


def per_class(y: np.ndarray, pred: np.ndarray) -> list[float]:
    return [round(f, 4) for f in per_class_f1(y, pred)]
