"""Whether a fold may train: one process at a time, options that agree with its run's other folds, what to do
with a finished or unfinished fold, and a finished twin to copy instead of training the same again."""
from __future__ import annotations

import json
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import pandas as pd

from maskfold.cli import UserError
from maskfold.files import append_csv, write_json
from maskfold.runs import differences, disagreeing, explain, fold_configs, own_fold, read_json, with_own
from maskfold.training.learning import what_differs
from maskfold.training.options import RUN_RECORD, FoldFacts, TrainConfig
from maskfold.training.results import results_row, write_summaries


def twin_fold(cfg: TrainConfig, facts: FoldFacts) -> Optional[Path]:
    """A finished fold of another run under --out that learnt exactly what this one would: the same options but
    the run's name and the file names, the same labels and targets, the same split, no pseudo-labels added or the
    same ones, out-of-fold paths that resolve alike, and the same learning record (facts.learning: the code, the
    libraries, the bytes of the photos and of every file an option names, the device and precision). A fold from
    before that record was kept is never a twin. Training it again would repeat it."""
    mine = {**cfg.record(), **facts.record()}
    same_place = Path(cfg.folds_csv).resolve().parent

    def extra(c: dict):
        return c.get("extra_digest") if c.get("extra_rows") else None

    if not Path(cfg.out).is_dir() or not facts.learning:
        return None
    for run in sorted(p for p in Path(cfg.out).iterdir() if p.is_dir() and p.name != cfg.run_name):
        d = run / cfg.fold_dir.name
        if not ((d / "metrics.json").is_file() and (d / "best.pt").is_file() and (d / "config.json").is_file()):
            continue
        theirs = read_json(d / "config.json")
        if "labels_digest" not in theirs:
            continue
        keys = [k for k in differences(mine, theirs) if k not in ("folds_csv", "extra", "extra_digest")]
        if keys or extra(mine) != extra(theirs) or theirs.get("labels_digest") != mine["labels_digest"]:
            continue
        if Path(theirs["folds_csv"]).resolve().parent != same_place:
            continue
        if (theirs.get("learning") or {}).get("digest") == facts.learning["digest"]:
            return d
        why = what_differs(facts.learning, theirs.get("learning"))
        print(f"note: {d} has the same options and labels but differs in {why}: {cfg.fold_dir} is trained, not "
              "copied", file=sys.stderr)
    return None


@dataclass
class FoldState:
    """Where this fold stands before training: finished, unfinished (resumable) or new."""
    finished: Optional[dict] = None
    resume_from: Optional[Path] = None


def prepare_fold(cfg: TrainConfig, facts: FoldFacts) -> FoldState:
    """Refuse a fold that would mix options (or another split, or another number of processes: `facts`) into its
    run, and say what to do with an existing fold."""
    mine = {**cfg.record(), **facts.record()}
    configs = fold_configs(cfg.run_dir)
    final = cfg.run_dir / "fold_all" / "config.json"
    if final.is_file():  # the final model is one of the run's: its folds and it agree, whichever came first
        configs["all"] = read_json(final)
    others = {k: c for k, c in configs.items() if k != cfg.fold}
    # the final model trains as the run's folds do but for the epochs their CV chose, with no validation to stop by
    others = {k: with_own(c, mine) if cfg.final or k == "all" else c for k, c in others.items()}
    odd, keys = disagreeing(mine, others)
    if odd:
        raise UserError(f"run {cfg.run_dir} was made with other options ({explain(keys)}) in fold(s) "
                        f"{', '.join('all (its final model)' if k == 'all' else str(k) for k in odd)}; pass "
                        "--run-name NAME for a new run")
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
def fold_lock(run_dir: Path, name: str):
    """Only one process trains a fold at a time. The lock is the kernel's (flock), so a killed process's lock
    goes with it; the holder's pid, left in the file by a process that never released it, is named when the
    next one takes over. `name`: the fold's folder (fold3, fold_all)."""
    import fcntl
    import socket

    made = [d for d in (run_dir, *run_dir.parents) if not d.exists()]  # removed again if nothing is trained
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / f".{name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"{run_dir / name} is being trained now ({holder}): wait for it, or stop it "
                            "first") from None
        left = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if left:
            print(f"note: {run_dir / name} was held by {left}, which ended without releasing it (killed?); "
                  "taken over", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            if made and not (run_dir / name).exists():  # refused before it began: leave no folder
                lock.unlink(missing_ok=True)
                for d in made:
                    if d.is_dir() and not any(d.iterdir()):
                        d.rmdir()
    finally:
        os.close(fd)


def start_fold_dir(cfg: TrainConfig, folds_total: int, facts: FoldFacts) -> None:
    """The fold's folder (emptied with --overwrite), its config.json and the run's."""
    if cfg.overwrite and cfg.fold_dir.exists():
        shutil.rmtree(cfg.fold_dir)
    cfg.fold_dir.mkdir(parents=True, exist_ok=True)
    record = cfg.record()
    if not (cfg.final and (cfg.run_dir / "config.json").is_file()):  # the run's options are its K folds'
        shared = {k: record[k] for k in RUN_RECORD}  # --init-from of the fold's own folder: fold{k}, for --config
        write_json(cfg.run_dir / "config.json", shared | {"init_from": own_fold(record["init_from"], cfg.fold)})
    write_json(cfg.fold_dir / "config.json", {**record, **facts.record(), "folds_total": folds_total})


def copy_twin(cfg: TrainConfig, twin: Path, folds_total: int, facts: FoldFacts) -> dict:
    """The fold as `twin` left it, copied instead of trained again: it learnt from the same labels with the same
    options (a round whose fixes or pseudo-labels changed nothing)."""
    start_fold_dir(cfg, folds_total, replace(facts, copied_from=str(twin.resolve())))
    for f in twin.iterdir():
        if f.name == "config.json":
            continue
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, cfg.fold_dir / f.name)
    metrics = {**json.loads((twin / "metrics.json").read_text()), "run": cfg.run_name}
    append_csv(pd.DataFrame([results_row(cfg, metrics)]), cfg.out / "results.csv")
    write_json(cfg.fold_dir / "metrics.json", metrics)  # written last: the mark of a finished fold
    summary = write_summaries(cfg.out)
    print(f"note: {twin} learnt from the same labels and training targets with the same options (the fixes or "
          f"pseudo-labels of this round change nothing for fold {cfg.fold}): copied to {cfg.fold_dir} instead of "
          "trained again (--overwrite trains it)", file=sys.stderr)
    return metrics | {"copied_from": str(twin), "files": [str(cfg.fold_dir), str(cfg.out / "results.csv"),
                                                          str(summary)]}


def fold_facts(cfg: TrainConfig, df, extra, extra_record: dict | None) -> FoldFacts:
    """The facts of the fold `cfg` asks for, from its folds.csv rows `df` and --extra's rows and record."""
    from maskfold.folds import folds_digest, labels_digest
    from maskfold.images import describe_folder
    from maskfold.labels import train_targets
    from maskfold.training.augment import aug_record

    extra_facts = {"extra_digest": extra_record["sha256"][:16], "extra_rows": len(extra)} if extra is not None else {}
    return FoldFacts(folds_digest=folds_digest(df), processes=int(os.environ.get("WORLD_SIZE", "1")),
                     images=describe_folder(Path(df["file"].iloc[0]).parent.parent, df["file"].tolist()),
                     labels_digest=labels_digest(df, train_targets(df, cfg.old_age)),
                     **aug_record(cfg.aug), **extra_facts)  # an --aug file's pipeline itself: folds must share it
