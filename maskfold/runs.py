"""Run folders: where a run's folds live, whether they are finished, and whether they agree.

    runs/<run>/config.json            the options every fold of the run shares
    runs/<run>/fold<k>/config.json    everything fold k ran with (written when it starts)
    runs/<run>/fold<k>/metrics.json   written last: the fold is finished

A run's folds must have been trained alike: predict.py blends them and ensemble.py scores
their out-of-fold files as one model. Mixed folds are refused with their fold numbers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from maskfold.cli import UserError
from maskfold.training.options import COMPARED_FACTS, FINAL_OWN, RUN_DEFAULTS, RUN_KEYS


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


def run_task(run_dir: Path) -> str | None:
    """The one task a run's models learn (train.py --task), or None for all 18 classes (a run from before
    --task learnt all); its folds agree on it (check_folds_agree)."""
    tasks = sorted({c.get("task", "all") for c in fold_configs(run_dir).values()}) or ["all"]
    return None if tasks[0] == "all" else tasks[0]


def task_words(task: str | None) -> str:
    """'an age-only run (train.py --task age)': what a task's run is, for the lines that refuse one."""
    return f"a{'n' if task in ('age',) else ''} {task}-only run (train.py --task {task})"


def own_fold(path: str | None, fold) -> str | None:
    """--init-from as a run's folds share it: a checkpoint in the fold's own folder of another run
    (runs/A/fold3/best.pt for fold 3) is runs/A/fold{k}/best.pt, each fold starting from its own."""
    if path is None or fold is None:
        return path
    p = Path(path)
    own = "fold_all" if str(fold) == "all" else f"fold{fold}"
    return str(p.parent.parent / "fold{k}" / p.name) if p.parent.name == own else path


def setting(c: dict, key: str):
    """A fold's setting `key` as its run's folds must share it (one it lacks, from before it existed, is its
    default; --init-from per fold)."""
    value = c.get(key, RUN_DEFAULTS.get(key))
    return own_fold(value, c.get("fold")) if key == "init_from" else value


def differences(a: dict, b: dict) -> list[str]:
    """The learning options and recorded facts in which two folds' configs differ."""
    return [k for k in RUN_KEYS if setting(a, k) != setting(b, k)] + \
        [k for k in COMPARED_FACTS if k in a and k in b and a[k] != b[k]]


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


def with_own(config: dict, reference: dict) -> dict:
    """A fold's config with `reference`'s own settings of a final model (the epochs, and what chooses an epoch by
    validation): what a final model and its run's K folds must share."""
    return {**config, **{o: reference.get(o) for o in FINAL_OWN}}


def check_final(run_dir: Path) -> None:
    """The final model (fold_all) is scored by its run's K-fold CV: it must have trained as they did, but for the
    epochs (and what chooses an epoch by validation, which it has none of)."""
    final = read_json(Path(run_dir) / "fold_all" / "config.json")
    configs = {k: with_own(c, final) for k, c in fold_configs(run_dir).items()}
    odd, keys = disagreeing(final, configs)
    if odd:
        raise UserError(f"{Path(run_dir) / 'fold_all'}: the final model trained with other options than fold(s) "
                        f"{', '.join(map(str, odd))} of its run ({explain(keys)}), whose CV would be reported for it; "
                        f"train it again as they did (train.py --config {Path(run_dir) / 'config.json'} ... --fold all "
                        "--overwrite)")


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
        final = Path(run_dir) / "fold_all" / "best.pt"
        raise UserError(f"{run_dir}: no finished fold (fold*/metrics.json with best.pt) in this run folder"
                        + (f"; its final model alone (train.py --fold all) is the checkpoint {final}"
                           if final.is_file() else ""))
    check_folds_agree(run_dir, {k: c for k, c in configs.items() if k in finished})
    totals = {c.get("folds_total") for k, c in configs.items() if k in finished} - {None}
    unfinished = sorted(k for k, d in fold_dirs(run_dir).items() if k not in finished and (d / "last.pt").is_file())
    return RunFolds(run_dir, finished, max(totals) if totals else None, unfinished)
