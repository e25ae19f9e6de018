"""Every CUDA path in one short run, and the figures a GPU server gives; one JSON line at the end.

    bash bench/gpu.sh              # on a machine with a CUDA GPU: at most about 8 minutes
    python bench/gpu.py --reduced  # anywhere: tiny sizes, CPU allowed; says so in its JSON

crop.py on the GPU (and the CPU path on the same photos, for box agreement); train.py with --amp
and channels-last, without and with --compile, against a model-only step of the same model in the
same run, the loader alone, and the projected minutes of 5 folds x 10 epochs at the real data's
size; predict.py with TTA against a model-only pass; torchrun with NCCL finishing one short fold;
and the whole pipeline from demo data to a submission, so a CUDA-only bug anywhere shows. A part
that fails is named in "failed" and the rest still runs (exit code 1).
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer

from common import ROOT, iou, loaders, model_only_infer, model_only_train, step
from maskfold.files import atomic_path

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
GOALS = {"crop_img_per_s": (">=", 1000), "train_vs_model_only": (">=", 0.9),
         "projected_5fold_10epoch_minutes": ("<", 10), "predict_vs_model_only": (">=", 0.9)}
FULL = dict(people=300, eval_people=60, model="efficientnet_b2", size=(256, 192), batch=128, epochs=4, workers=8,
            crop_batch=256, crop_workers=8, small="mobilenetv3_small_100")
REDUCED = dict(people=12, eval_people=3, model="test_resnet", size=(64, 48), batch=16, epochs=1, workers=0,
               crop_batch=32, crop_workers=1, small="test_resnet")
REAL = {"photos": 18_900, "folds": 5, "epochs": 10}


class Parts:
    """Runs each part, keeps its figures, and names the parts that failed without stopping the others."""

    def __init__(self):
        self.out: dict = {}
        self.failed: list[str] = []
        self.times: dict[str, float] = {}

    def run(self, name: str, fn, *args):
        t = time.time()
        try:
            self.out[name] = fn(*args)
        except Exception as e:  # a bench reports every failure and goes on; nothing here is a user's mistake
            self.out[name] = None
            self.failed.append(f"{name}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e) else ''}")
            traceback.print_exc(file=sys.stderr)
        self.times[name] = round(time.time() - t, 1)
        return self.out[name]


def crop_part(data: Path, work: Path, dev: str, s: dict, times: dict) -> dict:
    """crop.py on the device (timed end to end, checked not to fall back to the CPU), then the CPU path on the
    same photos: the share of faces both found whose boxes agree (IoU >= 0.8)."""
    sizes = ["--device", dev, "--batch-size", str(s["crop_batch"]), "--workers", str(s["crop_workers"])]
    gpu = step("crop_train", ["crop.py", str(data / "train/images"), str(work / "crops/train"), "--overwrite", *sizes],
               times)
    step("crop_eval", ["crop.py", str(data / "eval/images"), str(work / "crops/eval"), "--overwrite", *sizes], times)
    if gpu["device"] != dev:
        raise RuntimeError(f"crop.py ran on {gpu['device']}, not {dev}")
    if dev == "cpu":  # the reduced form on a CPU: nothing to compare
        return {"photos": gpu["images"], "crop_img_per_s": gpu["img_per_s"], "device": dev, "cpu_img_per_s": None,
                "agreement_iou_0.8": None, "pairs": 0, "statuses": {k: gpu[k] for k in ("face", "person", "prior")}}
    cpu = step("crop_cpu", ["crop.py", str(data / "train/images"), str(work / "crops_cpu"), "--overwrite", "--device",
                            "cpu", "--preview-size", "0"], times)
    a, b = (pd.read_csv(d / "crop_report.csv").set_index("path") for d in (work / "crops/train", work / "crops_cpu"))
    both = a.index[(a["status"] == "face") & (b.loc[a.index, "status"] == "face")]
    cols = ["face_x1", "face_y1", "face_x2", "face_y2"]
    ious = np.array([iou(a.loc[p, cols].to_numpy(float), b.loc[p, cols].to_numpy(float)) for p in both])
    return {"photos": gpu["images"], "crop_img_per_s": gpu["img_per_s"], "device": gpu["device"],
            "cpu_img_per_s": cpu["img_per_s"], "agreement_iou_0.8": round(float((ious >= 0.8).mean()), 4)
            if len(ious) else None, "pairs": int(len(ious)), "statuses": {k: gpu[k] for k in ("face", "person",
                                                                                                "prior")}}


def train_args(work: Path, s: dict, dev: str, run: str, fold: int, *extra: str) -> list[str]:
    return ["train.py", str(work / "folds.csv"), "--model", s["model"], "--run-name", run, "--fold", str(fold),
            "--out", str(work / "runs"), "--no-pretrained", "--epochs", str(s["epochs"]), "--img-size",
            *map(str, s["size"]), "-b", str(s["batch"]), "-j", str(s["workers"]), "--device", dev, "--head",
            "multi", "--overwrite", *extra]


def train_part(work: Path, dev: str, s: dict, reduced: bool, times: dict) -> dict:
    """Two folds with --amp and channels-last (the pipeline's run), fold 0 again with --compile, a model-only
    step of the same model, the loader alone, and the projection to the real data's size."""
    amp = [] if reduced else ["--amp"]
    folds = [step(f"train_fold{k}", train_args(work, s, dev, "b2", k, *amp), times) for k in (0, 1)]
    compiled = None if reduced else step("train_compile", train_args(work, s, dev, "b2_compile", 0, *amp,
                                                                     "--compile"), times)
    model_only = model_only_train(s["model"], "multi", s["batch"], s["size"], dev, not reduced)
    infer_only = model_only_infer(s["model"], s["batch"] * 2, s["size"], dev, not reduced)
    df = pd.read_csv(work / "folds.csv")
    files = [str(work / p) for p in df["path"]]
    loader, _ = loaders(files[: 4 * s["batch"] * 4], s["size"], s["batch"], s["workers"], dev,
                        least=256 if reduced else 3000)
    rate = float(np.mean([f["img_per_s"] for f in folds]))
    t0 = time.time()
    from maskfold.images import load_cache
    load_cache(files[:512], s["size"])
    cache_per_s = 512 / (time.time() - t0)
    n_train, n_val = REAL["photos"] * (REAL["folds"] - 1) / REAL["folds"], REAL["photos"] / REAL["folds"]
    fold_min = (REAL["photos"] / cache_per_s + REAL["epochs"] * (n_train / rate + n_val / infer_only)) / 60
    return {"model": s["model"], "img_size": list(s["size"]), "batch": s["batch"], "amp": not reduced,
            "train_img_per_s": round(rate, 1), "model_only_img_per_s": round(model_only, 1),
            "train_vs_model_only": round(rate / model_only, 3),
            "compile_img_per_s": compiled["img_per_s"] if compiled else None,
            "compile_vs_model_only": round(compiled["img_per_s"] / model_only, 3) if compiled else None,
            "loader_img_per_s": round(loader, 1), "loader_share": round(rate / loader, 3),
            "gpu_peak_gib": max((f.get("gpu_peak_gib") or 0) for f in folds) or None,
            "projected_5fold_10epoch_minutes": round(REAL["folds"] * fold_min, 1),
            "projection": f"{REAL['folds']} folds x ({REAL['photos']} photos cached at {cache_per_s:.0f}/s + "
                          f"{REAL['epochs']} epochs of {n_train:.0f} train at {rate:.0f}/s and {n_val:.0f} val at "
                          f"{infer_only:.0f}/s)", "infer_only_img_per_s": round(infer_only, 1),
            "f1_fold0": folds[0]["f1"]}


def predict_part(data: Path, work: Path, dev: str, s: dict, times: dict) -> dict:
    pred = step("predict", ["predict.py", str(work / "runs" / "b2"), "--images", str(work / "crops/eval"), "--info",
                            str(data / "eval/info.csv"), "-o", str(work / "probs.csv"), "--overwrite", "--device",
                            dev, "--batch-size", str(s["batch"] * 2)], times)
    only = model_only_infer(s["model"], s["batch"] * 2, s["size"], dev, dev == "cuda")
    return {"img_per_s": pred["img_per_s"], "tta": pred["tta"], "checkpoints": pred["checkpoints"],
            "model_only_img_per_s": round(only, 1), "predict_vs_model_only": round(pred["img_per_s"] / only, 3)}


def torchrun_part(work: Path, dev: str, s: dict, times: dict) -> dict:
    """One short fold under torchrun: NCCL on a GPU (gloo on a CPU), one process, with the class-balanced sampler
    and two epochs averaged (their paths across processes)."""
    args = ["-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port", "29561", *train_args(
        work, dict(s, model=s["small"], size=(96, 72) if dev == "cuda" else s["size"], epochs=2), dev, "torchrun", 2,
        "--sampler", "balanced", "--avg-best", "2")]
    m = step("torchrun", args, times)
    log = (work / "runs" / "torchrun" / "fold2" / "train.log").read_text()
    backend = "nccl" if "nccl" in log else "gloo" if "gloo" in log else None
    if backend != ("nccl" if dev == "cuda" else "gloo"):
        raise RuntimeError(f"torchrun ran with {backend}, not the expected backend")
    if not m.get("avg_best") or len(m["avg_best"]["epochs"]) != 2:
        raise RuntimeError(f"torchrun: --avg-best 2 averaged {m.get('avg_best')}")
    return {"backend": backend, "f1": m["f1"], "minutes": m["minutes"], "avg_best": m["avg_best"]}


def pipeline_part(data: Path, work: Path, times: dict) -> dict:
    """people.py and ensemble.py on the predict part's probabilities: a submission at the end."""
    step("people", ["people.py", str(data / "eval/images"), "-o", str(work / "people.csv"), "--info",
                    str(data / "eval/info.csv"), "--truth", str(data / "eval/people_truth.csv"), "--overwrite"], times)
    ens = step("ensemble", ["ensemble.py", str(work / "probs.csv"), "--info", str(data / "eval/info.csv"), "-o",
                            str(work / "submission.csv"), "--people", str(work / "people.csv"), "--truth",
                            str(data / "eval/truth.csv"), "--overwrite"], times)
    sub = pd.read_csv(work / "submission.csv")
    info = pd.read_csv(data / "eval/info.csv")
    if sub["ImageID"].tolist() != info["ImageID"].tolist() or not sub["ans"].between(0, 17).all():
        raise RuntimeError("the submission does not follow info.csv")
    return {"submission_rows": len(sub), "test_f1": ens.get("test_f1"), "cv_f1": ens.get("cv_f1")}


def goals(out: dict) -> dict:
    found = {"crop_img_per_s": (out.get("crop") or {}).get("crop_img_per_s"),
             "train_vs_model_only": (out.get("train") or {}).get("train_vs_model_only"),
             "projected_5fold_10epoch_minutes": (out.get("train") or {}).get("projected_5fold_10epoch_minutes"),
             "predict_vs_model_only": (out.get("predict") or {}).get("predict_vs_model_only")}
    return {k: {"value": v, "goal": f"{op} {g}", "met": None if v is None else (v >= g if op == ">=" else v < g)}
            for k, (op, g), v in ((k, GOALS[k], found[k]) for k in GOALS)}


@app.command()
def main(
    reduced: Annotated[bool, typer.Option(help="tiny sizes and a CPU allowed: checks the script, measures nothing "
                                               "worth reporting")] = False,
    out: Annotated[Path, typer.Option(help="work folder")] = ROOT / "bench" / "out" / "gpu",
):
    """Prove every CUDA path in one short run; one JSON line."""
    t0 = time.time()
    cuda = torch.cuda.is_available()
    if not cuda and not reduced:
        raise SystemExit("error: no CUDA device here: run on a GPU machine, or pass --reduced to check the script")
    dev, s = ("cuda" if cuda else "cpu"), (REDUCED if reduced else FULL)
    data, work = out / "data", out / "work"
    times: dict[str, float] = {}
    parts = Parts()
    step("demo", ["demo.py", str(data), "--train-people", str(s["people"]), "--eval-people", str(s["eval_people"]),
                  "--overwrite"], times)
    parts.run("crop", crop_part, data, work, dev, s, times)
    parts.run("split", step, "split", ["split.py", str(data / "train/train.csv"), str(work / "crops/train"), "-o",
                                       str(work / "folds.csv"), "--overwrite"], times)
    parts.run("train", train_part, work, dev, s, reduced, times)
    parts.run("predict", predict_part, data, work, dev, s, times)
    parts.run("torchrun", torchrun_part, work, dev, s, times)
    parts.run("pipeline", pipeline_part, data, work, times)
    result = {"device": dev, "gpu": torch.cuda.get_device_name(0) if cuda else None, "reduced": reduced,
              "torch": torch.__version__, **{k: v for k, v in parts.out.items() if k != "split"},
              "goals": goals(parts.out), "failed": parts.failed, "steps_s": times,
              "minutes": round((time.time() - t0) / 60, 2), "date": time.strftime("%Y-%m-%d")}
    with atomic_path(out / "gpu.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    if parts.failed:
        raise SystemExit(1)


if __name__ == "__main__":
    app()
