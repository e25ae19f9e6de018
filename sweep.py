"""A team's sweep on Optuna: models x options x folds, one worker per GPU, any number of servers, one study.

    python sweep.py space.yaml work/folds.csv --study lite --trials 12            # SQLite in work/sweep.db
    CUDA_VISIBLE_DEVICES=1 python sweep.py space.yaml work/folds.csv --study lite --trials 12   # a second worker
    python sweep.py space.yaml work/folds.csv --study lite --storage postgresql://user:pw@host/db   # other servers
    python sweep.py space.yaml work/folds.csv --study lite --show                 # the table, now

Each trial is a run folder like any other (<out>/<study>_<trial>/fold<k>), trained fold by fold by train.py itself
(its checks, resume and records), so predict.py, ensemble.py and report.py take it as they take any run. Each
fold's validation F1 goes to the study; the pruner stops a setting that is clearly worse after a fold (its run is
marked stopped in sweep.json). Writes <out>/sweep_<study>.csv (+ .json: the options' importance, the best
trial's command line).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from maskfold.cli import Choice, Interrupted, UserError, arg, command, make_app, opt, result
from maskfold.files import write_json
from maskfold.sweep import space as sp
from maskfold.sweep import study as st
from maskfold.sweep import table

app = make_app()
ROOT = Path(__file__).resolve().parent


class PrunerKind(Choice):
    """What stops a weak setting early: the median of the other trials at the same fold, Wilcoxon's test over
    the folds so far against the best trial's, or nothing."""
    median = "median"
    wilcoxon = "wilcoxon"
    none = "none"


@dataclass(frozen=True, kw_only=True)
class SweepOptions:
    space: Path = arg("the search space: YAML or JSON with models, fixed and space (see docs/method.md)")
    folds_csv: Path = arg("folds.csv from split.py: every trial trains on its folds")
    study: str = opt(..., "the study's name: workers that name the same study and storage share it")
    storage: str = opt("sqlite:///work/sweep.db", "where the study lives: sqlite:///FILE, postgresql://... or "
                       "mysql://... (a server the team's machines reach), or journal:FILE (Optuna's journal on a "
                       "shared disk)")
    trials: int = opt(12, "stop when the study has this many finished trials (done or stopped), all workers "
                      "together")
    out: Path = opt(Path("work/runs"), "folder of runs: each trial is <out>/<study>_<trial>")
    pruner: PrunerKind = opt(PrunerKind.median, "median (after --startup finished trials, a trial whose fold F1 is "
                             "below the others' median at that fold stops), wilcoxon (5 folds or more: a trial whose "
                             "folds so far are significantly below the best trial's stops), or none")
    startup: int = opt(2, "trials that finish before the median pruner stops any")
    heartbeat: float = opt(30.0, "seconds between a running trial's signs of life; a trial silent for 4 of them "
                           "(its worker killed) is failed and queued again")
    seed: Optional[int] = opt(None, "seed of the sampler (Optuna's TPE) in this worker: give each worker its own "
                              "(two workers with one seed propose the same settings)")
    show: bool = opt(False, "print the study's table and exit (trains nothing)")


def check(o: SweepOptions) -> None:
    if o.trials < 1 or o.startup < 0 or o.heartbeat <= 0:
        raise UserError("--trials must be >= 1, --startup >= 0, --heartbeat above 0")


def checked_space(o: SweepOptions) -> sp.Space:
    """The space, each model and value checked by train.py's own rules before anything is written."""
    from maskfold.training.options import TrainConfig

    import train

    space = sp.read_space(o.space)
    where = f"space file {o.space}"
    trials = [{"model": m} for m in space.models]
    for p in space.params:
        trials += [{p.name: v} for v in (p.choices if not p.is_range else (p.low, p.high))]
    for values in trials:
        model = values.pop("model", space.models[0])
        try:
            cfg = TrainConfig(folds_csv=o.folds_csv, model=model, **sp.config_values({**space.fixed, **values}))
            train.check(cfg)
        except (UserError, TypeError, ValueError) as e:
            named = ", ".join(f"{k}: {v}" for k, v in values.items()) or f"model {model}"
            raise UserError(f"{where}: {named}: {e}") from None
    return space


def run_fold(o: SweepOptions, run: str, model: str, values: dict, k: int) -> dict:
    """Train fold k of the trial's run with train.py itself; its metrics, or the line it refused with."""
    cmd = [sys.executable, str(ROOT / "train.py"), str(o.folds_csv), "--model", model, "--run-name", run,
           "--fold", str(k), "--out", str(o.out), "--resume", "--skip-done", *sp.flags(values)]
    last = ""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=dies_with_parent) as p:
        for line in p.stderr:  # train.py's lines, as they come (a tmux window shows the fold training)
            sys.stderr.write(line)
            last = line.strip() or last
        out = p.stdout.read()
    if p.returncode in (130, -2):
        raise KeyboardInterrupt
    if p.returncode != 0:
        raise TrainFailed(last or f"train.py exited {p.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def dies_with_parent() -> None:
    """In the child: die when the worker dies (Linux's parent-death signal), so a killed worker leaves no fold
    training on without it, holding its lock."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the fold's lock and --resume still keep it safe
        pass


class TrainFailed(Exception):
    """train.py refused or failed a fold: the trial fails for good, with its line."""


def run_trial(o: SweepOptions, trial, space: sp.Space, folds: int) -> tuple[str, Optional[float]]:
    """Every fold of the trial's run in turn, each F1 reported; ('done', CV), ('stopped', None)."""
    from maskfold.training.results import summarize

    values = sp.suggest(trial, space)
    model = values.pop("model")
    run = trial.user_attrs["run"]
    t0 = time.time()
    for k in range(folds):
        m = run_fold(o, run, model, {**space.fixed, **values}, k)
        trial.set_user_attr(f"f1_fold{k}", m["f1"])
        trial.report(m["f1"], k)
        if k < folds - 1 and trial.should_prune():
            trial.set_user_attr("seconds", round(time.time() - t0, 1))
            write_json(o.out / run / "sweep.json", {"study": o.study, "trial": trial.number, "state": "stopped",
                                                    "folds_trained": k + 1, "of": folds})
            return "stopped", None
    cv = summarize(o.out / run)["cv_f1"]
    trial.set_user_attr("seconds", round(time.time() - t0, 1))
    write_json(o.out / run / "sweep.json", {"study": o.study, "trial": trial.number, "state": "done", "cv_f1": cv})
    return "done", cv


def next_trial(study, o: SweepOptions):
    """A queued trial (a dead worker's, first), or a new one while the study is short of --trials."""
    st.fail_stale(study, grace=4 * o.heartbeat)
    c = st.counts(study)
    if c["done"] >= o.trials or c["done"] + c["running"] >= o.trials and not c["queued"]:
        return None
    trial = study.ask()
    if "run" not in trial.user_attrs:
        trial.set_user_attr("run", f"{o.study}_{trial.number}")
    trial.set_user_attr("worker", st.worker_name())
    return trial


def work(o: SweepOptions, study, space: sp.Space, folds: int) -> int:
    """Trials until the study has --trials finished; how many this worker finished."""
    from optuna.trial import TrialState

    mine = 0
    while (trial := next_trial(study, o)) is not None:
        print(f"sweep {o.study}: trial {trial.number} ({trial.user_attrs['run']}) on {st.worker_name()}",
              file=sys.stderr)
        try:
            with st.Heartbeat(study, trial._trial_id, o.heartbeat):
                state, cv = run_trial(o, trial, space, folds)
        except KeyboardInterrupt:
            frozen = study._storage.get_trial(trial._trial_id)
            study.tell(trial, state=TrialState.FAIL)
            st.requeue(study, frozen)  # the next worker resumes its run folder where this one stopped
            raise Interrupted(f"sweep {o.study}: stopped in trial {trial.number}; it is queued again, and the same "
                              "command takes it up where it stopped") from None
        except TrainFailed as e:
            trial.set_user_attr("error", str(e)[:300])
            study.tell(trial, state=TrialState.FAIL)
            print(f"sweep {o.study}: trial {trial.number} failed: {e}", file=sys.stderr)
            continue
        study.tell(trial, cv if state == "done" else None, state=None if state == "done" else TrialState.PRUNED)
        mine += 1
    return mine


def write_table(o: SweepOptions, study, space: sp.Space, folds: int) -> dict:
    df = table.rows(study, space, folds)
    path = o.out / f"sweep_{o.study}.csv"
    o.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    record = {"study": o.study, "storage": o.storage, "space": space.record(), "folds": folds,
              "importance": table.importance(study),
              "best_command": table.best_command(study, space, o.folds_csv, o.out, folds)}
    write_json(Path(f"{path}.json"), record)
    print(table.show(df), file=sys.stderr)
    if record["importance"]:
        print("importance for the CV: " + ", ".join(f"{k} {v:.2f}" for k, v in record["importance"].items()),
              file=sys.stderr)
    if record["best_command"]:
        print(f"best trial, to train it again by hand:\n  {record['best_command']}", file=sys.stderr)
    return {"table": str(path), "record": f"{path}.json", **{k: record[k] for k in ("importance", "best_command")}}


WILCOXON_FOLDS = 5  # the signed-rank test of n folds all below the best reaches p = 0.5**n: below 0.1 at n = 4


def pruner(o: SweepOptions):
    import optuna

    if o.pruner == PrunerKind.median:
        return optuna.pruners.MedianPruner(n_startup_trials=o.startup, n_warmup_steps=0)
    if o.pruner == PrunerKind.wilcoxon:
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    return optuna.pruners.NopPruner()


@command(app, SweepOptions, check)
def main(o: SweepOptions):
    """Run trials of a study until it has --trials finished; --show prints its table."""
    import optuna

    from maskfold.folds import folds_digest, read_folds

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    df = read_folds(o.folds_csv, 0)
    folds = int(df["fold"].nunique())
    if o.pruner == PrunerKind.wilcoxon and folds < WILCOXON_FOLDS and not o.show:
        raise UserError(f"--pruner wilcoxon: {o.folds_csv} has {folds} folds, and Wilcoxon's test can stop a trial "
                        f"only after 4 folds below the best trial's (p < 0.1) with one still to go: it needs "
                        f"{WILCOXON_FOLDS} or more folds; use --pruner median")
    space = checked_space(o)
    storage = st.open_storage(o.storage)
    study = st.open_study(storage, o.study, {"space_digest": space.digest(), "folds_digest": folds_digest(df),
                                             "folds": folds, "space": space.record()}, pruner(o),
                          optuna.samplers.TPESampler(seed=o.seed))
    mine = 0 if o.show else work(o, study, space, folds)
    summary = write_table(o, study, space, folds)
    result({"study": o.study, "storage": o.storage, "trials_by_this_worker": mine, **st.counts(study), **summary,
            "files": [summary["table"], summary["record"]]})


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    app()
