"""The test macro F1 of probability CSVs against the demo's hidden truth, with no CV: for answers whose run has no
out-of-fold file of the same recipe (predict.py --tta none on a run whose oof.csv was made with the flip, which
ensemble.py rightly refuses to score out of fold).

    python bench/truth_f1.py demo_data/eval/truth.csv work/probs_notta.csv work/probs.csv
"""
from __future__ import annotations

import argparse
import json

import pandas as pd

from common import ROOT  # noqa: F401  (puts the project on the path)
from maskfold.labels import PROB_COLS, task_f1


def main() -> None:
    ap = argparse.ArgumentParser(description="test macro F1 (and each task's) of probability CSVs, one JSON line each")
    ap.add_argument("truth", help="the demo's eval/truth.csv (ImageID,ans)")
    ap.add_argument("probs", nargs="+", help="probability CSVs of predict.py")
    a = ap.parse_args()
    t = pd.read_csv(a.truth).set_index("ImageID")["ans"]
    for path in a.probs:
        p = pd.read_csv(path).set_index("ImageID").loc[t.index, PROB_COLS]
        print(json.dumps({"probs": path, **task_f1(t.to_numpy(), p.to_numpy().argmax(1))}))


if __name__ == "__main__":
    main()
