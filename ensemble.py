"""Blend probability CSVs into a submission, and score the same blend out of fold.

    python ensemble.py work/probs_b2.csv work/probs_r50.csv --info data/eval/info.csv -o submission.csv \
        --oof runs/efficientnet_b2 --oof runs/resnet50 --bias --suspects work/suspects.csv
    python ensemble.py a.csv b.csv --info data/eval/info.csv -o sub.csv --mask-from 1 --age-from 2

Inputs may list ImageIDs in any order; the submission follows info.csv. With --oof
runs (in the same order as the CSVs), prints each run's and the blend's CV macro F1.
"""
from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import pandas as pd
import typer

from cli import UserError, fail
from files import read_info, read_probs, read_table, write_csv
from labels import NUM_CLASSES, PROB_COLS, TASKS, joint, macro_f1, marginals, scores

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


class Mean(str, Enum):
    arithmetic = "arithmetic"
    geometric = "geometric"


def blend(probs: list[np.ndarray], weights: np.ndarray, mean: Mean) -> np.ndarray:
    w = weights / weights.sum()
    if mean == Mean.geometric:
        p = np.exp(sum(wi * np.log(np.clip(pi, 1e-12, None)) for wi, pi in zip(w, probs)))
    else:
        p = sum(wi * pi for wi, pi in zip(w, probs))
    return p / p.sum(axis=1, keepdims=True)


def recompose(p: np.ndarray, inputs: list[np.ndarray], sources: dict[str, Optional[int]]) -> np.ndarray:
    """18 classes from per-task marginals, each from the blend or from one chosen input."""
    if not any(sources.values()):
        return p
    m = {t: marginals(inputs[i - 1] if i else p)[t] for t, i in sources.items()}
    return joint(m["mask"], m["gender"], m["age"])


def read_inputs(files: list[Path], ids: pd.Series) -> list[np.ndarray]:
    """Each CSV aligned to info.csv's order, after checking it covers exactly the same ImageIDs."""
    out, want = [], set(ids)
    for f in files:
        df = read_probs(f, "ImageID")
        have = set(df["ImageID"])
        if have != want:
            extra, missing = sorted(have - want), sorted(want - have)
            raise UserError(f"{f}: ImageIDs differ from info.csv ({len(missing)} missing, {len(extra)} extra, "
                            f"e.g. {(missing + extra)[0]})")
        out.append(df.set_index("ImageID").loc[ids, PROB_COLS].to_numpy())
    return out


def read_oof(run: Path) -> pd.DataFrame:
    files = sorted(run.glob("fold*/oof.csv"))
    if not files:
        raise UserError(f"{run}: no fold*/oof.csv (is it a run folder of train.py?)")
    df = pd.concat([read_probs(f, "path") for f in files])
    for col in ("label", "fold"):
        if col not in df.columns:
            raise UserError(f"{run}: oof.csv without a {col} column")
    return df.set_index("path")


def fit_bias(p: np.ndarray, y: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Per-class additive bias on log-probabilities, by coordinate ascent on macro F1 (the teams'
    hand-set age thresholds, fitted instead). Starts at zero, so it never lowers the fitted F1."""
    logp = np.log(np.clip(p, 1e-12, None))
    b = np.zeros(NUM_CLASSES)
    best = macro_f1(y, logp.argmax(1))
    grid = np.linspace(-2, 2, 21)
    for _ in range(rounds):
        for c in range(NUM_CLASSES):
            for v in grid:
                trial = b.copy()
                trial[c] = v
                f = macro_f1(y, (logp + trial).argmax(1))
                if f > best + 1e-9:
                    best, b = f, trial
    return b


def held_out_bias_gain(p: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[float, float]:
    """Macro F1 without and with a bias fitted on the other folds: an honest estimate of the gain."""
    pred_plain, pred_bias = p.argmax(1), np.zeros(len(y), dtype=int)
    logp = np.log(np.clip(p, 1e-12, None))
    for k in np.unique(folds):
        fit = folds != k
        b = fit_bias(p[fit], y[fit]) if fit.any() else np.zeros(NUM_CLASSES)
        pred_bias[~fit] = (logp[~fit] + b).argmax(1)
    return scores(y, pred_plain)["f1"], scores(y, pred_bias)["f1"]


def suspects(oof: pd.DataFrame, p: np.ndarray, n: int) -> pd.DataFrame:
    """People whose out-of-fold probabilities most contradict their labels: candidates for relabelling."""
    y = oof["label"].to_numpy()
    df = pd.DataFrame({"person": [Path(i).parent.name for i in oof.index], "label": y,
                       "p_label": p[np.arange(len(y)), y], "wrong": p.argmax(1) != y})
    agg = df.groupby("person").agg(images=("label", "size"), mean_p_label=("p_label", "mean"),
                                   wrong=("wrong", "sum"))
    return agg.sort_values("mean_p_label").head(n).reset_index()


def cv_report(oofs: list[pd.DataFrame], runs: list[Path], weights: np.ndarray, mean: Mean) -> dict:
    common = oofs[0].index
    for o in oofs[1:]:
        common = common.intersection(o.index)
    if len(common) == 0:
        raise UserError("the --oof runs share no images")
    aligned = [o.loc[common] for o in oofs]
    y, folds = aligned[0]["label"].to_numpy(int), aligned[0]["fold"].to_numpy(int)
    report = {}
    for run, o in zip(runs, aligned):
        report[str(run)] = scores(y, o[PROB_COLS].to_numpy().argmax(1))
    w = weights if len(weights) == len(oofs) else np.ones(len(oofs))
    p = blend([o[PROB_COLS].to_numpy() for o in aligned], w, mean)
    report["blend"] = scores(y, p.argmax(1))
    return {"scores": report, "p": p, "y": y, "folds": folds, "oof": aligned[0]}


@app.command()
def main(
    inputs: Annotated[list[Path], typer.Argument(help="probability CSVs (ImageID,p0..p17)")],
    info: Annotated[Path, typer.Option(help="info.csv: the ImageIDs and their order")],
    out: Annotated[Path, typer.Option("--out", "-o", help="submission CSV to write (ImageID,ans)")],
    weights: Annotated[Optional[str], typer.Option(help="comma-separated weight per input")] = None,
    mean: Annotated[Mean, typer.Option(help="arithmetic or geometric mean of probabilities")] = Mean.arithmetic,
    mask_from: Annotated[Optional[int], typer.Option(help="take the mask answer from input N (1-based)")] = None,
    gender_from: Annotated[Optional[int], typer.Option(help="take the gender answer from input N")] = None,
    age_from: Annotated[Optional[int], typer.Option(help="take the age answer from input N")] = None,
    oof: Annotated[Optional[list[Path]], typer.Option(help="run folder with fold*/oof.csv (repeat; same order)")] = None,
    bias: Annotated[bool, typer.Option(help="fit per-class biases on OOF for macro F1 and apply them")] = False,
    suspects_out: Annotated[Optional[Path], typer.Option("--suspects", help="CSV of people whose labels OOF doubts")] = None,
    truth: Annotated[Optional[Path], typer.Option(help="ImageID,ans with true classes (demo): print test F1")] = None,
    probs_out: Annotated[Optional[Path], typer.Option(help="also write the blended probabilities")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace existing output files")] = False,
):
    oof = oof or []
    try:
        for p in [out, probs_out, suspects_out]:
            if p is not None and p.exists() and not overwrite:
                raise UserError(f"{p} exists (pass --overwrite to replace it)")
        w = np.ones(len(inputs))
        if weights:
            try:
                w = np.array([float(x) for x in weights.split(",")])
            except ValueError:
                raise UserError(f"--weights {weights}: not numbers") from None
            if len(w) != len(inputs) or (w < 0).any() or w.sum() <= 0:
                raise UserError(f"--weights: {len(w)} non-negative weights for {len(inputs)} inputs")
        sources = {"mask": mask_from, "gender": gender_from, "age": age_from}
        for t, i in sources.items():
            if i is not None and not 1 <= i <= len(inputs):
                raise UserError(f"--{t}-from {i}: there are {len(inputs)} inputs")
        if (bias or suspects_out) and not oof:
            raise UserError("--bias and --suspects need --oof runs")
        ids = read_info(info)
        probs = read_inputs(inputs, ids)
        cv = cv_report([read_oof(r) for r in oof], oof, w, mean) if oof else None
        truth_y = read_truth(truth, ids) if truth else None
    except UserError as e:
        fail(str(e))
    p = recompose(blend(probs, w, mean), probs, sources)
    summary = {"out": str(out), "inputs": len(inputs), "images": len(ids)}
    b = np.zeros(NUM_CLASSES)
    if cv:
        for name, s in cv["scores"].items():
            print(f"CV {name}: macro F1 {s['f1']:.4f} acc {s['acc']:.4f} "
                  + " ".join(f"{t} {s[f'f1_{t}']:.4f}" for t in TASKS), file=sys.stderr)
        summary["cv_f1"] = round(cv["scores"]["blend"]["f1"], 5)
        summary["cv"] = {k: round(v["f1"], 5) for k, v in cv["scores"].items()}
        if bias:
            plain, held = held_out_bias_gain(cv["p"], cv["y"], cv["folds"])
            # Applied only where it helped on folds it was not fitted on: an overfitted bias is worse than none.
            b = fit_bias(cv["p"], cv["y"]) if held > plain else b
            summary["bias_cv_gain"], summary["bias_applied"] = round(held - plain, 5), bool(held > plain)
            print(f"bias: held-out CV macro F1 {plain:.4f} -> {held:.4f}; "
                  f"{'applied' if held > plain else 'not applied'}", file=sys.stderr)
        if suspects_out:
            write_csv(suspects(cv["oof"], cv["p"], 50), suspects_out)
    ans = (np.log(np.clip(p, 1e-12, None)) + b).argmax(1)
    if probs_out:
        write_csv(pd.DataFrame(p, columns=PROB_COLS).assign(ImageID=ids.to_numpy())[["ImageID"] + PROB_COLS],
                  probs_out, float_format="%.6g")
    write_csv(pd.DataFrame({"ImageID": ids, "ans": ans}), out)
    if truth_y is not None:
        s = scores(truth_y, ans)
        summary.update(test_f1=round(s["f1"], 5), test_acc=round(s["acc"], 5))
        print(f"test: macro F1 {s['f1']:.4f} acc {s['acc']:.4f}", file=sys.stderr)
    print(json.dumps(summary))


def read_truth(path: Path, ids: pd.Series) -> np.ndarray:
    t = read_table(path, dtype={"ImageID": str})
    if not {"ImageID", "ans"} <= set(t.columns) or set(t["ImageID"]) != set(ids):
        raise UserError(f"{path}: needs ImageID,ans for exactly the ImageIDs of info.csv")
    return t.set_index("ImageID").loc[ids, "ans"].to_numpy(int)


if __name__ == "__main__":
    app()
