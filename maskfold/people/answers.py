"""The model's answers of the photos being grouped: the eval photos' from a probability CSV, the --also train
photos' from their runs' out-of-fold files, as marginals (mask, gender, age) per photo."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from maskfold.cli import UserError
from maskfold.images import stem_key


def answers_of(keys: list[str], probs: pd.DataFrame, what: str) -> dict[str, np.ndarray]:
    """The marginals (mask, gender, age) of each photo's probabilities; `probs` indexed by stem_key."""
    from maskfold.labels import PROB_COLS, marginals

    missing = [k for k in keys if k not in probs.index]
    if missing:
        raise UserError(f"{what}: no probabilities for {len(missing)} of the photos, first {missing[0]} (made for "
                        "another folder?)")
    return marginals(probs.loc[keys, PROB_COLS].to_numpy(np.float64))


def eval_answers(path: Path, ids: list[str]) -> dict[str, np.ndarray]:
    from maskfold.probs import read_probs

    df = read_probs(path, "ImageID")
    return answers_of([stem_key(i) for i in ids], df.set_index(df["ImageID"].map(stem_key)), str(path))


def train_answers(runs: list[Path], ids: list[str]) -> dict[str, np.ndarray]:
    """The runs' out-of-fold probabilities of the train photos, averaged, keyed '<person folder>/<stem>'."""
    from maskfold.blending.oof import read_run_oof
    from maskfold.labels import PROB_COLS

    frames = []
    for run in runs:
        if not run.is_dir():
            raise UserError(f"--also-probs {run}: no such run folder")
        df = read_run_oof(run, resolve=False)
        frames.append(df.set_index(df.index.map(lambda p: f"{Path(p).parent.name}/{Path(p).stem}"))[PROB_COLS])
    mean = pd.concat(frames).groupby(level=0).mean()
    return answers_of([stem_key(i) for i in ids], mean, f"--also-probs {', '.join(map(str, runs))}")


def joined(a: dict | None, b: dict | None, na: int, nb: int) -> dict[str, np.ndarray] | None:
    """Answers of two photo lists, one after the other (a list without answers: uniform, so it constrains nothing)."""
    if a is None and b is None:
        return None
    flat = {"mask": 3, "gender": 2, "age": 3}
    a = a or {t: np.full((na, k), 1 / k) for t, k in flat.items()}
    b = b or {t: np.full((nb, k), 1 / k) for t, k in flat.items()}
    return {t: np.concatenate([a[t], b[t]]) for t in flat}
