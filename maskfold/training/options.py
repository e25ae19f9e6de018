"""train.py's options: one frozen dataclass that is the command line, the record of a run, and what
marks the options that change what a model learns (those a run's folds must share)."""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from maskfold.cli import Choice, arg, opt
from maskfold.device import AmpDtype, Device
from maskfold.threads import default_workers
from maskfold.threads import option as threads_option

# Options a --config file does not set: which fold, which run and what to do with it are the command line's.
PER_CALL = ("fold", "run", "resume", "skip_done", "overwrite", "config")
class CutMixMode(Choice):
    """The pasted region: a box, a full-height strip, or a half (the strip and the half keep the mask whole)."""
    box = "box"
    vertical = "vertical"
    half = "half"


class TaskKind(Choice):
    """What a model answers: all 18 classes, or one task alone (its head, its loss, its validation score)."""
    all = "all"
    mask = "mask"
    gender = "gender"
    age = "age"


class SamplerKind(Choice):
    """How an epoch draws its photos: each once, or with replacement by 1 / class count or by its square root."""
    uniform = "uniform"
    balanced = "balanced"
    sqrt = "sqrt"


UNSETTABLE = ("extra", "init_from", "pretrained_file")  # paths that `none` unsets
ALL = "all"  # --fold all: the final model, on every person
# What a final model (--fold all) may do otherwise than its run's K folds: the epochs are its own (CV chose them),
# and what chooses an epoch by validation has none to go by.
FINAL_OWN = ("epochs", "patience", "avg_best")


@dataclass(frozen=True)
class FoldFacts:
    """What a fold's config.json records beside its options: the person-to-fold map it was split with (a digest
    of folds.csv's content, which a rewrite of the same path changes), the processes it trained in (the
    effective batch is --batch-size x processes), its images, the digest of its labels and training targets,
    an --aug file's pipeline, --extra's pseudo-labels, the fold it was copied from, if it was, and what else decides
what it learns (the code, the files' and photos' bytes, the precision: a twin must share it)."""
    folds_digest: str
    processes: int
    images: dict
    labels_digest: str
    aug_digest: Optional[str] = None
    aug_pipeline: Optional[dict] = None
    extra_digest: Optional[str] = None
    extra_rows: Optional[int] = None
    copied_from: Optional[str] = None
    learning: Optional[dict] = None  # learning.learning_record: the code, files, photos and numerics (twins only)

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


# The facts two folds of a run must share (folds written before one was recorded are not compared on it).
COMPARED_FACTS = ("folds_digest", "processes", "aug_digest", "extra_digest", "labels_digest")


def read_config(ctx: typer.Context, param, value: Optional[Path]):
    """--config FILE: a run's config.json or a YAML/JSON of option names (as in config.json) sets the defaults
    of this command line; flags given on it win. Runs eagerly, before the other options are read."""
    if value is None or ctx.resilient_parsing:
        return value
    import json

    from maskfold.cli import fail

    if not value.is_file():
        fail(f"--config {value}: no such file")
    try:
        text = value.read_text()
        data = json.loads(text) if value.suffix.lower() == ".json" else __import__("yaml").safe_load(text)
    except Exception as e:  # JSON and YAML raise their own kinds on a broken file
        fail(f"--config {value}: not JSON or YAML ({type(e).__name__})")
    if not isinstance(data, dict):
        fail(f"--config {value}: not a mapping of option names to values")
    data = {k.replace("-", "_").lstrip("_"): v for k, v in data.items()}
    known = {f.name for f in fields(TrainConfig)}
    recorded = {f.name for f in fields(FoldFacts)} | {"folds_total"}
    unknown = sorted(k for k in data if k not in known and k not in recorded)
    if unknown:
        fail(f"--config {value}: unknown option(s) {', '.join(unknown)}")
    skipped = sorted(k for k in data if k in PER_CALL and data[k] not in (None, False))
    if skipped:
        print(f"note: {value}: {', '.join(skipped)} not taken from the file (give them on the command line)",
              file=__import__("sys").stderr)
    ctx.default_map = {**(ctx.default_map or {}),
                       **{k: v for k, v in data.items() if k in known and k not in PER_CALL}}
    return value


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """train.py's options; `run=True` marks those that change what the model learns."""
    folds_csv: Path = arg("folds.csv from split.py (or the --config file's)")
    model: str = opt(..., "any timm model name, e.g. resnet18, efficientnet_b2_pruned", run=True)
    fold: str = opt("0", "validation fold (the others train); all: the final model, trained on every person for "
                    "--epochs with no validation and no out-of-fold answers (runs/<run>/fold_all; its score is the "
                    "K-fold CV's; predict.py takes it as runs/<run>/fold_all/best.pt)", metavar="K|all")
    run: Optional[str] = opt(None, "run name, the folder under --out (default: the model name); named so that "
                             "torchrun does not take it for its own --run-path", "--run-name")
    out: Path = opt(Path("runs"), "folder of runs")
    pretrained: bool = opt(True, "start from ImageNet weights (downloaded once from the hub, then from its cache)",
                           run=True)
    pretrained_file: Optional[Path] = opt(None, "start from the ImageNet weights in this file (a state dict of "
                                          "--model, .pth or .safetensors): a machine without internet (none: unset "
                                          "a --config file's)", run=True)
    task: TaskKind = opt(TaskKind.all, "what the model learns: all (the 18 classes, through --head) or one task alone "
                         "(mask, gender or age: its own head and loss, its macro F1 validates it); predict.py writes "
                         "its answers for ensemble.py --<task>-from", run=True)
    head: str = opt("single", "single: one 18-way head; multi: mask, gender and age heads", run=True)
    task_weights: str = opt("1,1,1", "multi head: loss weights of mask,gender,age", run=True)
    loss: str = opt("weighted_ce", "ce, weighted_ce (each class weighted by its rarity: fine-tuned it beat ce and "
                    "focal on test F1 by 0.05), focal, label_smoothing or f1", run=True)
    focal_gamma: float = opt(2.0, "focal loss: gamma", run=True)
    ordinal_age: float = opt(0.0, "add this times an ordinal age term to the loss (the squared earth mover's distance "
                             "of the age bands: calling a 29-year-old 60+ costs more than 30-59), on any head that "
                             "answers the age (0: off)", run=True, metavar="W")
    smoothing: float = opt(0.1, "label_smoothing loss: smoothing", run=True)
    optimizer: str = opt("adamw", "any optimizer of timm's factory: sgd (nesterov), adam, adamw, madgrad, adamp, "
                         "lion, lamb, adabelief, nadamw, ... (all: python -c 'import timm.optim as o; "
                         "print(o.list_optimizers())')",
                         "--optimizer", "--opt", run=True)
    opt_kwargs: Optional[str] = opt(None, "the optimizer's other settings, key=value pairs as Python literals: "
                                    "'betas=(0.9,0.99) eps=1e-6'", metavar="'K=V ...'", run=True)
    layer_decay: Optional[float] = opt(None, "layer-wise learning-rate decay (e.g. 0.75 for ViT/BEiT/ConvNeXt "
                                       "fine-tuning): each layer below the head at this times the rate of the one "
                                       "above; off by default", run=True)
    lr: float = opt(3e-3, "peak learning rate (fine-tuned, 3e-3 beat 1e-3 and 3e-4; sweep.py chooses it per "
                    "model)", run=True)
    weight_decay: float = opt(1e-4, "weight decay", run=True)
    scheduler: str = opt("cosine", "none, step, cyclic, cosine or onecycle (each steps every optimizer step)",
                         "--scheduler", "--sched", run=True)
    warmup_epochs: int = opt(0, "linear warm-up epochs", run=True)
    step_size: int = opt(3, "step scheduler: epochs between decays", run=True)
    step_gamma: float = opt(0.5, "step scheduler: decay factor", run=True)
    epochs: int = opt(10, "epochs", run=True)
    freeze_epochs: int = opt(0, "train the head alone for the first N epochs, the backbone's weights frozen "
                             "(fastai's fine_tune; its BatchNorm statistics still follow the new data): a new head "
                             "learns before its gradients reach the pretrained weights (0: off)", run=True,
                             metavar="N")
    sampler: SamplerKind = opt(SamplerKind.uniform, "which photos an epoch trains on: uniform (each once), balanced "
                               "(drawn with replacement, every one of the 18 classes as often) or sqrt (drawn by 1 / "
                               "the square root of the class's count: half way)", run=True)
    epoch_fraction: float = opt(1.0, "an epoch is this share of the training photos (drawn afresh every epoch)",
                                run=True)
    avg_best: int = opt(0, "average the weights of the N best epochs (by val F1) into the fold's checkpoint when "
                        "that validates better than the best epoch alone; recorded in metrics.json (0: off)",
                        run=True, metavar="N")
    batch_size: int = opt(64, "batch size per process", "--batch-size", "-b", run=True)
    accum_steps: int = opt(1, "batches per optimizer step (gradient accumulation: an effective batch of "
                           "batch-size x this)", run=True)
    clip_grad: float = opt(0.0, "clip the gradient norm to this (0: off)", run=True)
    img_size: tuple[int, int] = opt((256, 192), "training size: height width, two numbers (--img-size 256 192)",
                                     run=True, metavar="H W")
    aug: str = opt("light", "augmentation: a preset (none; light; seed: the team baseline's ColorJitter and flip; "
                   "ssr, dropout, noise, colour: the flip and shift-scale-rotate, coarse dropout, noise or colour; "
                   "strong: all four; randaugment: torchvision's RandAugment with Cutout; trivialaugment: "
                   "torchvision's TrivialAugmentWide), or an albumentations pipeline saved as .json or .yaml (A.save)",
                   run=True)
    cutmix: float = opt(0.0, "probability of CutMix per batch", run=True)
    cutmix_mode: CutMixMode = opt(CutMixMode.box, "CutMix region: box, vertical (a full-height strip) or half",
                                  run=True)
    cutmix_alpha: float = opt(1.0, "CutMix: the pasted share is drawn from Beta(a, a)", run=True)
    mixup: float = opt(0.0, "probability of Mixup per batch (with --cutmix: at most 1 together)", run=True)
    mixup_alpha: float = opt(0.4, "Mixup: the share of the first image is drawn from Beta(a, a)", run=True)
    ema: float = opt(0.0, "decay of an EMA of the weights (timm's ModelEmaV3, e.g. 0.999; 0: off): validated "
                     "each epoch, kept as the fold's best when it wins", run=True)
    ema_warmup: bool = opt(True, "--ema: warm the average up (timm's ModelEmaV3 use_warmup: the decay grows from 0 "
                           "towards --ema over the first steps, so a short run's average is not its initial weights)",
                           "--ema-warmup/--no-ema-warmup", run=True)
    old_age: int = opt(60, "train ages >= this as the old band (60: no change)", run=True)
    drop_rate: float = opt(0.0, "dropout before the classifier", run=True)
    drop_path: float = opt(0.0, "stochastic depth: the rate at which the deepest residual block is skipped while "
                           "training (timm's drop_path_rate; models with residual blocks)", run=True)
    seed: int = opt(42, "random seed", run=True)
    patience: int = opt(0, "stop after this many epochs without a better val F1 (0: never); every output of a "
                        "finished fold is still written", run=True)
    extra: Optional[Path] = opt(None, "pseudo-labels of eval photos (pseudo.py): fold k trains on their label_fold<k> "
                                "rows too, labelled by the first round's fold-k models, which never saw fold k's "
                                "people; validation and oof.csv stay folds.csv's photos (none: unset a --config "
                                "file's)", run=True)
    extra_soft: bool = opt(False, "--extra: draw each pseudo-labelled photo's class afresh every epoch from its fold's "
                           "probabilities (the photo's mask, the person's gender and age) instead of the hard label",
                           run=True)
    init_from: Optional[Path] = opt(None, "start from this checkpoint's weights (same model and head; any image "
                                    "size): fine-tuning, or a second round from the same fold's checkpoint, "
                                    "runs/A/fold{k}/best.pt (fold{k}: this fold's folder; one that trained on this "
                                    "fold's validation people is refused); none: unset a --config file's", run=True)
    oof_tta: str = opt("flip", "the test-time augmentation of oof.csv's answers, as predict.py --tta takes it "
                       "(flip, shift, scale, comma-separated; none): the same as the submission's, so that the CV "
                       "scores what is submitted (the best epoch is chosen without it); a run's folds share it",
                       run=True)
    device: Device = opt(Device.auto, "where to train")
    workers: int = opt(default_workers(), "augmentation worker processes (default: half the cores, at most 8)",
                       "--workers", "-j")
    threads: Optional[int] = threads_option("the cores this process may use less --workers; under torchrun, "
                                            "its share of them")
    amp: Optional[bool] = opt(None, "mixed precision (default: on for CUDA, off on a CPU, where it is slower)",
                              "--amp/--no-amp")
    amp_dtype: AmpDtype = opt(AmpDtype.auto, "auto: bf16 where the GPU has it, else fp16 with a gradient scaler; "
                              "bf16 or fp16 force one (on a CPU too)")
    compile: bool = opt(False, "torch.compile the model", "--compile/--no-compile")
    channels_last: bool = opt(True, "channels-last memory format")
    wandb: Optional[str] = opt(None, "log to this Weights & Biases project too (TensorBoard files are written "
                               "either way); WANDB_MODE=offline works without a network")
    resume: bool = opt(False, "continue an unfinished fold from its last.pt")
    skip_done: bool = opt(False, "exit at once if the fold is finished")
    config: Optional[Path] = field(default=None, metadata={"cli": typer.Option(
        help="take the options from this file: a run's config.json, or a YAML or JSON of option names as "
             "config.json writes them; flags on the command line override it; --fold, --run-name, --resume, "
             "--skip-done and --overwrite come from the command line only",
        is_eager=True, callback=read_config), "run": False})
    overwrite: bool = opt(False, "redo this fold, finished or not")

    def __post_init__(self):
        fold = str(self.fold).strip().lower()  # a number, or `all`; check() refuses anything else
        object.__setattr__(self, "fold", int(fold) if fold.lstrip("-").isdigit() else fold)
        for name in UNSETTABLE:  # `--extra none` unsets a path a --config file gave
            value = getattr(self, name)
            if value is not None and str(value).lower() == "none":
                object.__setattr__(self, name, None)
        if self.init_from is not None and "{k}" in str(self.init_from):  # each fold from its own fold's checkpoint
            folder = "fold_all" if self.fold == ALL else f"fold{self.fold}"
            object.__setattr__(self, "init_from", Path(str(self.init_from).replace("fold{k}", folder)
                                                       .replace("{k}", str(self.fold))))

    @property
    def only(self) -> str | None:
        """The one task the model learns (--task), or None for all 18 classes."""
        task = getattr(self.task, "value", self.task)
        return None if task == "all" else task

    @property
    def net_head(self) -> str:
        """The model's head as models.py makes it and checkpoints record it: --head, or the task's name."""
        return self.only or self.head

    @property
    def run_name(self) -> str:
        return self.run or self.model

    @property
    def run_dir(self) -> Path:
        return self.out / self.run_name

    @property
    def fold_dir(self) -> Path:
        return self.run_dir / ("fold_all" if self.final else f"fold{self.fold}")

    @property
    def final(self) -> bool:
        """--fold all: every person trains; no validation, no out-of-fold answers."""
        return self.fold == ALL

    def record(self) -> dict:
        """config.json: every option as it ran, in JSON types."""
        return {k: (str(v) if isinstance(v, Path) else v.value if isinstance(v, Enum) else
                    list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


RUN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("run")) + ("folds_csv",)
# What a run's config.json holds, for `--config runs/<run>/config.json`: every option but the per-call ones.
RUN_RECORD = tuple(f.name for f in fields(TrainConfig) if f.name not in PER_CALL)
# What a learning option was before a config.json recorded it: its default (a run trained before an option
# existed trained as its default says, and stays comparable with folds trained after).
RUN_DEFAULTS = {f.name: list(f.default) if isinstance(f.default, tuple) else
                f.default.value if isinstance(f.default, Enum) else f.default
                for f in fields(TrainConfig) if f.metadata.get("run") and f.default is not MISSING}
