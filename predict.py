"""Class probabilities of the eval images from runs or checkpoints, averaged.

    python predict.py runs/efficientnet_b2 --images work/crops/eval --info data/eval/info.csv -o work/probs_b2.csv
    python predict.py runs/resnet50/fold0/best.pt runs/resnet50/fold3/best.pt --images work/crops/eval \
        --info data/eval/info.csv -o work/probs_r50.csv --no-tta

A run folder means every fold's best.pt in it. Each checkpoint brings its own model,
head, image size and normalisation. Writes ImageID,p0..p17 in info.csv order.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer

import models
from cli import Device, UserError, fail, resolve_device
from files import check_outside, read_info, write_csv
from images import find_by_stem, load_cache
from labels import NUM_CLASSES, PROB_COLS

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def checkpoints(sources: list[Path]) -> list[Path]:
    out = []
    for s in sources:
        if s.is_dir():
            found = sorted(s.glob("fold*/best.pt"))
            if not found:
                raise UserError(f"{s}: no fold*/best.pt in this run folder")
            out += found
        elif s.is_file():
            out.append(s)
        else:
            raise UserError(f"{s}: no such run folder or checkpoint")
    return out


def load_model(path: Path, device: str):
    """The checkpoint's own model, after checking it is one of ours; weights_only never runs code."""
    ck = models.read_checkpoint(path)
    net = models.create(ck["model"], ck["head"], pretrained=False)
    models.load_weights(net, ck, path)
    return net.to(device).eval().to(memory_format=torch.channels_last), ck


def image_files(images: Path, ids: list[str]) -> list[Path]:
    """Each ImageID's file in DIR: the same name, else the same stem (crops are .jpg, raw photos vary)."""
    files, missing = [], []
    for i in ids:
        f = images / i
        if not f.is_file():
            f = find_by_stem(images, Path(i).stem) if images.is_dir() else None
        (files if f else missing).append(f or i)
    if missing:
        raise UserError(f"{images}: {len(missing)} image(s) of info.csv missing, first {', '.join(missing[:3])}")
    return files


def predict_all(nets, files: list[Path], batch_size: int, dev: str, amp: bool, tta: bool, chunk: int = 2048):
    """Summed probabilities of every checkpoint. Images are decoded once per image size, a chunk at a
    time, the next chunk in the background while the checkpoints run on this one."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    sizes = sorted({tuple(ck["img_size"]) for _, ck in nets})
    starts = range(0, len(files), chunk)
    probs = np.zeros((len(files), NUM_CLASSES))

    def decode(start):
        return {size: load_cache(files[start:start + chunk], size) for size in sizes}

    with ThreadPoolExecutor(1) as background, tqdm(total=len(files) * len(nets), desc="predict", unit="img",
                                                   file=sys.stderr) as bar:
        pending = background.submit(decode, 0) if files else None
        for start in starts:
            caches = pending.result()
            if start + chunk < len(files):
                pending = background.submit(decode, start + chunk)
            for net, ck in nets:
                cache = caches[tuple(ck["img_size"])]
                probs[start:start + len(cache)] += models.predict_probs(net, ck["head"], cache, ck["mean"], ck["std"],
                                                                        dev, batch_size, amp, tta=tta)
                bar.update(len(cache))
    return probs


@app.command()
def main(
    sources: Annotated[list[Path], typer.Argument(help="run folders and/or checkpoint files")],
    images: Annotated[Path, typer.Option(help="folder of eval images (raw photos or crops)")],
    info: Annotated[Path, typer.Option(help="info.csv giving ImageID and the row order")],
    out: Annotated[Path, typer.Option("--out", "-o", help="probability CSV to write")],
    tta: Annotated[bool, typer.Option(help="average with the horizontally flipped image")] = True,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 128,
    device: Annotated[Device, typer.Option(help="where to predict")] = Device.auto,
    amp: Annotated[bool, typer.Option(help="bf16 autocast on CUDA")] = True,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output file")] = False,
):
    t0 = time.time()
    try:
        check_outside(out, images)
        if out.exists() and not overwrite:
            raise UserError(f"{out} exists (pass --overwrite to replace it)")
        if not images.is_dir():
            raise UserError(f"{images}: no such folder")
        dev = resolve_device(device)
        ids = read_info(info).tolist()
        files = image_files(images, ids)
        paths = checkpoints(sources)
        nets = [load_model(p, dev) for p in paths]
        for net, ck in nets:  # one batch of blanks first: kernel choice and memory pools are start-up costs
            blank = np.zeros((min(batch_size, len(ids)), *ck["img_size"], 3), np.uint8)
            models.predict_probs(net, ck["head"], blank, ck["mean"], ck["std"], dev, batch_size, amp and dev == "cuda")
        t1 = time.time()  # from here on: decoding and inference, the rate the benchmark compares
        probs = predict_all(nets, files, batch_size, dev, amp and dev == "cuda", tta)
    except UserError as e:
        fail(str(e))
    for (_, ck), path in zip(nets, paths):
        print(f"{path}: {ck['model']} head={ck['head']} epoch={ck.get('epoch')}", file=sys.stderr)
    probs /= len(nets)
    probs /= probs.sum(axis=1, keepdims=True)
    df = pd.DataFrame(probs, columns=PROB_COLS)
    df.insert(0, "ImageID", ids)
    write_csv(df, out, float_format="%.6g")
    passes = len(ids) * len(nets) * (2 if tta else 1)
    summary = {"out": str(out), "images": len(ids), "checkpoints": len(nets), "tta": tta, "device": dev,
               "img_per_s": round(passes / (time.time() - t1), 1), "seconds": round(time.time() - t0, 1)}
    print(json.dumps(summary))


if __name__ == "__main__":
    app()
