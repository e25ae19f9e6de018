"""A sweep's study in Optuna's storage, shared by any number of workers on any number of servers: SQLite (a file,
nothing to start), PostgreSQL or MySQL (a URL), or Optuna's journal file on a shared disk. A worker's trial says
it is alive every few seconds; a trial whose worker stopped saying so (killed, rebooted) is failed by the next
worker that looks and queued again with the same options and run folder, whose finished folds are kept."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from maskfold.cli import UserError

RETRIES = 3  # a trial whose worker died is queued again at most this many times


def open_storage(url: str):
    """Optuna's storage for `url`, or one line saying why it cannot be used."""
    import optuna

    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        if not path.parent.is_dir():
            raise UserError(f"--storage {url}: no folder {path.parent} for the journal file")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    kwargs = {}
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if not db.parent.is_dir():
            raise UserError(f"--storage {url}: no folder {db.parent} for the database")
        kwargs = {"connect_args": {"timeout": 120}}  # workers on one file wait for each other's writes
    elif url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]  # psycopg 3, the driver installed
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # the drivers raise many kinds: refused, unknown host, bad password, no driver
        words = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise UserError(f"--storage {url}: cannot be used ({type(e).__name__}: {words})") from None


def open_study(storage, name: str, facts: dict, pruner, sampler=None):
    """The study `name`, made with `facts` (the space's and the folds' digests) or checked against them."""
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner,
                                sampler=sampler, load_if_exists=True)
    had = study.user_attrs
    for key, value in facts.items():
        if key in had and had[key] != value:
            what = {"space_digest": "another search space", "folds_digest": "another folds.csv (its split)",
                    "folds": "another number of folds"}.get(key, key)
            raise UserError(f"--study {name}: that study was made with {what}; name a new study for this one "
                            "(one study, one space and one split, so its trials compare)")
        if key not in had:
            study.set_user_attr(key, value)
    return study


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """While a trial runs, its `alive` user attribute is renewed every `every` seconds from a thread."""

    def __init__(self, study, trial_id: int, every: float):
        self.study, self.trial_id, self.every = study, trial_id, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True)

    def beat(self):
        while not self.stop.is_set():
            try:
                self.study._storage.set_trial_user_attr(self.trial_id, "alive", time.time())
            except Exception:  # the trial finished meanwhile, or the storage blinked: the next beat tries again
                pass
            self.stop.wait(self.every)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


def requeue(study, trial) -> int | None:
    """Queue a failed trial again with the same options and run folder (its finished folds are kept); the number
    of times it was, or None where it has been tried often enough."""
    import optuna

    tries = int(trial.user_attrs.get("retries", 0)) + 1
    if tries > RETRIES:
        return None
    attrs = {k: v for k, v in trial.user_attrs.items() if k in ("run", "first_trial")}
    attrs.setdefault("first_trial", trial.number)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                              distributions=trial.distributions,
                                              user_attrs={**attrs, "retries": tries, "retry_of": trial.number}))
    return tries


def fail_stale(study, grace: float) -> list[int]:
    """Fail the running trials whose worker has not said it is alive for `grace` seconds, and queue each again."""
    import optuna

    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        alive = t.user_attrs.get("alive", t.datetime_start.timestamp() if t.datetime_start else time.time())
        if time.time() - alive <= grace:
            continue
        try:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker failed it first
            continue
        requeue(study, t)
        failed.append(t.number)
    return failed


def counts(study) -> dict[str, int]:
    """How many trials are done (complete, stopped, or failed for good), running and queued."""
    from optuna.trial import TrialState as S

    out = {"done": 0, "running": 0, "queued": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state in (S.COMPLETE, S.PRUNED) or t.state == S.FAIL and "error" in t.user_attrs:
            out["done"] += 1
        elif t.state == S.RUNNING:
            out["running"] += 1
        elif t.state == S.WAITING:
            out["queued"] += 1
    return out
