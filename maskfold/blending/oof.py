"""Out-of-fold probabilities: a fold's oof.csv written, a run's read, paired with the ensemble inputs they stand for.

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
from maskfold.files import write_csv
from maskfold.labels import PROB_COLS
from maskfold.probs import read_probs
from maskfold.runs import fold_configs, fold_dirs, run_folds, run_task


@dataclass
class OOF:
    names: list[str]  # one per input: its runs
    inputs: list[np.ndarray]  # (N, 18) per input, rows aligned
    y: np.ndarray
    folds: np.ndarray
    paths: list[str]  # resolved photo paths
    groups: tuple[np.ndarray, np.ndarray] | None = None  # (group, its sureness) per photo, from a people.csv of the
    # train photos
    of: int | None = None  # the folds the runs were split into (the CV covers np.unique(folds) of them)
    tasks: list[str | None] | None = None  # per input: the one task its runs learnt (train.py --task), or None

    @property
    def coverage(self) -> str:
        """' (over 1 of 2 folds)' for a CV that covers some folds only, else ''."""
        k = len(np.unique(self.folds))
        return f" (over {k} of {self.of} folds)" if self.of and k < self.of else ""

    @property
    def keys(self) -> list[str]:
        """'<person folder>/<stem>': how a people.csv of the train photos names them."""
        return [f"{Path(p).parent.name}/{Path(p).stem}" for p in self.paths]


def read_run_oof(run: Path, resolve: bool = True) -> pd.DataFrame:
    """The finished folds' out-of-fold rows of a run, indexed by resolved photo path (or, `resolve` off, by the
    path as folds.csv gives it, relative to its folder)."""
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
        base = Path(configs[k]["folds_csv"]).parent if resolve and configs.get(k, {}).get("folds_csv") else None
        df["path"] = [os.path.abspath(base / p) if base else p for p in df["path"]]  # links stay links
        frames.append(df)
    return pd.concat(frames).set_index("path")


@dataclass(frozen=True)
class Source:
    """A run behind an input: its folder, the folds the input's checkpoints came from (None: all finished
    folds, for an input without a record of them), and its weight in the input (its number of checkpoints)."""
    run: Path
    folds: tuple[int, ...] | None
    weight: int


def runs_of(record: dict | None) -> list[Source]:
    """Each run an input's record names, with the folds it used."""
    if not record:
        return []
    return [Source(Path(r["run"]), tuple(r["folds"]) if r.get("folds") else None, max(1, len(r.get("folds") or [])))
            for r in record.get("runs", [])]


def check_current(f: Path, s: Source, finished: list[int], of: int | None) -> None:
    """Say when an input was predicted from fewer folds than its run has finished now (a prediction made
    after a crash and never redone): its CV is then scored on those folds only."""
    if s.folds is not None and set(finished) - set(s.folds):
        print(f"warning: {f} was predicted from fold(s) {', '.join(map(str, s.folds))} of {s.run}, which has "
              f"{', '.join(map(str, finished))} finished now: predict again with --overwrite to use them all; "
              f"its CV is over those {len(s.folds)} of {of or len(finished)} folds", file=sys.stderr)


def check_tta(f: Path, record: dict | None, s: Source) -> None:
    """An input predicted with other test-time views than its run's out-of-fold answers were made with: the CV
    would score another recipe than the one submitted."""
    from maskfold.tta import parse

    if not record or "tta" not in record:
        return
    given = tuple(sorted(parse(record["tta"], f"{f}.json's tta")))
    used = {tuple(sorted(parse(c["oof_tta"], "--oof-tta"))) for k, c in fold_configs(s.run).items()
            if "oof_tta" in c and (s.folds is None or k in s.folds)}
    if used and used != {given}:
        theirs = " and ".join(",".join(t) or "none" for t in sorted(used))
        raise UserError(f"{f} was predicted with --tta {','.join(given) or 'none'}, but the out-of-fold answers of "
                        f"{s.run} were made with --oof-tta {theirs}: its CV would score another recipe than the "
                        f"submission; predict it with --tta {theirs}")


def first_difference(frames: dict[Path, pd.DataFrame], common: pd.Index, column: str):
    """The first run whose `column` (label, fold) differs from the first run's on the photos `common`:
    (first run, that run, how many photos differ, the first such photo, its two values), or None."""
    runs = list(frames)
    ours = frames[runs[0]].loc[common, column].to_numpy()
    for r in runs[1:]:
        theirs = frames[r].loc[common, column].to_numpy()
        if (theirs != ours).any():
            i = int(np.argmax(theirs != ours))
            return runs[0], r, int((theirs != ours).sum()), common[i], ours[i], theirs[i]
    return None


def check_labels(frames: dict[Path, pd.DataFrame], common: pd.Index) -> None:
    """Runs trained on different labels (before and after split.py --fixes): their out-of-fold files hold
    different truths, and a CV scored against any one of them depends on which input came first."""
    d = first_difference(frames, common, "label")
    if d is not None:
        a, b, n, photo, x, y = d
        raise UserError(f"{a} and {b} were trained on different labels ({n} photos differ, e.g. {photo}: {x} in one, "
                        f"{y} in the other): give --labels FOLDS_CSV, the folds.csv whose labels the CV scores "
                        "against (the fixed one)")


def photo_key(path: str) -> str:
    """'<person folder>/<stem>': a train photo whatever tree it is in (the photos, or their crops)."""
    p = Path(path)
    return f"{p.parent.name}/{p.stem}"


def photo_keyed(df: pd.DataFrame) -> pd.DataFrame | None:
    """Out-of-fold rows indexed by photo_key, or None where two of them share one."""
    keys = df.index.map(photo_key)
    return None if keys.duplicated().any() else df.set_axis(keys)


def shared(frames: dict) -> pd.Index:
    """The photos every frame holds, in the first one's order."""
    common = None
    for df in frames.values():
        common = df.index if common is None else common.intersection(df.index, sort=False)
    return common if common is not None else pd.Index([])


def labels_from(path: Path, common: pd.Index, keyed: bool = False) -> np.ndarray:
    """The labels of a folds.csv (--labels) for the photos `common` names (resolved paths, or `keyed`:
    photo_key)."""
    from maskfold.folds import read_fold_table, resolved_paths

    df = read_fold_table(path)
    df.index = resolved_paths(df, path)
    if keyed:
        df.index = df.index.map(photo_key)
    missing = common.difference(df.index)
    if len(missing):
        raise UserError(f"--labels {path}: {len(missing)} of the runs' out-of-fold photos are not in it, e.g. "
                        f"{missing[0]} (a folds.csv of other photos?)")
    return df.loc[common, "label"].to_numpy(int)


def check_splits(frames: dict[Path, pd.DataFrame], common: pd.Index, needs: list[str]) -> None:
    """Runs split from different folds.csv files: each out-of-fold answer is honest, but a bias or rule fitted
    with one run's folds held out would be fitted on another run's answers for photos its models trained on."""
    d = first_difference(frames, common, "fold")
    if d is None:
        return
    a, b, _, photo, x, y = d
    what = f"{a} and {b} were split differently (photo {photo} is in fold {x} of one and {y} of the other)"
    fitted = [n for n in needs if n in ("--bias", "--oof-people", "--fit-weights")]
    if fitted:
        raise UserError(f"{what}: {', '.join(fitted)} would be fitted on answers of models that saw the held-out "
                        "labels; blend runs of one folds.csv")
    print(f"warning: {what}: the CV of their blend mixes two splits", file=sys.stderr)


def pair_runs(inputs: list[Path], records: list[dict | None], oof_runs: list[Path],
              needs: list[str]) -> list[list[Source]] | None:
    """The runs behind each input: its record's, or --oof RUN given once per input in the inputs' order; None
    (with a note) when some input cannot be paired and nothing asked for out-of-fold probabilities."""
    if oof_runs and len(oof_runs) != len(inputs):
        raise UserError(f"{len(inputs)} inputs but {len(oof_runs)} --oof runs: give one --oof per input, in the "
                        "inputs' order, or none (each input's record names its runs)")
    pairs, unpaired = [], []
    for i, (f, rec) in enumerate(zip(inputs, records)):
        recorded = runs_of(rec)
        if oof_runs:
            given = oof_runs[i].resolve()
            if recorded and given not in {s.run.resolve() for s in recorded}:
                raise UserError(f"input {i + 1} ({f}) was predicted by {', '.join(str(s.run) for s in recorded)}, "
                                f"but is paired with --oof {oof_runs[i]}: list --oof in the inputs' order")
            recorded = [s for s in recorded if s.run.resolve() == given] or [Source(oof_runs[i], None, 1)]
        missing = [s.run for s in recorded if not s.run.is_dir()]
        unscored = [s.run for s in recorded if s.run.is_dir() and not any(
            (d / "metrics.json").is_file() and (d / "oof.csv").is_file() for d in fold_dirs(s.run).values())]
        if missing:
            unpaired.append(f"{f}: its run {missing[0]} is gone")
        elif unscored:
            unpaired.append(f"{f}: its run {unscored[0]} has no finished fold with out-of-fold answers (a final "
                            "model, train.py --fold all, is scored by its run's K folds)")
        elif not recorded:
            unpaired.append(f"{f} has no record of its runs ({f}.json)")
        pairs.append(recorded)
    if unpaired:
        if needs:
            raise UserError(f"{', '.join(needs)} need out-of-fold probabilities, but {unpaired[0]}: pair every input "
                            "with --oof RUN")
        print(f"note: no CV score: {unpaired[0]}", file=sys.stderr)
        return None
    return pairs


def oof_for_inputs(inputs: list[Path], records: list[dict | None], oof_runs: list[Path],
                   needs: list[str], labels: Path | None = None) -> OOF | None:
    """Each input's out-of-fold probabilities, aligned on the photos they share, with the labels they are scored
    against (the runs' own, which must agree, or those of the folds.csv `labels`); None (with a note) when some
    input cannot be paired and nothing asked for them."""
    pairs = pair_runs(inputs, records, oof_runs, needs)
    if pairs is None:
        return None
    frames: dict[tuple[Path, tuple | None], pd.DataFrame] = {}
    whole: dict[Path, pd.DataFrame] = {}
    expected: dict[Path, int | None] = {}  # the folds each run was split into
    for f, rec, runs in zip(inputs, records, pairs):
        for s in runs:
            key = s.run.resolve()
            if key not in whole:
                whole[key], expected[key] = read_run_oof(s.run), run_folds(s.run).expected
            finished = sorted(int(k) for k in whole[key]["fold"].unique())
            check_current(f, s, finished, expected[key])
            check_tta(f, rec, s)
            used = whole[key] if s.folds is None else whole[key][whole[key]["fold"].isin(s.folds)]
            frames[(key, s.folds)] = used
    common = shared(frames)
    largest = max(len(df) for df in frames.values())
    by_photo, whole_by_photo = ({k: photo_keyed(df) for k, df in d.items()} for d in (frames, whole))
    keyed = False
    if len(common) < largest and all(df is not None for df in [*by_photo.values(), *whole_by_photo.values()]) and \
            len(shared(by_photo)) > len(common):
        # runs trained on other trees of the same photos (a mask model on crops, an age model on whole photos):
        # matched by person folder and photo name instead of path
        print("note: the inputs' runs trained on different image folders: their out-of-fold photos are matched by "
              "person folder and photo name", file=sys.stderr)
        paths = {k: pd.Series(df.index, index=by_photo[k].index) for k, df in frames.items()}
        frames, whole, keyed = by_photo, whole_by_photo, True
        common = shared(frames)
        first_paths = paths[(pairs[0][0].run.resolve(), pairs[0][0].folds)].loc[common].tolist()
    else:
        first_paths = list(common)
    if not len(common):
        raise UserError("the inputs' runs share no out-of-fold photos (predicted from folds that do not overlap?)")
    if len(common) < largest:
        print(f"note: CV over the {len(common)} photos that every input's runs scored out of fold ({largest} in the "
              "largest): runs with other finished folds, or inputs predicted from some folds only", file=sys.stderr)
    check_splits(whole, common, needs)
    y = labels_from(labels, common, keyed) if labels is not None else None
    if y is None:
        check_labels(whole, common)
    first = frames[(pairs[0][0].run.resolve(), pairs[0][0].folds)].loc[common]
    arrays = []
    for runs in pairs:
        w = np.array([s.weight for s in runs], float)
        arrays.append(sum(wi * frames[(s.run.resolve(), s.folds)].loc[common, PROB_COLS].to_numpy()
                          for wi, s in zip(w, runs)) / w.sum())
    names = [" + ".join(str(s.run) for s in runs) for runs in pairs]
    of = max((n or 0 for n in expected.values()), default=0) or None
    return OOF(names, arrays, first["label"].to_numpy(int) if y is None else y, first["fold"].to_numpy(int),
               first_paths, of=of, tasks=[input_task(f, runs) for f, runs in zip(inputs, pairs)])


def input_task(f: Path, runs) -> str | None:
    """The one task an input's runs learnt (train.py --task; None: all 18 classes)."""
    learnt = {run_task(s.run) for s in runs}
    if len(learnt) > 1:
        raise UserError(f"{f}: its runs learnt different things ({', '.join(sorted(t or 'all' for t in learnt))} "
                        "in train.py --task): one input, one task")
    return learnt.pop()


def write_oof(path: Path, val: pd.DataFrame, probs: np.ndarray) -> None:
    oof = pd.DataFrame(probs, columns=PROB_COLS)
    oof.insert(0, "fold", val["fold"].to_numpy())
    oof.insert(0, "label", val["label"].to_numpy())
    oof.insert(0, "path", val["path"].to_numpy())
    write_csv(oof, path, float_format="%.6g")
