"""Run folders: where a run's folds live, whether they are finished, and whether they agree.

    runs/<run>/config.json            the options every fold of the run shares
    runs/<run>/fold<k>/config.json    everything fold k ran with (written when it starts)
    runs/<run>/fold<k>/metrics.json   written last: the fold is finished

A run's folds must have been trained alike: predict.py blends them and ensemble.py scores
their out-of-fold files as one model. Mixed folds are refused with their fold numbers.
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from maskfold.cli import UserError
from maskfold.training.config import RUN_DEFAULTS, RUN_KEYS, TrainConfig

FOLD_COLUMNS = ("path", "person", "age", "mask_label", "gender_label", "label", "fold")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({type(e).__name__}: {e}); delete it or pass --overwrite") from None


def fold_dirs(run_dir: Path) -> dict[int, Path]:
    return {int(d.name[4:]): d for d in sorted(Path(run_dir).glob("fold*")) if d.is_dir() and d.name[4:].isdigit()}


def fold_configs(run_dir: Path) -> dict[int, dict]:
    """Each fold's options (folds of an older run without their own config.json use the run's)."""
    shared = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else None
    out = {}
    for k, d in fold_dirs(run_dir).items():
        if (d / "config.json").is_file():
            out[k] = read_json(d / "config.json")
        elif shared is not None and ((d / "last.pt").is_file() or (d / "best.pt").is_file()):
            out[k] = shared
    return out


# What a fold's config.json records beside its options: the person-to-fold map it was split with (a digest
# of folds.csv's content, which a rewrite of the same path changes) and the processes it trained in (the
# effective batch is --batch-size x processes). Folds written before these were recorded are not compared.
FACT_KEYS = ("folds_digest", "processes", "aug_digest", "extra_digest", "labels_digest")


def differences(a: dict, b: dict) -> list[str]:
    """The learning options and recorded facts in which two folds' configs differ (an option a config lacks, from
    before it existed, counts as its default)."""
    return [k for k in RUN_KEYS if a.get(k, RUN_DEFAULTS.get(k)) != b.get(k, RUN_DEFAULTS.get(k))] + \
        [k for k in FACT_KEYS if k in a and k in b and a[k] != b[k]]


def folds_digest(df) -> str:
    """A digest of the person-to-fold map of a folds.csv (its order and other columns aside)."""
    import hashlib

    pairs = sorted(set(zip(df["person"].astype(str), df["fold"].astype(int))))
    return hashlib.sha256("\n".join(f"{p},{k}" for p, k in pairs).encode()).hexdigest()[:16]


def labels_digest(df, targets) -> str:
    """A digest of what a fold learns from and is scored against: each photo's label, its training target (after
    --old-age and the fixes) and its fold."""
    import hashlib

    rows = sorted(zip(df["path"].astype(str), df["label"].astype(int), map(int, targets), df["fold"].astype(int)))
    return hashlib.sha256("\n".join(",".join(map(str, r)) for r in rows).encode()).hexdigest()[:16]


def twin_fold(cfg: TrainConfig, facts: dict) -> Optional[Path]:
    """A finished fold of another run under --out that learnt exactly what this one would: the same options but
    the run's name and the file names, the same labels and targets, the same split, no pseudo-labels added or the
    same ones, out-of-fold paths that resolve alike. Training it again would repeat it."""
    mine = {**cfg.record(), **facts}
    same_place = Path(cfg.folds_csv).resolve().parent

    def extra(c: dict):
        return c.get("extra_digest") if c.get("extra_rows") else None

    if not Path(cfg.out).is_dir():
        return None
    for run in sorted(p for p in Path(cfg.out).iterdir() if p.is_dir() and p.name != cfg.run_name):
        d = run / f"fold{cfg.fold}"
        if not ((d / "metrics.json").is_file() and (d / "best.pt").is_file() and (d / "config.json").is_file()):
            continue
        theirs = read_json(d / "config.json")
        if "labels_digest" not in theirs:
            continue
        keys = [k for k in differences(mine, theirs) if k not in ("folds_csv", "extra", "extra_digest")]
        if keys or extra(mine) != extra(theirs) or theirs.get("labels_digest") != mine["labels_digest"]:
            continue
        if Path(theirs["folds_csv"]).resolve().parent == same_place:
            return d
    return None


def explain(keys: list[str]) -> str:
    """The options that differ, with what the recorded facts mean."""
    words = {"folds_digest": "folds_digest: folds.csv was rewritten since, with another person-to-fold map",
             "processes": "processes: the effective batch is --batch-size x the processes of torchrun",
             "aug_digest": "aug_digest: the --aug file's pipeline changed",
             "extra_digest": "extra_digest: the --extra file's pseudo-labels changed",
             "labels_digest": "labels_digest: the labels or training targets of folds.csv changed"}
    return ", ".join(words.get(k, k) for k in keys)


def disagreeing(reference: dict, configs: dict[int, dict]) -> tuple[list[int], list[str]]:
    """The folds whose options differ from `reference`, and the options that differ."""
    odd = {k: d for k, c in configs.items() if (d := differences(reference, c))}
    return list(odd), sorted({key for d in odd.values() for key in d})


def check_folds_agree(run_dir: Path, configs: dict[int, dict]) -> None:
    """One line naming the folds trained with other options than the run's first fold."""
    if len(configs) < 2:
        return
    first = min(configs)
    odd, keys = disagreeing(configs[first], configs)
    if odd:
        raise UserError(f"{run_dir}: fold(s) {', '.join(map(str, odd))} were trained with other options than fold "
                        f"{first} ({explain(keys)}); a run's folds must agree: retrain them, or move them to a run "
                        "of their own")


@dataclass
class FoldState:
    """Where this fold stands before training: finished, unfinished (resumable) or new."""
    finished: Optional[dict] = None
    resume_from: Optional[Path] = None


def prepare_fold(cfg: TrainConfig, facts: dict) -> FoldState:
    """Refuse a fold that would mix options (or another split, or another number of processes: `facts`) into its
    run, and say what to do with an existing fold."""
    mine = {**cfg.record(), **facts}
    configs = fold_configs(cfg.run_dir)
    odd, keys = disagreeing(mine, {k: c for k, c in configs.items() if k != cfg.fold})
    if odd:
        raise UserError(f"run {cfg.run_dir} was made with other options ({explain(keys)}) in fold(s) "
                        f"{', '.join(map(str, odd))}; pass --run-name NAME for a new run")
    d = cfg.fold_dir
    own = configs.get(cfg.fold)
    changed = differences(own, mine) if own else []
    if (d / "metrics.json").is_file() and not cfg.overwrite:
        if changed:
            raise UserError(f"{d} is finished with other options ({explain(changed)}); pass --run-name NAME for a "
                            "new run, or --overwrite to redo this fold")
        if cfg.skip_done:
            return FoldState(finished=read_json(d / "metrics.json"))
        raise UserError(f"{d} is finished (pass --skip-done to skip it, --overwrite to redo it)")
    last = d / "last.pt"
    if last.is_file() and not cfg.overwrite:
        if not cfg.resume:
            raise UserError(f"{d} has an unfinished run (pass --resume to continue it, --overwrite to restart)")
        if changed:
            raise UserError(f"{d} was started with other options ({explain(changed)}); --overwrite restarts it")
        return FoldState(resume_from=last)
    return FoldState()


@contextmanager
def fold_lock(run_dir: Path, fold: int):
    """Only one process trains a fold at a time. The lock is the kernel's (flock), so a killed process's lock
    goes with it; the holder's pid, left in the file by a process that never released it, is named when the
    next one takes over."""
    import fcntl
    import socket

    made = [d for d in (run_dir, *run_dir.parents) if not d.exists()]  # removed again if nothing is trained
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / f".fold{fold}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"{run_dir / f'fold{fold}'} is being trained now ({holder}): wait for it, or stop it "
                            "first") from None
        left = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if left:
            print(f"note: {run_dir / f'fold{fold}'} was held by {left}, which ended without releasing it (killed?); "
                  "taken over", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            if made and not (run_dir / f"fold{fold}").exists():  # refused before it began: leave no folder
                lock.unlink(missing_ok=True)
                for d in made:
                    if d.is_dir() and not any(d.iterdir()):
                        d.rmdir()
    finally:
        os.close(fd)


@dataclass
class RunFolds:
    """A run's finished folds, the folds it should have, and the unfinished ones."""
    run_dir: Path
    finished: dict[int, Path]  # fold -> best.pt
    expected: Optional[int]
    unfinished: list[int]

    @property
    def partial(self) -> bool:
        return self.expected is not None and len(self.finished) < self.expected

    def describe(self) -> dict:
        return {"run": str(self.run_dir.resolve()), "folds": sorted(self.finished), "of": self.expected,
                "partial": self.partial, "unfinished": self.unfinished}


def run_folds(run_dir: Path) -> RunFolds:
    """The finished folds of a run folder, after checking they were trained alike."""
    configs = fold_configs(run_dir)
    finished = {k: d / "best.pt" for k, d in fold_dirs(run_dir).items()
                if (d / "metrics.json").is_file() and (d / "best.pt").is_file()}
    if not finished:
        inner = sorted(d.name for d in Path(run_dir).iterdir() if d.is_dir() and fold_dirs(d)) \
            if Path(run_dir).is_dir() else []
        if inner:
            raise UserError(f"{run_dir}: a folder of runs ({', '.join(inner[:4])}{', ...' if len(inner) > 4 else ''}), "
                            f"not a run: give one of them, e.g. {Path(run_dir) / inner[0]}")
        raise UserError(f"{run_dir}: no finished fold (fold*/metrics.json with best.pt) in this run folder")
    check_folds_agree(run_dir, {k: c for k, c in configs.items() if k in finished})
    totals = {c.get("folds_total") for k, c in configs.items() if k in finished} - {None}
    unfinished = sorted(k for k, d in fold_dirs(run_dir).items() if k not in finished and (d / "last.pt").is_file())
    return RunFolds(run_dir, finished, max(totals) if totals else None, unfinished)


def results_row(cfg: TrainConfig, metrics: dict) -> dict:
    """results.csv's row of a finished fold: its scores, then every option that can differ between runs."""
    record = cfg.record()
    options = {k: ("x".join(map(str, v)) if isinstance(v, list) else v) for k, v in record.items()
               if k in RUN_KEYS and k not in ("model", "folds_csv")}
    return {"run": cfg.run_name, "fold": cfg.fold, "model": cfg.model,
            **{k: metrics[k] for k in ("f1", "f1_mask", "f1_gender", "f1_age", "best_epoch", "epochs_run",
                                       "img_per_s", "minutes")}, **options}


def summarize(run_dir: Path) -> dict:
    """A run at a glance: its finished folds' mean and spread, and the macro F1 of their out-of-fold
    predictions taken together (the CV score ensemble.py reports for it alone)."""
    import pandas as pd

    from maskfold.labels import PROB_COLS, TASKS, scores

    folds = run_folds(run_dir)
    metrics = pd.DataFrame([read_json(run_dir / f"fold{k}" / "metrics.json") for k in sorted(folds.finished)])
    oof = pd.concat([pd.read_csv(run_dir / f"fold{k}" / "oof.csv") for k in sorted(folds.finished)])
    cv = scores(oof["label"].to_numpy(), oof[PROB_COLS].to_numpy().argmax(1))
    out = {"run": run_dir.name, "folds": len(folds.finished), "of": folds.expected,
           "cv_f1": round(cv["f1"], 5), **{f"cv_f1_{t}": round(cv[f"f1_{t}"], 5) for t in TASKS}}
    for key in ("f1", *(f"f1_{t}" for t in TASKS)):
        out[f"{key}_mean"] = round(float(metrics[key].mean()), 5)
        out[f"{key}_std"] = round(float(metrics[key].std(ddof=0)), 5)
    out["minutes"] = round(float(metrics["minutes"].sum()), 2)
    out["img_per_s"] = round(float(metrics["img_per_s"].mean()), 1) if metrics["img_per_s"].notna().any() else None
    return out


def write_summaries(out: Path) -> Path:
    """<out>/summary.csv: one row per run with finished folds, best CV first (rewritten as folds finish)."""
    import pandas as pd

    from maskfold.files import locked, write_csv

    with locked(out):
        rows = []
        for run in sorted(p for p in Path(out).iterdir() if p.is_dir()):
            try:
                rows.append(summarize(run))
            except (UserError, OSError, KeyError, ValueError):
                continue  # not a run folder, or no finished fold yet
        df = pd.DataFrame(rows)
        if len(df):
            df = df.sort_values("cv_f1", ascending=False)
        write_csv(df, Path(out) / "summary.csv")
    return Path(out) / "summary.csv"


def read_fold_table(path: Path, columns: tuple[str, ...] = FOLD_COLUMNS):
    """folds.csv's rows, checked: the file, its `columns`, no person in two folds."""
    from maskfold.files import read_table

    if not path.is_file():
        raise UserError(f"{path}: no such file")
    df = read_table(path, dtype={"id": str})
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (make it with split.py)")
    spans = df.groupby("person")["fold"].nunique()
    if (spans > 1).any():
        raise UserError(f"{path}: person {spans[spans > 1].index[0]} is in more than one fold, a leak; "
                        "re-split with split.py")
    return df


def read_folds(path: Path, fold: int):
    """folds.csv, checked (read_fold_table), with the fold asked for and every photo there."""
    df = read_fold_table(path)
    if df.empty:
        raise UserError(f"{path}: no rows (make folds.csv with split.py)")
    if (df["fold"] < 0).any():
        raise UserError(f"{path}: row {int((df['fold'] < 0).to_numpy().argmax()) + 2} has fold -1, a pseudo-label "
                        "(pseudo.py): give that file to train.py --extra, which trains each fold on its own fold's "
                        "labels only")
    folds = sorted(df["fold"].unique())
    if fold not in folds:
        raise UserError(f"--fold {fold}: {path} has folds {', '.join(map(str, folds))}")
    df["file"] = [str(path.parent / p) for p in df["path"]]
    absent = [f for f in df["file"] if not os.path.isfile(f)]
    if absent:
        raise UserError(f"{path}: {len(absent)} image(s) missing, first {absent[0]}")
    return df
