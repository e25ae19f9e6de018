"""How far the CV sits from the test F1 when the out-of-fold answers are made without and with the flip TTA
that the submission gets (train.py --oof-tta), on runs whose test truth is known (the demo).

    python bench/oof_tta.py work/runs/mobilenetv3_small_100 --folds work/folds.csv --probs work/probs.csv \
        --truth demo_data/eval/truth.csv

Re-predicts every finished fold's validation photos with its best.pt both ways; the test F1 is that of the
probability CSV (predict.py, flip TTA by default) against the truth.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer

from common import ROOT  # noqa: F401  (puts the project on the path)
from maskfold.images import load_cache
from maskfold.labels import PROB_COLS, task_f1
from maskfold.prediction.inference import predict_probs
from maskfold.runs import run_folds

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(runs: list[Path], folds: Annotated[Path, typer.Option()], probs: Annotated[list[Path], typer.Option()],
         truth: Annotated[Path, typer.Option()]):
    import predict

    df = pd.read_csv(folds)
    rows = []
    for run, probs_csv in zip(runs, probs):
        y, plain, flip = [], [], []
        for k, best in sorted(run_folds(run).finished.items()):
            va = df[df["fold"] == k]
            net, ck = predict.load_model(best, "cpu")
            images = load_cache([str(folds.parent / p) for p in va["path"]], tuple(ck["img_size"]))
            for tta, out in ((False, plain), (True, flip)):
                out.append(predict_probs(net, ck["head"], images, ck["mean"], ck["std"], "cpu", 64, None, tta=tta))
            y.append(va["label"].to_numpy())
        y = np.concatenate(y)
        ev = pd.read_csv(probs_csv, dtype={"ImageID": str})
        t = pd.read_csv(truth, dtype={"ImageID": str}).set_index("ImageID").loc[ev["ImageID"], "ans"].to_numpy()
        test = task_f1(t, ev[PROB_COLS].to_numpy().argmax(1))["f1"]
        cv_plain = task_f1(y, np.concatenate(plain).argmax(1))["f1"]
        cv_flip = task_f1(y, np.concatenate(flip).argmax(1))["f1"]
        rows.append({"run": str(run), "cv_no_tta": round(cv_plain, 4), "cv_flip_tta": round(cv_flip, 4),
                     "test": round(test, 4), "gap_no_tta": round(test - cv_plain, 4),
                     "gap_flip_tta": round(test - cv_flip, 4)})
    out = pd.DataFrame(rows)
    print(out.to_string(index=False))
    print(json.dumps({"mean_abs_gap_no_tta": round(float(out["gap_no_tta"].abs().mean()), 4),
                      "mean_abs_gap_flip_tta": round(float(out["gap_flip_tta"].abs().mean()), 4), "runs": len(out)}))


if __name__ == "__main__":
    app()
