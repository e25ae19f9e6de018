"""What a finished fold adds to its --out folder: a row of results.csv, and summary.csv's row of its run."""
from __future__ import annotations

from pathlib import Path

from maskfold.cli import UserError
from maskfold.runs import read_json, run_folds, run_task
from maskfold.training.options import RUN_KEYS, TrainConfig


def results_row(cfg: TrainConfig, metrics: dict) -> dict:
    """results.csv's row of a finished fold: its scores, then every option that can differ between runs."""
    record = cfg.record()
    options = {k: ("x".join(map(str, v)) if isinstance(v, list) else v) for k, v in record.items()
               if k in RUN_KEYS and k not in ("model", "folds_csv")}
    return {"run": cfg.run_name, "fold": cfg.fold, "model": cfg.model, "task": metrics.get("task", "all"),
            **{k: metrics[k] for k in ("f1", "f1_mask", "f1_gender", "f1_age", "best_epoch", "epochs_run",
                                       "img_per_s", "minutes")}, **options}


def summarize(run_dir: Path) -> dict:
    """A run at a glance: its finished folds' mean and spread, and the macro F1 of their out-of-fold
    predictions taken together (the CV score ensemble.py reports for it alone; a task's model: of its task)."""
    import pandas as pd

    from maskfold.labels import PROB_COLS, TASKS, task_scores

    folds = run_folds(run_dir)
    metrics = pd.DataFrame([read_json(run_dir / f"fold{k}" / "metrics.json") for k in sorted(folds.finished)])
    oof = pd.concat([pd.read_csv(run_dir / f"fold{k}" / "oof.csv") for k in sorted(folds.finished)])
    task = run_task(run_dir)
    cv = task_scores(oof["label"].to_numpy(), oof[PROB_COLS].to_numpy(), task)
    out = {"run": run_dir.name, "task": task or "all", "folds": len(folds.finished), "of": folds.expected,
           "cv_f1": round(cv["f1"], 5), **{f"cv_f1_{t}": rounded(cv.get(f"f1_{t}")) for t in TASKS}}
    for key in ("f1", *(f"f1_{t}" for t in TASKS)):
        values = pd.to_numeric(metrics[key], errors="coerce") if key in metrics else pd.Series(dtype=float)
        out[f"{key}_mean"] = rounded(values.mean() if values.notna().any() else None)
        out[f"{key}_std"] = rounded(values.std(ddof=0) if values.notna().any() else None)
    out["minutes"] = round(float(metrics["minutes"].sum()), 2)
    out["img_per_s"] = round(float(metrics["img_per_s"].mean()), 1) if metrics["img_per_s"].notna().any() else None
    return out


def rounded(x, digits: int = 5):
    return None if x is None else round(float(x), digits)


def fold_folder(k) -> str:
    """A results.csv row's fold folder: fold<k>, or fold_all for the final model (train.py --fold all)."""
    return "fold_all" if str(k) == "all" else f"fold{int(float(k))}"


def write_summaries(out: Path) -> Path:
    """<out>/summary.csv: one row per run with finished folds, the 18-class runs best CV first, then each task's
    (rewritten as folds finish), and results.csv without the rows of folds deleted since (a removed run folder
    leaves no row behind)."""
    import pandas as pd

    from maskfold.files import locked, read_table, write_csv

    with locked(out):
        results = Path(out) / "results.csv"
        if results.is_file():
            df = read_table(results)
            there = [(Path(out) / str(r) / fold_folder(k) / "metrics.json").is_file()
                     for r, k in zip(df["run"], df["fold"])]
            if not all(there):
                write_csv(df[there], results)
        rows = []
        for run in sorted(p for p in Path(out).iterdir() if p.is_dir()):
            try:
                rows.append(summarize(run))
            except (UserError, OSError, KeyError, ValueError):
                continue  # not a run folder, or no finished fold yet
        df = pd.DataFrame(rows)
        if len(df):  # the 18-class runs first, best CV first; then each task's runs (their CV is that task's)
            order = df.assign(_task=df["task"] != "all").sort_values(["_task", "task", "cv_f1"],
                                                                     ascending=[True, True, False])
            df = order.drop(columns="_task")
        write_csv(df, Path(out) / "summary.csv")
    return Path(out) / "summary.csv"
