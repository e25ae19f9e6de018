"""CV and test macro F1 of runs under each test-time augmentation, on the demo (whose test truth is known).

    python bench/tta_aug.py RUN... --folds folds.csv --images crops/eval --info eval/info.csv \
        --truth eval/truth.csv --tta none --tta flip --tta flip,shift --tta flip,scale

For each run and each TTA: the out-of-fold CV (every finished fold's validation photos re-predicted by its
best.pt with that TTA) and the test F1 (the eval photos predicted by all its folds' best.pt, averaged, as
predict.py does). Prints a table and one JSON line.
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
from maskfold.labels import task_f1
from maskfold.prediction.inference import predict_probs
from maskfold.runs import run_folds

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(runs: list[Path], folds: Annotated[Path, typer.Option()], images: Annotated[Path, typer.Option()],
         info: Annotated[Path, typer.Option()], truth: Annotated[Path, typer.Option()],
         tta: Annotated[list[str], typer.Option()]):
    import predict

    df = pd.read_csv(folds)
    ids = pd.read_csv(info, dtype={"ImageID": str})["ImageID"]
    t = pd.read_csv(truth, dtype={"ImageID": str}).set_index("ImageID").loc[ids, "ans"].to_numpy()
    rows = []
    for run in runs:
        nets = {k: predict.load_model(best, "cpu") for k, best in sorted(run_folds(run).finished.items())}
        size = tuple(next(iter(nets.values()))[1]["img_size"])
        ev = load_cache([str(images / i) for i in ids], size)
        val = {k: (load_cache([str(folds.parent / p) for p in df.loc[df["fold"] == k, "path"]], size),
                   df.loc[df["fold"] == k, "label"].to_numpy()) for k in nets}
        for spec in tta:
            oof, y, test = [], [], 0
            for k, (net, ck) in nets.items():
                args = (ck["head"],)
                oof.append(predict_probs(net, *args, val[k][0], ck["mean"], ck["std"], "cpu", 128, None, tta=spec))
                y.append(val[k][1])
                test = test + predict_probs(net, *args, ev, ck["mean"], ck["std"], "cpu", 128, None, tta=spec)
            cv = task_f1(np.concatenate(y), np.concatenate(oof).argmax(1))
            te = task_f1(t, test.argmax(1))
            rows.append({"run": run.name, "tta": spec, "cv": round(cv["f1"], 4), "test": round(te["f1"], 4),
                         **{f"test_{k}": round(v, 4) for k, v in te.items() if k != "f1"}})
            print(json.dumps(rows[-1]), flush=True)
    out = pd.DataFrame(rows)
    print(out.to_string(index=False))
    mean = out.groupby("tta")[["cv", "test"]].mean().round(4)
    print(mean.to_string())
    print(json.dumps({"by_tta": mean.reset_index().to_dict("records"), "rows": rows}))


if __name__ == "__main__":
    app()
