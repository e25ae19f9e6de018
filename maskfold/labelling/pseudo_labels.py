"""Pseudo-labels of the eval photos, one label column per fold, and reading them back for a fold's training.

Fold k of a second round validates on the people of fold k. Its pseudo-labels must therefore come from
models that never saw those people: the fold-k models of the first round (trained on the other folds),
never the average of all folds. pseudo.py writes `label_fold<k>` from fold k's models only; train.py
--extra takes its own fold's column, and adds those photos to training, never to validation. A record
beside the CSV (`pseudo.csv.json`) names the runs, their person-to-fold map and each checkpoint's digest,
so that train.py refuses labels made with another split or by checkpoints retrained since.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from maskfold.blending.rules import answers, pool
from maskfold.cli import UserError
from maskfold.folds import resolved_paths
from maskfold.labels import TASKS, decode, marginals
from maskfold.probs import sha256

KIND = "pseudo-labels"
AGES = (20, 45, 60)  # an age inside each band, for the age column of folds.csv's format (train.py uses the label)


def label_col(k: int | str) -> str:
    """Fold k's pseudo-label column; the final model's (train.py --fold all, which no fold validates): `label`, the
    answer of every fold's models together where it is as sure as --min-conf asks (else -1)."""
    return "label" if k == "all" else f"label_fold{k}"


def sure_col(k: int | str) -> str:
    return "sure" if k == "all" else f"sure_fold{k}"


def soft_cols(k: int) -> list[str]:
    """Fold k's per-task probabilities of a row: its soft label (mask of the photo, gender and age of the person)."""
    return [f"{t}{i}_fold{k}" for t, n in TASKS.items() for i in range(n)]


def person_answers(p: np.ndarray, groups: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each photo's class and how sure it is of each task (N, 3: mask, gender, age). Photos of one group (>= 0)
    share the person's gender and age (the mean of its photos' probabilities; a complete person gets one photo worn
    wrongly and one not worn) and their
    sureness of those: the person's gender and age probability beside the photo's own mask probability.
    Photos alone (-1) keep their own answer and sureness. Also the
    soft labels, (N, 8): the photo's mask probabilities, the person's (mean) gender and age probabilities."""
    ans = answers(p, groups=groups, size=size, vote="mean")
    m = marginals(p)
    for task in ("gender", "age"):  # a person's gender and age probabilities: the mean over its photos
        m[task] = pool(m[task], groups)
    rows = np.arange(len(p))
    conf = np.stack([m[t][rows, a] for t, a in zip(TASKS, decode(ans))], 1)
    return ans, conf, np.concatenate([m[t] for t in TASKS], 1)


def parse_min_conf(spec: str, default: float = 0.7) -> dict[str, list[float]]:
    """--min-conf: how sure an answer must be, per task and class of the answer. One probability for every task
    ('0.7'), some tasks' ('mask=0.9,gender=0.9,age=0.8'), or a task's per class, in its classes' order, split by
    '/' (the winning team's 'mask=0.5/0.95/0.95,gender=0.9,age=0.8': worn 0.5, worn wrongly and none 0.95); a task
    not named keeps `default`. Returns each task's threshold for each of its classes."""
    from maskfold.cli import UserError

    words = (f"--min-conf {spec}: give a probability, task=probability pairs (mask=0.9,gender=0.9,age=0.8), or a "
             "task's per class split by / (mask=0.5/0.95/0.95)")
    out = {t: [default] * n for t, n in TASKS.items()}
    parts = [x.strip() for x in str(spec).split(",") if x.strip()]
    try:
        if len(parts) == 1 and "=" not in parts[0]:
            out = {t: [float(parts[0])] * n for t, n in TASKS.items()}
        else:
            for part in parts:
                task, _, value = (x.strip() for x in part.partition("="))
                if task not in TASKS:
                    raise UserError(f"--min-conf {spec}: {task or part} is not a task (mask, gender, age)")
                each = [float(v) for v in value.split("/")]
                if len(each) not in (1, TASKS[task]):
                    raise UserError(f"--min-conf {spec}: {task} has {TASKS[task]} classes; give one probability or "
                                    f"{TASKS[task]} split by /")
                out[task] = each * TASKS[task] if len(each) == 1 else each
    except ValueError:
        raise UserError(words) from None
    if not parts or any(not 0 <= v <= 1 for each in out.values() for v in each):
        raise UserError(f"--min-conf {spec}: each a probability, 0 to 1")
    return out


def confident(conf: np.ndarray, ans: np.ndarray, min_conf: dict[str, list[float]]) -> np.ndarray:
    """Rows whose every task is at least as sure as --min-conf asks of the class it answers (conf: (N, 3), mask,
    gender, age; ans: the 18-class answers)."""
    need = np.stack([np.asarray(min_conf[t])[c] for t, c in zip(TASKS, decode(ans))], 1)
    return np.all(conf >= need, axis=1)


def qualifying_groups(groups: np.ndarray, sure: np.ndarray, min_sure: float, min_photos: int) -> np.ndarray:
    """people.py's groups that may give pseudo-labels: surer than `min_sure`, of at least `min_photos` photos; the
    other photos get -1 (none)."""
    ok = sure > min_sure
    g = np.where(ok, groups, -1)
    sizes = pd.Series(g[g >= 0]).value_counts()
    small = sizes.index[sizes < min_photos]
    return np.where(np.isin(g, small), -1, g)


def file_digest(path: Path) -> str:
    """A file's content, as a short digest (a checkpoint in pseudo.csv.json, an image in the overlap check)."""
    return sha256(path)[:16]


def read_extra(path: Path, fold: int | str, folds: pd.DataFrame, digest: str,
               soft: bool = False) -> tuple[pd.DataFrame, dict]:
    """pseudo.csv's rows for fold `fold` (file, label, sure; `soft`: and its soft_cols), after checking it against
    its record and against the fold's training data `folds` (folds.csv's rows, with resolved `file`s; `digest`:
    its person-to-fold map). Returns the rows and the record."""
    from maskfold.files import read_table
    from maskfold.probs import read_provenance

    where = f"--extra {path}"
    if not path.is_file():
        raise UserError(f"{where}: no such file")
    record = read_provenance(path)
    if record is None or record.get("kind") != KIND:
        raise UserError(f"{where}: no record of the runs that made it ({path}.json); make it with pseudo.py")
    df = read_table(path, dtype={"id": str, "person": str})
    col = label_col(fold)
    if "path" not in df.columns or col not in df.columns:
        have = ", ".join(c for c in df.columns if c.startswith("label_fold")) or "none"
        raise UserError(f"{where}: no {col} column (fold {fold}'s pseudo-labels; it has {have})")
    if record.get("folds_digest") != digest:
        raise UserError(f"{where}: its labels come from runs split with another person-to-fold map than this "
                        f"folds.csv, so fold {fold}'s labels may come from a model that saw its validation people; "
                        "make them again (pseudo.py) from runs trained on this folds.csv")
    for given in record.get("inputs", []):
        p = Path(given["path"])
        if p.is_file() and sha256(p) != given["sha256"]:
            raise UserError(f"{where} is stale: {p}, the probabilities it was made from, changed after it was made; "
                            "make it again with pseudo.py")
    for run in record.get("runs", []):
        for k, ck in run.get("checkpoints", {}).items():
            p = Path(ck["path"])
            if not p.is_file():
                raise UserError(f"{where} cannot be checked: {p} (fold {k} of {run['run']}), a checkpoint it was made "
                                "from, is gone (moved or deleted since?); make it again with pseudo.py")
            if file_digest(p) != ck["sha256"]:
                raise UserError(f"{where} is stale: {p} (fold {k} of {run['run']}) was trained again after it was "
                                "made; make it again with pseudo.py")
    df["file"] = resolved_paths(df, path)
    absent = [i for i, f in enumerate(df["file"]) if not os.path.isfile(f)]
    if absent:
        raise UserError(f"{where}: row {absent[0] + 2}: no such photo {df['file'].iloc[absent[0]]}")
    check_no_overlap(where, df, folds)
    images = os.path.abspath(record["images"])
    outside = [i for i, f in enumerate(df["file"]) if os.path.dirname(f) != images]
    if outside:
        raise UserError(f"{where}: row {outside[0] + 2}: {df['path'].iloc[outside[0]]} is not in {images}, the eval "
                        "folder its labels were predicted for")
    labels = pd.to_numeric(df[col], errors="coerce")
    if labels.isna().any() or not labels.between(-1, 17).all():
        bad = int(np.flatnonzero(labels.isna() | ~labels.between(-1, 17))[0])
        raise UserError(f"{where}: row {bad + 2}: {col} is not a class 0..17 (or -1: not this fold's)")
    if soft and not set(soft_cols(fold)) <= set(df.columns):
        raise UserError(f"{where}: no soft labels of fold {fold} ({soft_cols(fold)[0]}, ...) for --extra-soft; make "
                        "it again with pseudo.py")
    rows = df[labels >= 0]
    sure = rows[sure_col(fold)] if sure_col(fold) in rows.columns else pd.Series(np.nan, index=rows.index)
    out = pd.DataFrame({"file": rows["file"], "label": labels[labels >= 0].astype(int), "sure": sure})
    if soft:
        out[soft_cols(fold)] = rows[soft_cols(fold)].to_numpy(float)
    return out.reset_index(drop=True), record


def check_no_overlap(where: str, extra: pd.DataFrame, folds: pd.DataFrame) -> None:
    """No pseudo-labelled photo is a train photo: not the same file, nor the same bytes under another name."""
    train = {os.path.realpath(f) for f in folds["file"]}
    same = [f for f in extra["file"] if os.path.realpath(f) in train]
    if same:
        raise UserError(f"{where}: {same[0]} is a train photo of folds.csv; pseudo-labels are for eval photos only")
    seen = {}
    for f in folds["file"]:
        seen.setdefault(os.path.getsize(f), []).append(f)
    for f in extra["file"]:
        for other in seen.get(os.path.getsize(f), []):
            if file_digest(Path(f)) == file_digest(Path(other)):
                raise UserError(f"{where}: {f} is the same image as the train photo {other}; pseudo-labels are for "
                                "eval photos only")
