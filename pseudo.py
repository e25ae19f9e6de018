"""Pseudo-labels of the eval photos for a second round of training, one column per fold, without a leak.

    python pseudo.py work/probs.csv --info data/eval/info.csv --images work/crops/eval \
        --people work/people.csv -o work/pseudo.csv
    for k in 0 1 2 3 4; do python train.py work/folds.csv --model resnet50 --run-name resnet50_r2 --fold $k \
        --extra work/pseudo.csv; done

The probability CSVs' records name the runs that made them. Each fold's label column comes from
that fold's models only (label_fold<k>: the models trained without fold k's people), so that fold
k of the second round is validated on people no label of its training came from: the average of
all folds would leak them, and the CV would rise while the test score does not. With --people,
a person's photos share the person's answer (one gender and age, one photo worn wrongly and one
not worn), from people.py's groups that are sure enough; without it, photo by photo. Only
answers at least --min-conf sure are kept. Writes rows in folds.csv's format (fold -1: never
validated) with the label of all folds' average, sure, label_fold<k>, sure_fold<k> (-1: not
sure enough for that fold), the fold's soft label (mask0_fold<k>..age2_fold<k>: the photo's mask
and the person's gender and age probabilities, for train.py --extra-soft), and <out>.json: the
runs, their split and each checkpoint's digest (train.py --extra refuses a stale or foreign file).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from maskfold.cli import UserError, arg, command, make_app, opt, result
from maskfold.device import Device, amp_dtype, resolve_device
from maskfold.files import check_new, check_outside, read_info, read_record, record_path
from maskfold.folds import COLUMNS
from maskfold.images import stem_key
from maskfold.labelling import pseudo_labels as pl
from maskfold.labels import PROB_COLS, TASKS, decode
from maskfold.people.people_csv import groups_of
from maskfold.prediction import sources
from maskfold.probs import aligned, answered_task, read_provenance, read_truth, sha256, write_probs
from maskfold.runs import fold_configs, run_folds, task_words
from maskfold.threads import DECODING_AHEAD, set_threads
from maskfold.threads import option as threads_option
from maskfold.tta import parse as parse_tta

app = make_app()


@dataclass(frozen=True, kw_only=True)
class PseudoOptions:
    inputs: list[Path] = arg("probability CSVs of the eval photos (predict.py), whose records name the runs")
    info: Path = opt(..., "info.csv: the eval ImageIDs")
    images: Path = opt(..., "the eval images the runs predicted (predict.py --images: crops, as they trained)")
    out: Path = opt(..., "pseudo-label CSV to write (train.py --extra)", "--out", "-o")
    people: Optional[Path] = opt(None, "people.csv of the eval photos (people.py): a person's photos share its "
                                 "answer; without it, each photo its own")
    min_conf: str = opt("0.7", "keep an answer only where each task is this sure: one probability for all, per "
                        "task (mask=0.9,gender=0.9,age=0.8; a task not named keeps 0.7), or per class of a task's "
                        "answer split by / (mask=0.5/0.95/0.95: worn, wrongly, none); a person's gender and age "
                        "probability is the mean over its photos")
    min_sure: float = opt(0.0, "with --people: use only groups surer than this (people.py's sure)")
    min_photos: Optional[int] = opt(None, "with --people: use only groups of at least this many photos (default: "
                                    "--group-size, whole people)")
    group_size: int = opt(7, "photos per person")
    truth: Optional[Path] = opt(None, "ImageID,ans with the true classes (demo): print how many labels are right")
    batch_size: int = opt(128, "images per forward pass")
    device: Device = opt(Device.auto, "where to predict")
    amp: bool = opt(True, "autocast on CUDA (off on a CPU)")
    threads: Optional[int] = threads_option(DECODING_AHEAD)
    overwrite: bool = opt(False, "replace an existing output file")


@dataclass
class Source:
    """A run behind the inputs: its finished folds' checkpoints and the TTA its input was predicted with."""
    run: Path
    best: dict[int, Path]
    tta: tuple
    digest: str


def read_inputs(o: PseudoOptions, ids: pd.Series) -> tuple[np.ndarray, list[Source], list[dict]]:
    """The inputs' average (aligned to info.csv) and the runs their records name, each checked to have all its
    folds finished, predicted from all of them, and split like the others."""
    blend, sources = np.zeros((len(ids), len(PROB_COLS))), {}
    described = []
    for f in o.inputs:
        p = aligned(f, ids, str(o.info))
        rec = read_provenance(f)
        task = answered_task(rec, p)
        if task:
            raise UserError(f"{f} comes from {task_words(task)}: a pseudo-label is a whole class; give inputs of "
                            "18-class runs")
        blend += p / len(o.inputs)
        if not rec or not rec.get("runs"):
            raise UserError(f"{f}: no record of the runs that made it ({f}.json): pseudo-labels need each fold's "
                            "own model; predict it with predict.py from run folders")
        used: dict[Path, set] = {}  # a run's folds in this input (predict.py lists checkpoint files one by one)
        for r in rec["runs"]:
            used.setdefault(Path(r["run"]), set()).update(r.get("folds") or [])
        for run, folds_used in used.items():
            if run.resolve() in sources:
                continue
            if not run.is_dir():
                raise UserError(f"{f}: its run {run} is gone")
            folds = run_folds(run)
            missing = sorted(set(range(folds.expected or 0)) - set(folds.finished))
            if missing:
                raise UserError(f"{run}: fold(s) {', '.join(map(str, missing))} not finished: their pseudo-labels "
                                "need their own models; finish them (train.py --fold K) first")
            if not folds_used:
                raise UserError(f"{f} was predicted from the final model of {run} alone (train.py --fold all), "
                                "which saw every fold's people: pseudo-labels need each fold's own model; predict "
                                "from the run folder")
            if sorted(folds_used) != sorted(folds.finished):
                raise UserError(f"{f} was predicted from fold(s) {sorted(folds_used)} of {run}, which has "
                                f"{sorted(folds.finished)} finished now: predict it again with --overwrite")
            digests = {c.get("folds_digest") for k, c in fold_configs(run).items() if k in folds.finished}
            if None in digests:
                raise UserError(f"{run}: trained before runs recorded their person-to-fold map, so which people "
                                "each fold's model saw cannot be checked; train it again")
            tta = parse_tta(rec.get("tta", True), f"{f}.json's tta")  # records before --tta: True, the flip
            sources[run.resolve()] = Source(run, dict(folds.finished), tta, digests.pop())
            described.append(folds.describe())
    runs = list(sources.values())
    for s in runs[1:]:
        if s.digest != runs[0].digest or set(s.best) != set(runs[0].best):
            raise UserError(f"{runs[0].run} and {s.run} were split differently (another folds.csv): each fold's "
                            "labels must come from models that never saw that fold's people; use runs of one "
                            "folds.csv")
    return blend, runs, described


def fold_probs(o: PseudoOptions, runs: list[Source], files: list[Path]) -> dict[int, np.ndarray]:
    """Each fold's probabilities of the eval photos: the mean of that fold's checkpoints of every run."""
    from maskfold.prediction import inference

    import models

    dev = resolve_device(o.device)
    amp = amp_dtype(dev, o.amp)
    print(f"pseudo: predicting on {dev}, {set_threads(o.threads, workers=1)[1]}", file=sys.stderr)
    out: dict[int, np.ndarray] = {}
    for tta in sorted({s.tta for s in runs}):
        chosen = [(k, s.best[k]) for s in runs if s.tta == tta for k in sorted(s.best)]
        nets = [sources.load_model(p, dev, models.create) for _, p in chosen]
        each = inference.predict_all(nets, files, o.batch_size, dev, amp, tta, each=True)
        for (k, _), p in zip(chosen, each):
            out[k] = out.get(k, 0) + p
    counts = {k: sum(k in s.best for s in runs) for k in out}
    return {k: out[k] / counts[k] for k in sorted(out)}


def check_looks_alone(people: Path) -> None:
    """A people.csv grouped with the model's answers (people.py --probs, from every fold's models) would let
    the other folds' models, which trained on fold k's people, choose which photos pool fold k's answers."""
    if read_record(people).get("probs"):
        raise UserError(f"--people {people} was grouped with the model's answers (people.py --probs), which come "
                        "from every fold's models: fold k's pseudo-labels would depend on models that trained on fold "
                        "k's people; group the eval photos by looks alone for pseudo.py (people.py without --probs)")


def min_photos(o: PseudoOptions) -> int:
    """--min-photos, or a whole person's photos."""
    return o.group_size if o.min_photos is None else o.min_photos


def check(o: PseudoOptions) -> None:
    pl.parse_min_conf(o.min_conf)
    if o.group_size < 2 or not 1 <= min_photos(o) <= o.group_size:
        raise UserError(f"--min-photos {min_photos(o)}, --group-size {o.group_size}: need 1 <= --min-photos <= "
                        "--group-size, and --group-size >= 2")
    for flag, given in (("--min-sure", o.min_sure != 0.0), ("--min-photos", o.min_photos is not None)):
        if given and o.people is None:
            raise UserError(f"{flag} chooses among people.py's groups: give --people people.csv")


def table(o: PseudoOptions, ids: pd.Series, files: list[Path], groups: np.ndarray, blend: np.ndarray,
          per_fold: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """The rows kept by at least one fold, in folds.csv's format, with each fold's label and sureness."""
    ans, conf, _ = pl.person_answers(blend, groups, o.group_size)
    keep_all = pl.confident(conf, ans, pl.parse_min_conf(o.min_conf)) & (groups >= 0 if o.people is not None else True)
    mask, gender, age = decode(ans)
    base = os.path.abspath(o.out.parent)
    df = pd.DataFrame({
        "path": [os.path.relpath(os.path.abspath(f), base) for f in files],
        "person": [f"eval_group{g}" if g >= 0 else f"eval_{stem_key(i)}" for g, i in zip(groups, ids)],
        "id": "", "gender": np.where(gender == 0, "male", "female"), "age": np.array(pl.AGES)[age],
        "mask_label": mask, "gender_label": gender, "age_label": age, "label": np.where(keep_all, ans, -1),
        "fold": -1,
        "sure": np.round(conf.min(axis=1), 4), "ImageID": ids.to_numpy()})
    for k, (a, c, soft, keep) in per_fold.items():
        df[pl.label_col(k)] = np.where(keep, a, -1)
        df[pl.sure_col(k)] = np.round(c, 4)
        df[pl.soft_cols(k)] = np.round(soft, 4)
    kept = np.any([keep for *_, keep in per_fold.values()], axis=0) | keep_all  # some fold's, or the final model's
    return df.loc[kept, [*COLUMNS, *(c for c in df.columns if c not in COLUMNS)]].reset_index(drop=True)


def accuracy(df: pd.DataFrame, truth: pd.Series, folds: list[int]) -> dict:
    """How many kept labels are right, per fold and per task, against the true classes."""
    out = {}
    for k in folds:
        rows = df[df[pl.label_col(k)] >= 0]
        t = truth.loc[rows["ImageID"]].to_numpy(int)
        got = rows[pl.label_col(k)].to_numpy(int)
        out[k] = {"photos": len(rows), "right": round(float((got == t).mean()), 4) if len(rows) else None,
                  **{t_: round(float((a == b).mean()), 4) if len(rows) else None
                     for t_, a, b in zip(TASKS, decode(got), decode(t))}}
    return out


@command(app, PseudoOptions, check)
def main(o: PseudoOptions):
    """Pseudo-labels of the eval photos, each fold's from that fold's own models."""
    check_outside(o.out, o.images)
    check_new(o.out, overwrite=o.overwrite)
    ids = read_info(o.info)
    files = sources.image_files(o.images, ids.tolist())
    blend, runs, described = read_inputs(o, ids)
    sources.check_kind(o.images, files, described, any_images=False)
    if o.people is not None:
        check_looks_alone(o.people)
        g, s = groups_of(o.people, [stem_key(i) for i in ids], o.group_size, str(o.info))
        groups = pl.qualifying_groups(g, s, o.min_sure, min_photos(o))
    else:
        groups = np.full(len(ids), -1)
    truth = pd.Series(read_truth(o.truth, ids, str(o.info)), index=ids.to_numpy()) if o.truth is not None else None
    per_fold, min_conf = {}, pl.parse_min_conf(o.min_conf)
    for k, p in fold_probs(o, runs, files).items():
        a, c, soft = pl.person_answers(p, groups, o.group_size)
        keep = pl.confident(c, a, min_conf) & ((groups >= 0) if o.people is not None else True)
        per_fold[k] = (a, c.min(axis=1), soft, keep)
    df = table(o, ids, files, groups, blend, per_fold)
    folds = sorted(per_fold)
    counts = {k: int((df[pl.label_col(k)] >= 0).sum()) for k in folds}
    people_kept = {k: int(df.loc[df[pl.label_col(k)] >= 0, "person"].nunique()) for k in folds}
    record = {"kind": pl.KIND, "images": os.path.abspath(o.images), "info": os.path.abspath(o.info),
              "inputs": [{"path": os.path.abspath(f), "sha256": sha256(f)} for f in o.inputs],
              "people": {"path": os.path.abspath(o.people), "sha256": sha256(o.people)} if o.people else None,
              "folds_digest": runs[0].digest, "folds": folds,
              "runs": [{"run": str(s.run.resolve()), "tta": list(s.tta),
                        "checkpoints": {str(k): {"path": str(p.resolve()), "sha256": pl.file_digest(p)}
                                        for k, p in sorted(s.best.items())}} for s in runs],
              "min_conf": min_conf, "min_sure": o.min_sure if o.people else None,
              "min_photos": min_photos(o) if o.people else None, "per_person": o.people is not None,
              "eval_photos": len(ids), "photos_per_fold": counts, "people_per_fold": people_kept}
    summary = {"out": str(o.out), "eval_photos": len(ids), "rows": len(df),
               "share_per_fold": {k: round(counts[k] / len(ids), 4) for k in folds}, "people_per_fold": people_kept}
    if truth is not None:
        right = accuracy(df, truth, folds)
        record["truth"] = summary["right_per_fold"] = right
        for k in folds:
            print(f"fold {k}: {counts[k]} of {len(ids)} photos ({counts[k] / len(ids):.0%}), {people_kept[k]} "
                  f"people; right {right[k]['right']} (mask {right[k]['mask']}, gender {right[k]['gender']}, age "
                  f"{right[k]['age']})", file=sys.stderr)
    else:
        for k in folds:
            print(f"fold {k}: {counts[k]} of {len(ids)} photos ({counts[k] / len(ids):.0%}), {people_kept[k]} people",
                  file=sys.stderr)
    write_probs(df, o.out, record)
    result(summary | {"files": [str(o.out), str(record_path(o.out))]})


if __name__ == "__main__":
    app()
