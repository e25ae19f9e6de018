"""Class probabilities of the eval images from runs or checkpoints, averaged.

    python predict.py runs/efficientnet_b2 --images work/crops/eval --info data/eval/info.csv -o work/probs_b2.csv
    python predict.py runs/resnet50/fold0/best.pt runs/resnet50/fold3/best.pt --images work/crops/eval \
        --info data/eval/info.csv -o work/probs_r50.csv --tta flip,shift

A run folder means the best.pt of every finished fold in it (its folds must have been trained
alike; a run with folds still missing is named as partial). Each checkpoint brings its own
model, head, image size and normalisation. Writes ImageID,p0..p17 in info.csv order, and
beside it <out>.json: the runs, folds and checkpoints that made it, for ensemble.py.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from maskfold.cli import UserError, arg, command, make_app, opt, result
from maskfold.device import Device, amp_dtype, resolve_device
from maskfold.files import check_new, check_outside, read_info
from maskfold.images import describe_folder, is_hidden, kind_differs, match_ids
from maskfold.labels import NUM_CLASSES, PROB_COLS
from maskfold.probs import write_probs
from maskfold.runs import fold_configs, run_folds
from maskfold.tta import parse as parse_tta
from maskfold.tta import passes as tta_passes

app = make_app()


@dataclass(frozen=True, kw_only=True)
class PredictOptions:
    sources: list[Path] = arg("run folders and/or checkpoint files")
    images: Path = opt(..., "folder of eval images (raw photos or crops)")
    info: Path = opt(..., "info.csv giving ImageID and the row order")
    out: Path = opt(..., "probability CSV to write", "--out", "-o")
    tta: str = opt("flip", "test-time augmentation: views averaged with each image, comma-separated: flip "
                   "(mirrored), shift (6% to each side), scale (zoomed 1.1 and 0.9); none: the image alone")
    no_tta: bool = opt(False, "the same as --tta none")
    batch_size: int = opt(128, "images per forward pass")
    device: Device = opt(Device.auto, "where to predict")
    amp: bool = opt(True, "autocast on CUDA: bf16, or fp16 on GPUs without bf16 (off on a CPU, where it is slower)")
    any_images: bool = opt(False, "predict even where the images are not of the kind the runs trained on (crops "
                           "against whole photos, or another size)")
    overwrite: bool = opt(False, "replace an existing output file")


def checkpoints(sources: list[Path]) -> tuple[list[Path], list[dict]]:
    """The checkpoints to average, and a record of the runs they belong to."""
    paths, runs = [], []
    for s in sources:
        if s.is_dir():
            folds = run_folds(s)
            if folds.partial or folds.unfinished:
                missing = sorted(set(range(folds.expected or 0)) - set(folds.finished))
                print(f"warning: {s} is a partial run: folds {', '.join(map(str, sorted(folds.finished)))} of "
                      f"{folds.expected} finished (missing {', '.join(map(str, missing))}"
                      + (f"; unfinished {', '.join(map(str, folds.unfinished))} left out" if folds.unfinished else "")
                      + ")", file=sys.stderr)
            paths += [folds.finished[k] for k in sorted(folds.finished)]
            runs.append(folds.describe())
        elif s.is_file():
            paths.append(s)
            run_dir = s.resolve().parent.parent
            if (run_dir / "config.json").is_file():
                fold = s.resolve().parent.name[4:]
                runs.append({"run": str(run_dir), "folds": [int(fold)] if fold.isdigit() else [], "of": None,
                             "partial": None, "unfinished": []})
        else:
            raise UserError(f"{s}: no such run folder or checkpoint")
    return paths, runs


def load_model(path: Path, device: str):
    """The checkpoint's own model, after checking it is one of ours; weights_only never runs code."""
    import torch

    from maskfold import checkpoint

    import models

    ck = checkpoint.read(path)
    net = models.create(ck["model"], ck["head"], pretrained=False)
    checkpoint.load_weights(net, ck, path)
    return net.to(device).eval().to(memory_format=torch.channels_last), ck


def image_files(images: Path, ids: list[str]) -> list[Path]:
    """Each ImageID's file in DIR: the same name, else the same stem (crops are .jpg, raw photos vary)."""
    if not images.is_dir():
        raise UserError(f"{images}: no such folder")
    found = [p.name for p in images.iterdir() if p.is_file() and not is_hidden(p.name)]
    return [images / f for f in match_ids(images, ids, found, "info.csv")]


def check_kind(images: Path, files: list[Path], runs: list[dict], any_images: bool) -> dict:
    """Refuse eval images of another kind than each run trained on (recorded by train.py; runs from before that
    are not checked): crops from whole photos make a model guess."""
    given = describe_folder(images, files)
    for r in runs:
        trained = [c["images"] for c in fold_configs(Path(r["run"])).values() if c.get("images")]
        why = kind_differs(trained[0], given) if trained else None
        if why and not any_images:
            hint = (f"pass the crop.py output of the eval photos (crop.py {images} CROPS, then --images CROPS)"
                    if trained[0]["crops"] and not given["crops"] else "pass images made the way its train images were")
            raise UserError(f"--images {images}: not the kind of images {r['run']} trained on ({why}); {hint}, "
                            "or --any-images to predict anyway")
        if why:
            print(f"warning: {images}: {why} (--any-images)", file=sys.stderr)
    return given


def predict_all(nets, files: list[Path], batch_size: int, dev: str, amp, tta: tuple, chunk: int = 2048):
    """Summed probabilities of every checkpoint. Images are decoded once per image size, a chunk at a
    time, the next chunk in the background while the checkpoints run on this one."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from maskfold import inference
    from maskfold.images import load_cache, read_ahead

    sizes = sorted({tuple(ck["img_size"]) for _, ck in nets})
    probs = np.zeros((len(files), NUM_CLASSES))

    def decode(start):
        return {size: load_cache(files[start:start + chunk], size) for size in sizes}

    with ThreadPoolExecutor(1) as ahead, tqdm(total=len(files) * len(nets), desc="predict", unit="img",
                                              file=sys.stderr, disable=None, mininterval=1) as bar:
        for start, caches in read_ahead(ahead, range(0, len(files), chunk), decode):
            for net, ck in nets:
                cache = caches[tuple(ck["img_size"])]
                probs[start:start + len(cache)] += inference.predict_probs(
                    net, ck["head"], cache, ck["mean"], ck["std"], dev, batch_size, amp, tta=tta)
                bar.update(len(cache))
    return probs


def warm_up(nets, batch_size: int, n: int, dev: str, amp) -> None:
    """One batch of blanks per model: kernel choice and memory pools are start-up costs, not the rate's."""
    from maskfold import inference

    for net, ck in nets:
        blank = np.zeros((min(batch_size, n), *ck["img_size"], 3), np.uint8)
        inference.predict_probs(net, ck["head"], blank, ck["mean"], ck["std"], dev, batch_size, amp)


@command(app, PredictOptions)
def main(o: PredictOptions):
    """Average the class probabilities of checkpoints over the eval images."""
    t0 = time.time()
    tta = () if o.no_tta else parse_tta(o.tta)
    check_outside(o.out, o.images)
    check_new(o.out, overwrite=o.overwrite)
    dev = resolve_device(o.device)
    ids = read_info(o.info).tolist()
    files = image_files(o.images, ids)
    paths, runs = checkpoints(o.sources)
    kind = check_kind(o.images, files, runs, o.any_images)
    nets = [load_model(p, dev) for p in paths]
    amp = amp_dtype(dev, o.amp)
    warm_up(nets, o.batch_size, len(ids), dev, amp)
    t1 = time.time()  # from here on: decoding and inference, the rate the benchmark compares
    probs = predict_all(nets, files, o.batch_size, dev, amp, tta)
    for (_, ck), path in zip(nets, paths):
        print(f"{path}: {ck['model']} head={ck['head']} epoch={ck.get('epoch')}", file=sys.stderr)
    probs /= len(nets)
    probs /= probs.sum(axis=1, keepdims=True)
    df = pd.DataFrame(probs, columns=PROB_COLS)
    df.insert(0, "ImageID", ids)
    record = {"kind": "probabilities", "images": len(ids), "info": str(o.info.resolve()), "tta": list(tta),
              "images_kind": kind,
              "runs": runs, "checkpoints": [{"path": str(p.resolve()), "model": ck["model"], "head": ck["head"],
                                             "img_size": ck["img_size"], "epoch": ck.get("epoch")}
                                            for p, (_, ck) in zip(paths, nets)]}
    write_probs(df, o.out, record)
    passes = len(ids) * len(nets) * tta_passes(tta)
    result({"out": str(o.out), "images": len(ids), "checkpoints": len(nets),
            "runs": [{k: r[k] for k in ("run", "folds", "of", "partial")} for r in runs], "tta": list(tta),
            "device": dev, "img_per_s": round(passes / (time.time() - t1), 1), "seconds": round(time.time() - t0, 1),
            "files": [str(o.out), f"{o.out}.json"]})


if __name__ == "__main__":
    app()
