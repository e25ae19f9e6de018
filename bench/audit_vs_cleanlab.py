"""How well audit.py's person-level rule and cleanlab rank the injected label errors of the demo.

    .venv/bin/pip install cleanlab==2.9.0      # for this comparison only; the toolkit does not need it
    .venv/bin/python bench/audit_vs_cleanlab.py RUN --folds folds.csv --truth data/train/label_noise.csv

Both rank people from the same out-of-fold probabilities: audit.py by its person-level rows (a person's
first row), cleanlab by the lowest mean label quality (self-confidence) of a person's photos, with
`find_label_issues` (prune by noise rate) counting the photos it flags. Prints one JSON line: for each,
recall of the injected people in the top k people (k = 1, 2, 5 times the number injected) and the
precision of the top n (n = the number injected), and per kind of error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskfold.labelling.label_audit import audit  # noqa: E402
from maskfold.labels import PROB_COLS  # noqa: E402

from audit import AuditOptions, held_out  # noqa: E402


def ranks(order: list[str], injected: dict[str, str]) -> dict:
    n = len(injected)
    out = {}
    for mult in (1, 2, 5):
        top = set(order[: n * mult])
        out[f"recall_top{mult}x"] = round(len(top & set(injected)) / n, 3) if n else None
    out["precision_top_n"] = out["recall_top1x"]  # top n rows hold n people: the same count
    for kind in sorted(set(injected.values())):
        k_people = {p for p, k in injected.items() if k == kind}
        top = set(order[: n * 2])
        out[f"{kind}_recall_top2x"] = f"{len(top & k_people)}/{len(k_people)}"
    return out


def main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--folds", type=Path, required=True)
    ap.add_argument("--truth", type=Path, required=True)
    a = ap.parse_args(argv)
    df = held_out(AuditOptions(runs=a.runs, folds=a.folds, out=Path("-")))
    noise = pd.read_csv(a.truth, dtype={"id": str})
    person_of = dict(zip(df["id"], df["person"]))
    injected = {person_of[r.id]: r.kind for r in noise.itertuples() if r.id in person_of}
    ours = audit(df)
    ours_order = list(dict.fromkeys(ours.loc[ours["field"] != "photo", "person"]))
    result = {"people": int(df["person"].nunique()), "injected": len(injected), "audit": ranks(ours_order, injected)}
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        result["cleanlab"] = "not installed (pip install cleanlab==2.9.0)"
    else:
        p = df[PROB_COLS].to_numpy(np.float64)
        p /= p.sum(1, keepdims=True)
        y = df["label"].to_numpy()
        q = pd.Series(get_label_quality_scores(y, p), index=df.index)
        flagged = pd.Series(find_label_issues(y, p), index=df.index)
        per = pd.DataFrame({"person": df["person"], "q": q, "flag": flagged}).groupby("person")
        by_quality = per["q"].mean().sort_values().index.tolist()
        by_flags = per.agg(n=("flag", "sum"), q=("q", "mean")).sort_values(["n", "q"], ascending=[False, True])
        result["cleanlab_quality"] = ranks(by_quality, injected)
        result["cleanlab_flags"] = ranks(by_flags.index.tolist(), injected)
        result["cleanlab_flagged_photos"] = int(flagged.sum())
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
