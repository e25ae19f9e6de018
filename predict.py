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

from maskfold.cli import arg, command, make_app, opt, result
from maskfold.device import Device, amp_dtype, resolve_device
from maskfold.files import check_new, check_outside, read_info, record_path
from maskfold.prediction import sources
from maskfold.prediction.sources import check_kind, checkpoints, image_files
from maskfold.prediction.tta import parse as parse_tta
from maskfold.prediction.tta import passes as tta_passes
from maskfold.probs import frame, write_probs

app = make_app()


@dataclass(frozen=True, kw_only=True)
class PredictOptions:
    sources: list[Path] = arg("run folders and/or checkpoint files")
    images: Path = opt(..., "folder of eval images (raw photos or crops)")
    info: Path = opt(..., "info.csv giving ImageID and the row order")
    out: Path = opt(..., "probability CSV to write", "--out", "-o")
    tta: str = opt("flip", "test-time augmentation: views averaged with each image, comma-separated: flip "
                   "(mirrored), shift (6% to each side), scale (zoomed 1.1 and 0.9); none: the image alone")
    no_tta: bool = opt(False, "old spelling of --tta none", "--no-tta", hidden=True)
    batch_size: int = opt(128, "images per forward pass")
    device: Device = opt(Device.auto, "where to predict")
    amp: bool = opt(True, "autocast on CUDA: bf16, or fp16 on GPUs without bf16 (off on a CPU, where it is slower)")
    any_images: bool = opt(False, "predict even where the images are not of the kind the runs trained on (crops "
                           "against whole photos, or another size)")
    overwrite: bool = opt(False, "replace an existing output file")


def load_model(path: Path, device: str):
    """The checkpoint's own model (models.py's create), on `device`, in eval mode."""
    import models

    return sources.load_model(path, device, models.create)


@command(app, PredictOptions)
def main(o: PredictOptions):
    """Average the class probabilities of checkpoints over the eval images."""
    from maskfold.prediction.inference import predict_all, warm_up

    t0 = time.time()
    if o.no_tta:
        print("note: --no-tta is now --tta none; the old spelling goes in the next release", file=sys.stderr)
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
    df = frame(probs, ids)
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
            "files": [str(o.out), str(record_path(o.out))]})


if __name__ == "__main__":
    app()
