"""Speed of every step against the habit and the hardware, as ratios measured in one run.

    python bench/run.py --quick            # about 5 minutes on a 2-core CPU
    python bench/run.py --device cuda      # sizes that fill a GPU

Prints one table (stderr) and, last on stdout, one JSON object; also saved to bench/out/bench.json.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli import Device, resolve_device  # noqa: E402
from files import atomic_path  # noqa: E402
from images import load_cache  # noqa: E402

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
PY = sys.executable
GOALS = {"crop_vs_habit": 10, "crop_agreement": 0.95, "train_vs_model_only": 0.9, "loader_vs_peer": 3,
         "predict_vs_model_only": 0.9}


def iou(a, b) -> float:
    """IoU of two x1,y1,x2,y2 boxes (torchvision's)."""
    from torchvision.ops import box_iou

    a, b = (torch.from_numpy(np.asarray([x], dtype=np.float64)) for x in (a, b))
    return float(box_iou(a, b)[0, 0])


def step(name: str, args: list[str], times: dict) -> dict:
    """Run one pipeline script as a user would; its last stdout line is its JSON result."""
    t = time.time()
    r = subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"))
    times[name] = round(time.time() - t, 1)
    if r.returncode not in (0,):
        raise SystemExit(f"{name} failed ({r.returncode}): {r.stderr[-2000:]}")
    print(f"{name}: {times[name]} s", file=sys.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


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

    from detector import Detector
    from facebox import Geometry, crop_box, cut
    from images import read_image

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


def timed_rate(fn, batch: int, steps: int, device: str, blocks: int = 3) -> float:
    """Images per second of `fn` (one batch per call): two warm-up calls, then the median of `blocks`
    timed blocks of `steps` calls (a shared machine's hiccups land in one block, not in the ratio)."""
    fn()
    fn()
    rates = []
    for _ in range(blocks):
        sync(device)
        t = time.time()
        for _ in range(steps):
            fn()
        sync(device)
        rates.append(batch * steps / (time.time() - t))
    return float(np.median(rates))


def model_only_train(model: str, head: str, batch: int, size, device: str, amp: bool, steps: int = 12) -> float:
    import models

    net = models.create(model, head, pretrained=False).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters())
    x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, models.HEADS[head], (batch,), device=device)

    def one_step():
        with models.autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(net(x).float()[:, :models.HEADS[head]], y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return timed_rate(one_step, batch, steps, device)


@torch.inference_mode()
def model_only_infer(model: str, batch: int, size, device: str, amp: bool, steps: int = 10) -> float:
    import models

    net = models.create(model, "multi", pretrained=False).to(device).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=torch.channels_last)

    def one_pass():
        with models.autocast(device, amp):
            net(x)

    return timed_rate(one_pass, batch, steps, device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def loaders(files: list[str], size, batch: int, workers: int, device: str) -> tuple[float, float]:
    """img/s of train.py's data path alone (cache + albumentations + device normalise) and of the
    teams' loader (PIL open per image + torchvision transforms), same workers and batch."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    from datasets import CachedImages, to_input
    from images import load_cache

    def rate(loader, norm, least: int = 3000):
        """img/s over whole epochs until `least` images, after the first batch (worker start-up)."""
        n, t = 0, None
        while n < least:
            for x, _ in loader:
                if t is None:
                    t = time.time()
                    continue
                x = norm(x)
                n += len(x)
        sync(device)
        return n / (time.time() - t)

    ours = CachedImages(load_cache(files, size), np.zeros(len(files), int), "seed")
    mine = rate(DataLoader(ours, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                           persistent_workers=workers > 0),
                lambda x: to_input(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), device))

    class Peer(Dataset):
        tf = T.Compose([T.Resize(list(size)), T.ColorJitter(brightness=(0.2, 3)), T.ColorJitter(contrast=(0.2, 3)),
                        T.ColorJitter(saturation=(0.2, 3)), T.ColorJitter(hue=(-0.3, 0.3)), T.RandomHorizontalFlip(),
                        T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            from PIL import Image
            return self.tf(Image.open(files[i]).convert("RGB")), 0

    peer = rate(DataLoader(Peer(), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                           persistent_workers=workers > 0),
                lambda x: x.to(device))
    return mine, peer


@app.command()
def main(
    quick: Annotated[bool, typer.Option(help="small sizes: about 5 minutes on a 2-core CPU")] = False,
    device: Annotated[Device, typer.Option(help="where to measure")] = Device.auto,
    out: Annotated[Path, typer.Option(help="work folder")] = ROOT / "bench" / "out",
):
    dev = resolve_device(device)
    gpu = dev == "cuda"
    people, model, size, batch, epochs = (60, "mobilenetv3_small_100", (96, 72), 32, 4) if quick else \
        (2700 if gpu else 200, "efficientnet_b2", (256, 192), 256 if gpu else 32, 3)
    amp = gpu
    times: dict[str, float] = {}
    data, work = out / "data", out / "work"
    step("demo", ["demo.py", str(data), "--people", str(people), "--eval-people", str(max(people // 3, 60)),
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
                      str(work / "submission.csv"), "--oof", str(work / "runs" / model), "--overwrite"], times)

    # the habit is slow: every photo of the quick run, about 500 of a full one
    vs = crop_against_habit(data / "train/images", work, dev, None if quick else 500, times)
    files = sorted(f for f in (work / "habit_src").rglob("*") if f.is_file())
    folds = pd.read_csv(work / "folds.csv")
    mine, peer = loaders([str(work / p) for p in folds["path"]], size, batch, min(8, os.cpu_count() or 1), dev)
    train_only = model_only_train(model, "multi", batch, size, dev, amp)
    infer_only = model_only_infer(model, batch, size, dev, amp)
    eval_crops = sorted((work / "crops/eval").glob("*.jpg"))
    t = time.time()
    load_cache(eval_crops, size)
    eval_decode = (time.time() - t) / max(len(eval_crops), 1)
    # Where the time goes: per image, in ms of wall time on this device with every core in use.
    profile = {"crop": crop_profile(files[:128], dev),
               "train": {"model_step_ms": round(1000 / train_only, 3), "loader_ms": round(1000 / mine, 3),
                         "train_py_ms": round(1000 / trained["img_per_s"], 3)},
               "predict": {"decode_resize_ms": round(1000 * eval_decode, 3), "forward_ms": round(1000 / infer_only, 3),
                           "predict_py_ms_per_pass": round(1000 / pred["img_per_s"], 3), "tta": pred["tta"],
                           "images": pred["images"]}}
    result = {
        "device": dev, "quick": quick, "model": model, "img_size": list(size), "batch": batch,
        **vs, "crop_train_img_per_s": crop["img_per_s"],
        "crop_statuses": {k: crop[k] for k in ("face", "person", "prior", "unreadable")},
        "train_img_per_s": trained["img_per_s"], "train_vs_model_only": round(trained["img_per_s"] / train_only, 3),
        # the H200 goal is a 5-fold x 10-epoch run under 10 minutes: projected from this fold's
        # minutes (caching and validation included, so an upper bound), not run
        "projected_5fold_10epoch_minutes": round(trained["minutes"] / epochs * 10 * 5, 1),
        "loader_vs_peer": round(mine / peer, 2), "loader_img_per_s": round(mine, 1), "peer_img_per_s": round(peer, 1),
        "predict_img_per_s": pred["img_per_s"], "predict_vs_model_only": round(pred["img_per_s"] / infer_only, 3),
        "profile": profile, "pipeline_s": times, "date": time.strftime("%Y-%m-%d"),
    }
    for k, goal in GOALS.items():
        print(f"{k:24s} {result[k]:>8}   goal >= {goal}  {'ok' if result[k] >= goal else 'MISSED'}", file=sys.stderr)
    with atomic_path(out / "bench.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    app()
