"""Class probabilities of the eval images from runs or checkpoints, averaged.

    python predict.py runs/efficientnet_b2 --images work/crops/eval --info data/eval/info.csv -o work/probs_b2.csv
    python predict.py runs/resnet50/fold0/best.pt runs/resnet50/fold3/best.pt --images work/crops/eval \
        --info data/eval/info.csv -o work/probs_r50.csv --tta flip,shift

    python predict.py runs/efficientnet_b2 runs/resnet50 runs/convnext_tiny --images work/crops/eval \
        --info data/eval/info.csv --per-run work/probs    # work/probs/<run>.csv, each photo decoded once

A run folder means the best.pt of every finished fold in it (its folds must have been trained
alike; a run with folds still missing is named as partial). Each checkpoint brings its own
model, head, image size and normalisation. Writes ImageID,p0..p17 in info.csv order, and
beside it <out>.json: the runs, folds and checkpoints that made it, for ensemble.py. With
--per-run, one such pair per run folder, the same as predicting each run alone would write.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Optional

from maskfold.cli import UserError, arg, command, make_app, opt, result
from maskfold.device import Device, amp_dtype, resolve_device
from maskfold.files import check_new, check_outside, read_info, record_path
from maskfold.prediction import sources
from maskfold.prediction.sources import check_kind, checkpoints, image_files
from maskfold.probs import frame, write_probs
from maskfold.threads import DECODING_AHEAD, set_threads
from maskfold.threads import option as threads_option
from maskfold.tta import parse as parse_tta
from maskfold.tta import passes as tta_passes

app = make_app()


@dataclass(frozen=True, kw_only=True)
class PredictOptions:
    sources: list[Path] = arg("run folders and/or checkpoint files")
    images: Path = opt(..., "folder of eval images (raw photos or crops)")
    info: Path = opt(..., "info.csv giving ImageID and the row order")
    out: Optional[Path] = opt(None, "probability CSV to write: the average of every checkpoint", "--out", "-o")
    per_run: Optional[Path] = opt(None, "instead of --out: a folder to write one probability CSV per run folder in "
                                  "(<run>.csv, as predicting that run alone writes it), every photo decoded once for "
                                  "all runs, folds and TTA views", metavar="DIR")
    tta: str = opt("flip", "test-time augmentation: views averaged with each image, comma-separated: flip "
                   "(mirrored), shift (6% to each side), scale (zoomed 1.1 and 0.9); none: the image alone")
    no_tta: bool = opt(False, "old spelling of --tta none", "--no-tta", hidden=True)
    batch_size: int = opt(128, "images per forward pass")
    device: Device = opt(Device.auto, "where to predict")
    amp: bool = opt(True, "autocast on CUDA: bf16, or fp16 on GPUs without bf16 (off on a CPU, where it is slower)")
    threads: Optional[int] = threads_option(DECODING_AHEAD)
    any_images: bool = opt(False, "predict even where the images are not of the kind the runs trained on (crops "
                           "against whole photos, or another size)")
    overwrite: bool = opt(False, "replace an existing output file")


def load_model(path: Path, device: str):
    """The checkpoint's own model (models.py's create), on `device`, in eval mode."""
    import models

    return sources.load_model(path, device, models.create)


def check(o: PredictOptions) -> None:
    if (o.out is None) == (o.per_run is None):
        raise UserError("give --out FILE (every checkpoint averaged) or --per-run DIR (one file per run), not both"
                        if o.out is not None else "give --out FILE (every checkpoint averaged) or --per-run DIR "
                        "(one file per run folder)")
    if o.per_run is not None:
        files = [s for s in o.sources if not s.is_dir()]
        if files:
            raise UserError(f"--per-run writes one file per run folder: {files[0]} is not a run folder (give "
                            "run folders, or --out for checkpoint files)")


def outputs(o: PredictOptions) -> list[tuple[Path, list[Path]]]:
    """(the file to write, the sources it averages): --out takes them all; --per-run, one run folder each."""
    if o.per_run is None:
        return [(o.out, list(o.sources))]
    named: dict[str, Path] = {}
    for s in o.sources:
        name = s.resolve().name
        if name in named and named[name].resolve() != s.resolve():
            raise UserError(f"--per-run: {named[name]} and {s} would both write {o.per_run / (name + '.csv')}; "
                            "rename one run folder, or predict them apart with --out")
        named[name] = s
    return [(o.per_run / f"{name}.csv", [s]) for name, s in named.items()]


def check_one_task(out: Path, paths: list[Path], nets: list) -> str | None:
    """The one thing an output's checkpoints answer: all 18 classes, or one task (train.py --task); averaging an
    age-only model into 18-class answers would flatten theirs. Refused with the two checkpoints that differ."""
    from maskfold.labels import TASKS

    tasks = [ck["head"] if ck["head"] in TASKS else None for _, ck in nets]
    for p, t in zip(paths, tasks):
        if t != tasks[0]:
            what = {None: "all 18 classes", **{x: f"the {x} task alone" for x in TASKS}}
            raise UserError(f"{out}: {paths[0]} answers {what[tasks[0]]} but {p} answers {what[t]} (train.py "
                            "--task): predict them into separate files (--per-run DIR, or one --out each) and let "
                            "ensemble.py compose them (--mask-from/--gender-from/--age-from)")
    return tasks[0] if tasks else None


@command(app, PredictOptions, check)
def main(o: PredictOptions):
    """Average the class probabilities of checkpoints over the eval images."""
    from maskfold.prediction.inference import predict_all, warm_up

    t0 = time.time()
    if o.no_tta:
        print("note: --no-tta is now --tta none; the old spelling goes in the next release", file=sys.stderr)
    tta = () if o.no_tta else parse_tta(o.tta)
    targets = outputs(o)
    for out, _ in targets:
        check_outside(out, o.images)
    check_new(*(out for out, _ in targets), overwrite=o.overwrite)
    dev = resolve_device(o.device)
    n_threads, threads = set_threads(o.threads, workers=1)  # one decodes the next chunk while the models run
    ids = read_info(o.info).tolist()
    files = image_files(o.images, ids)
    groups = [(out, *checkpoints(srcs)) for out, srcs in targets]  # (out, checkpoint paths, runs)
    kind = check_kind(o.images, files, [r for _, _, runs in groups for r in runs], o.any_images)
    paths = [p for _, ps, _ in groups for p in ps]
    nets = [load_model(p, dev) for p in paths]
    ends = accumulate(len(ps) for _, ps, _ in groups)
    spans = [slice(end - len(ps), end) for (_, ps, _), end in zip(groups, ends)]  # each output's checkpoints
    tasks = [check_one_task(out, ps, nets[span]) for (out, ps, _), span in zip(groups, spans)]
    amp = amp_dtype(dev, o.amp)
    warm_up(nets, o.batch_size, len(ids), dev, amp)
    print(f"predict: {len(nets)} checkpoint(s) x {len(ids)} images, {threads}", file=sys.stderr)
    t1 = time.time()  # from here on: decoding and inference, the rate the benchmark compares
    each = predict_all(nets, files, o.batch_size, dev, amp, tta, each=True)
    for (_, ck), path in zip(nets, paths):
        print(f"{path}: {ck['model']} head={ck['head']} epoch={ck.get('epoch')}", file=sys.stderr)
    written = []
    for (out, ps, runs), task, mine in zip(groups, tasks, spans):
        probs = each[mine].sum(0) / len(ps)
        probs /= probs.sum(axis=1, keepdims=True)
        record = {"kind": "probabilities", "task": task or "all", "images": len(ids), "info": str(o.info.resolve()),
                  "tta": list(tta),
                  "images_kind": kind, "runs": runs,
                  "checkpoints": [{"path": str(p.resolve()), "model": ck["model"], "head": ck["head"],
                                   "img_size": ck["img_size"], "epoch": ck.get("epoch")}
                                  for p, (_, ck) in zip(ps, nets[mine])]}
        write_probs(frame(probs, ids), out, record)
        written += [str(out), str(record_path(out))]
    passes = len(ids) * len(nets) * tta_passes(tta)
    result({"out": str(o.out or o.per_run), "images": len(ids), "checkpoints": len(nets),
            "runs": [{k: r[k] for k in ("run", "folds", "of", "partial")} for _, _, runs in groups for r in runs],
            "tta": list(tta), "device": dev, "threads": n_threads,
            "img_per_s": round(passes / (time.time() - t1), 1), "seconds": round(time.time() - t0, 1),
            "files": written})


if __name__ == "__main__":
    app()
