"""Out-of-fold probabilities: a run's oof.csv files, paired with the ensemble inputs they stand for.

An input's record (written by predict.py) names the runs that made it; their finished folds'
oof.csv files are that input's out-of-fold probabilities. Photos are matched by their resolved
paths, so runs split from different folds.csv files still line up.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from maskfold.cli import UserError
from maskfold.labels import PROB_COLS
from maskfold.probs import read_probs
from maskfold.runs import fold_configs, run_folds


@dataclass
class OOF:
    names: list[str]  # one per input: its runs
    inputs: list[np.ndarray]  # (N, 18) per input, rows aligned
    y: np.ndarray
    folds: np.ndarray
    paths: list[str]  # resolved photo paths
    groups: np.ndarray | None = None  # person number per photo, from a people.csv of the train photos

    @property
    def keys(self) -> list[str]:
        """'<person folder>/<stem>': how a people.csv of the train photos names them."""
        return [f"{Path(p).parent.name}/{Path(p).stem}" for p in self.paths]


def read_run_oof(run: Path) -> pd.DataFrame:
    """The finished folds' out-of-fold rows of a run, indexed by resolved photo path."""
    folds = run_folds(run)
    configs = fold_configs(run)
    frames = []
    for k in sorted(folds.finished):
        f = run / f"fold{k}" / "oof.csv"
        if not f.is_file():
            raise UserError(f"{run}: fold {k} is finished but has no oof.csv")
        df = read_probs(f, "path")
        for col in ("label", "fold"):
            if col not in df.columns:
                raise UserError(f"{f}: not an oof.csv of train.py (no {col} column; it has path,label,fold,p0..p17)")
        base = Path(configs[k]["folds_csv"]).parent if k in configs and configs[k].get("folds_csv") else None
        df["path"] = [os.path.abspath(base / p) if base else p for p in df["path"]]  # links stay links
        frames.append(df)
    return pd.concat(frames).set_index("path")


def runs_of(record: dict | None) -> list[tuple[Path, int]]:
    """(run folder, number of its checkpoints in the input) of each run an input's record names."""
    if not record:
        return []
    return [(Path(r["run"]), max(1, len(r.get("folds") or []))) for r in record.get("runs", [])]


def oof_for_inputs(inputs: list[Path], records: list[dict | None], oof_runs: list[Path],
                   needs: list[str]) -> OOF | None:
    """Each input's out-of-fold probabilities, aligned on the photos they share; None (with a note) when
    some input cannot be paired and nothing asked for them."""
    if oof_runs and len(oof_runs) != len(inputs):
        raise UserError(f"{len(inputs)} inputs but {len(oof_runs)} --oof runs: give one --oof per input, in the "
                        "inputs' order, or none (each input's record names its runs)")
    pairs, unpaired = [], []
    for i, (f, rec) in enumerate(zip(inputs, records)):
        recorded = runs_of(rec)
        if oof_runs:
            given = oof_runs[i].resolve()
            if recorded and given not in {r.resolve() for r, _ in recorded}:
                raise UserError(f"input {i + 1} ({f}) was predicted by {', '.join(str(r) for r, _ in recorded)}, but "
                                f"is paired with --oof {oof_runs[i]}: list --oof in the inputs' order")
            recorded = [(oof_runs[i], 1)]
        missing = [r for r, _ in recorded if not r.is_dir()]
        if missing:
            unpaired.append(f"{f}: its run {missing[0]} is gone")
        elif not recorded:
            unpaired.append(f"{f} has no record of its runs ({f}.json)")
        pairs.append(recorded)
    if unpaired:
        if needs:
            raise UserError(f"{', '.join(needs)} need out-of-fold probabilities, but {unpaired[0]}: pair every input "
                            "with --oof RUN")
        print(f"note: no CV score: {unpaired[0]}", file=sys.stderr)
        return None
    cache: dict[Path, pd.DataFrame] = {}
    for r, _ in (p for runs in pairs for p in runs):
        if r.resolve() not in cache:
            cache[r.resolve()] = read_run_oof(r)
    common = None
    for df in cache.values():
        common = df.index if common is None else common.intersection(df.index)
    if common is None or not len(common):
        raise UserError("the --oof runs share no images")
    first = cache[pairs[0][0][0].resolve()].loc[common]
    arrays = []
    for runs in pairs:
        w = np.array([n for _, n in runs], float)
        arrays.append(sum(wi * cache[r.resolve()].loc[common, PROB_COLS].to_numpy() for wi, (r, _) in zip(w, runs))
                      / w.sum())
    names = [" + ".join(str(r) for r, _ in runs) for runs in pairs]
    return OOF(names, arrays, first["label"].to_numpy(int), first["fold"].to_numpy(int), list(common))


def suspects(cv: OOF, p: np.ndarray, n: int) -> pd.DataFrame:
    """People whose out-of-fold probabilities most contradict their labels: candidates for relabelling."""
    y = cv.y
    df = pd.DataFrame({"person": [Path(i).parent.name for i in cv.paths], "label": y,
                       "p_label": p[np.arange(len(y)), y], "wrong": p.argmax(1) != y})
    agg = df.groupby("person").agg(images=("label", "size"), mean_p_label=("p_label", "mean"),
                                   wrong=("wrong", "sum"))
    return agg.sort_values("mean_p_label").head(n).reset_index()
