"""A sweep's table: one line per trial (its options, each fold's F1, CV, state, seconds), the options'
importance, and the best trial's command line to train it again by hand."""
from __future__ import annotations

import shlex
from pathlib import Path

import pandas as pd

from maskfold.sweep.space import Space, flags

STATES = {"COMPLETE": "done", "PRUNED": "stopped", "FAIL": "failed", "RUNNING": "running", "WAITING": "queued"}


def rows(study, space: Space, folds: int) -> pd.DataFrame:
    out, trials = [], study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        state = STATES.get(t.state.name, t.state.name.lower())
        if state == "failed" and "error" not in t.user_attrs:  # its worker died or was stopped
            state = "failed, queued again" if t.number in retried else "failed"
        row = {"trial": t.number, "state": state, "run": t.user_attrs.get("run"), "model": t.params.get("model")}
        row.update({p.name: t.params.get(p.name) for p in space.params})
        row.update({f"f1_fold{k}": t.user_attrs.get(f"f1_fold{k}") for k in range(folds)})
        row.update({"cv_f1": t.value if t.state.name == "COMPLETE" else None,
                    "seconds": t.user_attrs.get("seconds"), "error": t.user_attrs.get("error")})
        out.append(row)
    return pd.DataFrame(out)


def importance(study) -> dict[str, float]:
    """Optuna's importance of each option for the CV (fANOVA), where enough trials finished to say."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    varied = {k for t in done for k in t.params if len({str(d.params.get(k)) for d in done}) > 1}
    if len(done) < 3 or not varied:
        return {}
    try:
        found = optuna.importance.get_param_importances(study, params=sorted(varied))
        return {k: round(v, 4) for k, v in found.items()}
    except (RuntimeError, ValueError):  # too few distinct values for the evaluator
        return {}


def best_command(study, space: Space, folds_csv: Path, out: Path, folds: int) -> str | None:
    """The best finished trial's training, as a shell loop a user can run by hand."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    values = {**space.fixed, **{k: v for k, v in best.params.items() if k != "model"}}
    args = ["python", "train.py", str(folds_csv), "--model", best.params["model"], "--run-name",
            str(best.user_attrs.get("run")), "--out", str(out), *flags(values), "--fold", "$k"]
    line = " ".join(a if a == "$k" else shlex.quote(a) for a in args)
    return f"for k in $(seq 0 {folds - 1}); do {line} --resume --skip-done || break; done"


def show(df: pd.DataFrame) -> str:
    if df.empty:
        return "no trials yet"
    shown = df.drop(columns=[c for c in ("error",) if c in df and df[c].isna().all()])
    return shown.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-")
