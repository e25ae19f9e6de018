"""A fold's starting weights: a fresh model, the checkpoint it resumes from, or --init-from's, each checked to
be of this run's model and head; --init-from's, to have not trained on this fold's validation people."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from maskfold.cli import UserError
from maskfold.training.options import TrainConfig


def trained_on(source: Path, ck: dict) -> dict | None:
    """The fold and person-to-fold map a checkpoint was trained with: its own record, or its fold's config.json."""
    if ck.get("trained_on"):
        return ck["trained_on"]
    beside = source.parent / "config.json"
    try:
        c = json.loads(beside.read_text()) if beside.is_file() else {}
    except (OSError, ValueError):
        c = {}
    return {"fold": c["fold"], "folds_digest": c["folds_digest"]} if "fold" in c and "folds_digest" in c else None


def check_init_from(cfg: TrainConfig, ck: dict, digest: str) -> None:
    """--init-from must not bring in weights that trained on this fold's validation people: that would leak them
    into its CV. The final model (--fold all) has no validation people to leak into."""
    if cfg.final:
        return
    seen = trained_on(cfg.init_from, ck)
    if seen is None:
        print(f"note: --init-from {cfg.init_from}: no record of the people it trained on (a checkpoint from "
              f"elsewhere?): make sure none of fold {cfg.fold}'s validation people were among them", file=sys.stderr)
        return
    if seen["folds_digest"] != digest:
        raise UserError(f"--init-from {cfg.init_from}: trained on another person-to-fold map than {cfg.folds_csv}, so "
                        f"perhaps on fold {cfg.fold}'s validation people (a leak into its CV); start fold {cfg.fold} "
                        "from a checkpoint of a run split from this folds.csv")
    if seen["fold"] != cfg.fold:
        raise UserError(f"--init-from {cfg.init_from}: trained with fold {seen['fold']} held out, so on fold "
                        f"{cfg.fold}'s validation people (a leak into its CV); start fold {cfg.fold} from fold "
                        f"{cfg.fold}'s own checkpoint (runs/<run>/fold{cfg.fold}/best.pt)")


def create_model(cfg: TrainConfig, resume_from: Path | None, digest: str, create):
    """The fold's network, made by `create` (models.py's, which the script passes): with the weights of the
    checkpoint it resumes from, or of --init-from (each checked to be of this run's model and head;
    --init-from, to have not trained on this fold's people)."""
    from maskfold.training import checkpoint
    from maskfold.training.trainer import seed_all

    seed_all(cfg.seed)  # the same initial weights in every process and every run of this seed
    net = create(cfg.model, cfg.net_head, cfg.pretrained, cfg.drop_rate, cfg.pretrained_file, cfg.drop_path)
    source = resume_from or cfg.init_from
    if source is None:
        return net, None
    resume = resume_from is not None
    ck = checkpoint.read(source, resume=resume)
    mine = (cfg.model, cfg.net_head, list(cfg.img_size) if resume else None)  # --init-from may change the size
    theirs = (ck["model"], ck["head"], list(ck["img_size"]) if resume else None)
    if mine != theirs:
        fix = "--overwrite restarts the fold" if resume else "start from a checkpoint of this model"
        raise UserError(f"{source}: a checkpoint of {describe(*theirs)}, not of this run's {describe(*mine)}; {fix}")
    if not resume:
        check_init_from(cfg, ck, digest)
    checkpoint.load_weights(net, ck, source)
    return net, ck if resume else None


def describe(model: str, head: str, size: list[int] | None) -> str:
    """'resnet18 (multi head, 256x192)': what a checkpoint is, for the line that refuses it."""
    return f"{model} ({head} head" + (f", {size[0]}x{size[1]}" if size else "") + ")"
