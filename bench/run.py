"""Speed of every step against the habit and the hardware, as ratios measured in one run.

    python bench/run.py --quick            # about 10 minutes on a 2-core CPU
    python bench/run.py --device cuda      # sizes that fill a GPU

Prints one table (stderr) and, last on stdout, one JSON object; also saved to bench/out/bench.json.
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer

from common import ROOT, StepFailed, iou, loaders, model_only_infer, model_only_train, step, sync
from maskfold.device import Device, resolve_device
from maskfold.files import atomic_path
from maskfold.images import load_cache

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
GOALS = {"crop_vs_habit": 10, "crop_agreement": 0.95, "train_vs_model_only": 0.85, "loader_vs_peer": 3,
         "predict_vs_model_only": 0.9, "predict_3runs_vs_model_only": 0.9}


def same_photos(src: Path, dst: Path, limit: int | None) -> list[Path]:
    """A tree of whole persons (links to the photos, at most `limit` photos) for crop.py and the habit."""
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    files: list[Path] = []
    for person in sorted(p for p in src.iterdir() if p.is_dir()):
        photos = sorted(f for f in person.iterdir() if not f.name.startswith("."))
        if limit and files and len(files) + len(photos) > limit:
            break
        (dst / person.name).mkdir(parents=True)
        for f in photos:
            (dst / person.name / f.name).symlink_to(f.resolve())
        files += photos
    return files


def habit_crop(files: list[Path], device: str, out: Path) -> tuple[float, dict, float]:
    """The teams' way: MTCNN defaults, one full-size PIL image per call, then crop and save. Also how
    often the habit agrees with itself when the photo moves by one pixel: the noise floor of agreement."""
    from facenet_pytorch import MTCNN
    from PIL import Image

    mtcnn = MTCNN(device=device, select_largest=True)
    out.mkdir(parents=True, exist_ok=True)
    boxes, t = {}, time.time()
    for f in files:
        im = Image.open(f).convert("RGB")
        b, _ = mtcnn.detect(im)
        if b is not None:
            boxes[f] = np.asarray(b[0], dtype=float)
            im.crop(tuple(int(v) for v in b[0])).save(out / (f.stem + ".jpg"))
    rate = len(files) / (time.time() - t)
    same = []
    for f in boxes:
        im = Image.open(f).convert("RGB")
        moved = Image.new("RGB", im.size)
        moved.paste(im.crop((1, 1, im.width, im.height)), (0, 0))
        b, _ = mtcnn.detect(moved)
        if b is not None:
            same.append(iou(np.asarray(b[0], dtype=float) + 1, boxes[f]) >= 0.8)
    return rate, boxes, float(np.mean(same)) if same else float("nan")


def crop_against_habit(src: Path, work: Path, device: str, limit: int | None, times: dict) -> dict:
    """crop.py and the habit on the same photos, back to back: crop.py, the habit, crop.py again. This
    machine's speed drifts by a third from minute to minute; the ratio takes the mean of the two
    crop.py runs around the habit. Agreement: crop.py's face boxes against the habit's."""
    sub, dst = work / "habit_src", work / "habit_crops"
    files = same_photos(src, sub, limit)
    args = ["crop.py", str(sub), str(dst), "--overwrite", "--device", device, "--preview-size", "0",
            "--batch-size", "256" if device == "cuda" else "32"]
    before = step("crop_same_photos", args, times)["img_per_s"]
    habit_rate, habit_boxes, habit_self = habit_crop(files, device, work / "habit")
    after = step("crop_same_photos_again", args, times)["img_per_s"]
    report = pd.read_csv(dst / "crop_report.csv").set_index("path")
    both = [(report.loc[f"{f.parent.name}/{f.name}"], b) for f, b in habit_boxes.items()]
    both = [(r, b) for r, b in both if r["status"] == "face"]
    ious = np.array([iou(r[["face_x1", "face_y1", "face_x2", "face_y2"]].to_numpy(float), b) for r, b in both])
    rate = (before + after) / 2
    return {"photos": len(files), "crop_img_per_s": round(rate, 1), "crop_runs_img_per_s": [before, after],
            "habit_img_per_s": round(habit_rate, 1), "crop_vs_habit": round(rate / habit_rate, 2),
            "crop_agreement": round(float(np.mean(ious >= 0.8)), 3), "crop_agreement_pairs": len(both),
            "habit_self_agreement": round(habit_self, 3), "crop_iou_median": round(float(np.median(ious)), 3),
            "crop_pairs_iou_below_half": int((ious < 0.5).sum())}


def crop_profile(files: list[Path], device: str) -> dict:
    """Where crop.py's time goes, per photo on one core (detection: crop.py's detector, its threads)."""
    from PIL import Image

    from maskfold.crop.detector import Detector
    from maskfold.crop.facebox import Geometry, crop_box, cut
    from maskfold.images import read_image

    t = time.time()
    images = [read_image(f) for f in files]
    decode = (time.time() - t) / len(files)
    det = Detector(device=device)
    det.detect(images[:32])
    t = time.time()
    for i in range(0, len(images), 32):
        det.detect(images[i:i + 32])
    sync(device)
    detect = (time.time() - t) / len(files)
    t = time.time()
    for im in images:
        box = crop_box(np.array([130.0, 100, 280, 300]), im.shape[:2], Geometry())
        Image.fromarray(cut(im, box)).save(io.BytesIO(), "JPEG", quality=95)
    write = (time.time() - t) / len(files)
    return {"decode_ms": round(1000 * decode, 2), "detect_ms": round(1000 * detect, 2),
            "detect_threads": torch.get_num_threads(), "write_ms": round(1000 * write, 2)}


def people_at_scale(out: Path, eval_people: int, times: dict) -> dict:
    """people.py on a flat folder of `eval_people` x 7 demo photos (1,800 x 7 is the real eval folder)."""
    data = out / "people_data"
    step("demo_people", ["demo.py", str(data), "--train-people", "6", "--eval-people", str(eval_people), "--seed", "7",
                         "--overwrite"], times)
    r = step("people", ["people.py", str(data / "eval/images"), "-o", str(out / "people.csv"), "--info",
                        str(data / "eval/info.csv"), "--truth", str(data / "eval/people_truth.csv"), "--overwrite"],
             times)
    return {k: r[k] for k in ("photos", "photos_per_s", "seconds", "purity", "purity_sure", "share_sure",
                              "peak_rss_mib", "features_mib")}


def report_at_scale(work: Path, run: Path, times: dict, runs: int = 3, folds: int = 5, photos: int = 18_900) -> dict:
    """report.py on `runs` runs x `folds` folds of the real data's size, made from a real run's files: its
    out-of-fold rows drawn again up to `photos` people's photos (links to its crops, 7 to a person)."""
    import shutil

    from maskfold.labels import PROB_COLS

    root, linked = work / "report_scale", work / "scale_photos"
    for d in (root, linked):
        shutil.rmtree(d, ignore_errors=True)
    oof = pd.read_csv(run / "fold0" / "oof.csv")
    rng = np.random.default_rng(0)
    rows = oof.iloc[rng.integers(0, len(oof), photos)].reset_index(drop=True)
    paths = []
    for i, src in enumerate(rows["path"]):
        dst = linked / f"p{i // 7:05d}" / f"{i % 7}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to((work / src).resolve())
        paths.append(str(dst.relative_to(work)))
    rows["path"] = paths
    per_fold = photos // folds
    for r in range(runs):
        p = rows[PROB_COLS].to_numpy()
        rows[PROB_COLS] = np.roll(p, r, axis=0)  # each run its own predictions
        for k in range(folds):
            d = root / f"run{r}" / f"fold{k}"
            shutil.copytree(run / "fold0", d, ignore=shutil.ignore_patterns("*.pt", "tensorboard"))
            rows.iloc[k * per_fold:(k + 1) * per_fold].assign(fold=k).to_csv(d / "oof.csv", index=False)
            (d / "best.pt").write_bytes(b"")
    t = time.time()
    r = step("report_scale", ["report.py", str(root), "-o", str(work / "report_scale.html"), "--overwrite"], times)
    return {"runs": runs, "folds": folds, "oof_rows_per_run": per_fold * folds, "seconds": round(time.time() - t, 1),
            "kib": r["kib"]}


def shared_machine(work: Path, common: list[str], times: dict, epochs: int) -> dict:
    """train.py's images/s alone and beside one and two other training processes (the same command on other
    run names, started first, stopped after), with torch's own thread count (every core, and as many workers:
    the scripts before they chose) and with the scripts' choice (the cores less the loader workers)."""
    import subprocess

    from common import PY
    from maskfold.threads import default_workers, usable_cores

    cores = usable_cores()
    ways = {"all_cores": ["--threads", str(cores), "--workers", str(min(8, cores))],
            "chosen": ["--workers", str(default_workers())]}
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    if "OMP_NUM_THREADS" in env:
        print("note: OMP_NUM_THREADS is set: the scripts' choice takes it", file=sys.stderr)
    table: dict[str, dict[str, float]] = {}
    for way, flags in ways.items():
        for others in (0, 1, 2):
            args = [*common, *flags]
            busy = [subprocess.Popen([PY, "train.py", str(work / "folds.csv"), "--fold", "1", *args, "--epochs", "200",
                                      "--run-name", f"busy{i}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL) for i in range(others)]
            try:
                if busy:
                    time.sleep(8)  # the others past their start-up, into their epochs
                r = step(f"train_{way}_beside_{others}", ["train.py", str(work / "folds.csv"), "--fold", "0", *args,
                                                          "--epochs", str(epochs), "--run-name", f"shared_{way}"],
                         times)
            finally:
                for b in busy:
                    b.kill()
                    b.wait()
            table.setdefault(way, {})[f"beside_{others}"] = r["img_per_s"]
    ratios = {f"beside_{n}": round(table["chosen"][f"beside_{n}"] / table["all_cores"][f"beside_{n}"], 2)
              for n in (0, 1, 2)}
    return {"cores": cores, "img_per_s": table, "chosen_vs_all_cores": ratios}


def predict_three_runs(work: Path, data: Path, model: str, batch: int, dev: str, times: dict) -> dict:
    """predict.py --per-run on three runs (links to one run folder under three names: three models' worth of
    work) against three predict.py calls, one per run, on the same photos."""
    import shutil

    three = work / "three_runs"
    shutil.rmtree(three, ignore_errors=True)
    three.mkdir(parents=True)
    for name in ("a", "b", "c"):
        shutil.copytree(work / "runs" / model, three / name, ignore=shutil.ignore_patterns("tensorboard"))
    base = ["--images", str(work / "crops/eval"), "--info", str(data / "eval/info.csv"), "--overwrite", "--device", dev,
            "--batch-size", str(batch)]
    t = time.time()
    shared = step("predict_per_run_3", ["predict.py", *(str(three / n) for n in "abc"), "--per-run",
                                        str(work / "probs_per_run"), *base], times)
    shared_s = time.time() - t
    t = time.time()
    apart = [step(f"predict_run_{n}", ["predict.py", str(three / n), "-o", str(work / f"probs_{n}.csv"), *base], times)
             for n in "abc"]
    apart_s = time.time() - t
    return {"shared_img_per_s": shared["img_per_s"], "apart_img_per_s": [r["img_per_s"] for r in apart],
            "shared_wall_s": round(shared_s, 1), "apart_wall_s": round(apart_s, 1), "threads": shared["threads"],
            "tta": shared["tta"], "checkpoints": shared["checkpoints"]}


@app.command()
def main(
    quick: Annotated[bool, typer.Option(help="small sizes: about 10 minutes on a 2-core CPU")] = False,
    device: Annotated[Device, typer.Option(help="where to measure")] = Device.auto,
    out: Annotated[Path, typer.Option(help="work folder")] = ROOT / "bench" / "out",
):
    dev = resolve_device(device)
    gpu = dev == "cuda"
    people, model, size, batch, epochs = (60, "mobilenetv3_small_100", (96, 72), 32, 4) if quick else \
        (2700 if gpu else 200, "efficientnet_b2", (256, 192), 256 if gpu else 32, 3)
    times: dict[str, float] = {}
    data, work = out / "data", out / "work"
    step("demo", ["demo.py", str(data), "--train-people", str(people), "--eval-people", str(max(people // 3, 60)),
                  "--overwrite"], times)
    crop = step("crop_train", ["crop.py", str(data / "train/images"), str(work / "crops/train"), "--overwrite",
                               "--device", dev, "--batch-size", "256" if gpu else "32"], times)
    step("crop_eval", ["crop.py", str(data / "eval/images"), str(work / "crops/eval"), "--overwrite", "--device", dev],
         times)
    step("split", ["split.py", str(data / "train/train.csv"), str(work / "crops/train"), "-o", str(work / "folds.csv"),
                   "--overwrite"], times)
    common = ["--model", model, "--no-pretrained", "--epochs", str(epochs), "--img-size", *map(str, size),
              "--batch-size", str(batch), "--out", str(work / "runs"), "--overwrite", "--device", dev,
              "--head", "multi"]
    trained = step("train_fold0", ["train.py", str(work / "folds.csv"), "--fold", "0", *common], times)
    pred = step("predict", ["predict.py", str(work / "runs" / model), "--images", str(work / "crops/eval"), "--info",
                            str(data / "eval/info.csv"), "-o", str(work / "probs.csv"), "--overwrite", "--device", dev,
                            "--batch-size", str(batch)], times)
    step("ensemble", ["ensemble.py", str(work / "probs.csv"), "--info", str(data / "eval/info.csv"), "-o",
                      str(work / "submission.csv"), "--overwrite"], times)
    ema = step("train_fold0_ema", ["train.py", str(work / "folds.csv"), "--fold", "0", *common, "--run-name", "ema",
                                   "--ema", "0.999"], times)
    # where a training step's time goes, phase by phase (a CPU's calls are synchronous: the stopwatch is right)
    phases = None if gpu else step("train_phases", ["bench/train_phases.py", str(work / "folds.csv"), "--fold", "0",
                                                    *common, "--run-name", "phases", "--seed", "7"], times)
    three = predict_three_runs(work, data, model, batch, dev, times)
    shared = shared_machine(work, common, times, epochs) if not gpu else None
    people_scale = people_at_scale(out, 600 if quick else 1800, times)
    report_scale = report_at_scale(work, work / "runs" / model, times)
    result = {"device": dev, "quick": quick, "model": model, "img_size": list(size), "batch": batch,
              **measure(data, work, dev, quick, model, size, batch, epochs, times, crop, trained, pred, ema, three),
              "train_phases": phases, "shared_machine": shared, "people": people_scale, "report": report_scale,
              "pipeline_s": times, "date": time.strftime("%Y-%m-%d")}
    if shared:
        for way, row in shared["img_per_s"].items():
            print(f"train img/s, {way:9s} alone / beside 1 / beside 2 trainings: "
                  + " / ".join(str(row[f"beside_{n}"]) for n in (0, 1, 2)), file=sys.stderr)
    for k, goal in GOALS.items():
        print(f"{k:30s} {result[k]:>8}   goal >= {goal}  {'ok' if result[k] >= goal else 'MISSED'}", file=sys.stderr)
    with atomic_path(out / "bench.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def measure(data: Path, work: Path, dev: str, quick: bool, model: str, size, batch: int, epochs: int, times: dict,
            crop: dict, trained: dict, pred: dict, ema: dict, three: dict) -> dict:
    """The ratios: crop.py against the habit, the loaders, train.py and predict.py against model-only steps of
    the same model in the same run, and where each step's time goes."""
    amp = dev == "cuda"
    # the habit is slow: every photo of the quick run, about 500 of a full one
    vs = crop_against_habit(data / "train/images", work, dev, None if quick else 500, times)
    files = sorted(f for f in (work / "habit_src").rglob("*") if f.is_file())
    folds = pd.read_csv(work / "folds.csv")
    mine, peer = loaders([str(work / p) for p in folds["path"]], size, batch, min(8, os.cpu_count() or 1), dev)
    train_only = model_only_train(model, "multi", batch, size, dev, amp)
    infer_only = model_only_infer(model, batch, size, dev, amp)
    cores = torch.get_num_threads()
    # the same model-only steps with the threads the scripts chose (what is left to the model beside its workers)
    torch.set_num_threads(trained["threads"])
    train_only_same = model_only_train(model, "multi", batch, size, dev, amp)
    torch.set_num_threads(pred_threads := three["threads"])
    infer_only_same = model_only_infer(model, batch, size, dev, amp)
    torch.set_num_threads(cores)
    eval_crops = sorted((work / "crops/eval").glob("*.jpg"))
    t = time.time()
    load_cache(eval_crops, size)
    eval_decode = (time.time() - t) / max(len(eval_crops), 1)
    # Where the time goes: per image, in ms of wall time on this device with every core in use.
    profile = {"crop": crop_profile(files[:128], dev),
               "train": {"model_step_ms": round(1000 / train_only, 3), "loader_ms": round(1000 / mine, 3),
                         "train_py_ms": round(1000 / trained["img_per_s"], 3), "threads": trained["threads"],
                         "model_step_ms_same_threads": round(1000 / train_only_same, 3),
                         "loader_wait_ms": trained["loader_wait_ms"],
                         # what neither the model's step (at the same threads) nor the wait for batches explains
                         "rest_ms": round(1000 / trained["img_per_s"] - 1000 / train_only_same
                                          - (trained["loader_wait_ms"] or 0), 3)},
               "predict": {"decode_resize_ms": round(1000 * eval_decode, 3), "forward_ms": round(1000 / infer_only, 3),
                           "predict_py_ms_per_pass": round(1000 / pred["img_per_s"], 3), "tta": pred["tta"],
                           "images": pred["images"]}}
    return {
        **vs, "crop_train_img_per_s": crop["img_per_s"],
        "crop_statuses": {k: crop[k] for k in ("face", "person", "prior", "unreadable")},
        "train_img_per_s": trained["img_per_s"],
        "train_vs_model_only": round(trained["img_per_s"] / train_only_same, 3),
        "train_vs_model_only_all_cores": round(trained["img_per_s"] / train_only, 3),
        "train_ema_img_per_s": ema["img_per_s"], "train_ema_vs_model_only": round(ema["img_per_s"] / train_only, 3),
        "ema_minutes_vs_plain": round(ema["minutes"] / trained["minutes"], 3),
        # the H200 goal is a 5-fold x 10-epoch run under 10 minutes: projected from this fold's
        # minutes (caching and validation included, so an upper bound), not run
        "projected_5fold_10epoch_minutes": round(trained["minutes"] / epochs * 10 * 5, 1),
        "loader_vs_peer": round(mine / peer, 2), "loader_img_per_s": round(mine, 1), "peer_img_per_s": round(peer, 1),
        "predict_img_per_s": pred["img_per_s"], "predict_vs_model_only": round(pred["img_per_s"] / infer_only_same, 3),
        "predict_vs_model_only_all_cores": round(pred["img_per_s"] / infer_only, 3),
        # per model, three runs sharing one decode (--per-run) against the same forward passes alone
        "predict_3runs_vs_model_only": round(three["shared_img_per_s"] / infer_only_same, 3),
        "predict_3runs_vs_model_only_all_cores": round(three["shared_img_per_s"] / infer_only, 3),
        "predict_3runs": three, "predict_threads": pred_threads,
        "profile": profile,
    }


if __name__ == "__main__":
    try:
        app()
    except StepFailed as e:
        raise SystemExit(f"error: {e}") from None
