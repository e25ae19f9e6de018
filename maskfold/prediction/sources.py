"""What a prediction reads: which checkpoints a run folder means and loading them, the eval images matched to
info.csv, and the refusal of images of another kind than a run trained on (predict.py's and pseudo.py's)."""
from __future__ import annotations

import sys
from pathlib import Path

from maskfold.cli import UserError
from maskfold.images import describe_folder, is_hidden, kind_differs, match_ids
from maskfold.runs import check_final, fold_configs, run_folds


def checkpoints(sources: list[Path]) -> tuple[list[Path], list[dict]]:
    """The checkpoints to average, and a record of the runs they belong to."""
    paths, runs = [], []
    for s in sources:
        if s.is_dir():
            folds = run_folds(s)
            if folds.partial or folds.unfinished:
                missing = sorted(set(range(folds.expected or 0)) - set(folds.finished))
                print(f"warning: {s} is a partial run: {len(folds.finished)} of {folds.expected} folds finished "
                      f"(fold {', '.join(map(str, sorted(folds.finished)))}; missing {', '.join(map(str, missing))}"
                      + (f"; unfinished {', '.join(map(str, folds.unfinished))} left out" if folds.unfinished else "")
                      + ")", file=sys.stderr)
            paths += [folds.finished[k] for k in sorted(folds.finished)]
            runs.append(folds.describe())
        elif s.is_file():
            paths.append(s)
            run_dir = s.resolve().parent.parent
            if (run_dir / "config.json").is_file():
                fold = s.resolve().parent.name[4:]
                final = s.resolve().parent.name == "fold_all"  # train.py --fold all: scored by its run's K folds
                runs.append({"run": str(run_dir), "folds": [int(fold)] if fold.isdigit() else [], "of": None,
                             "partial": None, "unfinished": [], **({"final": True} if final else {})})
                if final:
                    check_final(run_dir)
                    print(f"note: {s} is the final model of {run_dir} (train.py --fold all): ensemble.py scores its "
                          "CV with the run's K folds' out-of-fold answers", file=sys.stderr)
        else:
            raise UserError(f"{s}: no such run folder or checkpoint")
    return paths, runs


def load_model(path: Path, device: str, create):
    """The checkpoint's own model, after checking it is one of ours; weights_only never runs code. `create` is
    models.py's (the script passes it: the package never imports the files a competitor edits)."""
    import torch

    from maskfold.training import checkpoint

    ck = checkpoint.read(path)
    net = create(ck["model"], ck["head"], pretrained=False)
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
