"""A sweep's search space, from a small YAML or JSON file:

    models: [tf_efficientnet_lite0, resnet18]      # tried as one more choice
    fixed:                                         # train.py options every trial shares
      epochs: 4
      img_size: [96, 72]
    space:
      lr: [1.0e-4, 1.0e-2, log]                    # a range: low, high and log, linear or int
      loss: [ce, focal, weighted_ce]               # any other list: the values to choose among
      img_size: [[96, 72], [128, 96]]

Only train.py's learning options (those a run's folds share) may be fixed or searched; per-fold and per-call ones
(fold, run name, resume) are the sweep's own.
"""
from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path

from maskfold.cli import UserError
from maskfold.training.options import PER_CALL, RUN_KEYS, TrainConfig

SCALES = ("log", "linear", "int")


@dataclass(frozen=True)
class Param:
    """One searched option: a choice among values, or a range (low, high) on a log or linear scale, or of ints."""
    name: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    scale: str | None = None

    @property
    def is_range(self) -> bool:
        return self.scale is not None


@dataclass(frozen=True)
class Space:
    models: tuple[str, ...]
    fixed: dict = field(default_factory=dict)
    params: tuple[Param, ...] = ()

    def record(self) -> dict:
        return {"models": list(self.models), "fixed": self.fixed,
                "space": {p.name: ([p.low, p.high, p.scale] if p.is_range else list(p.choices)) for p in self.params}}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()[:16]


SWEEP_OWN = ("folds_csv", "model", "out") + PER_CALL  # what the sweep sets for each trial and fold


def option_types(learning: bool = False) -> dict[str, type]:
    """Each option of train.py a space file may set (`learning`: those that change what a model learns, which a
    space may search) and its type (Optional unwrapped)."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in fields(TrainConfig):
        if f.name not in SWEEP_OWN and (f.name in RUN_KEYS or not learning):
            kind = hints[f.name]
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            out[f.name] = args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind
    return out


def read_space(path: Path) -> Space:
    """The space file, checked for its shape and names (each option's values are checked by train.py's rules in
    sweep.py); every mistake is one line naming the file and the entry."""
    where = f"space file {path}"
    if not path.is_file():
        raise UserError(f"{where}: no such file")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else __import__("yaml").safe_load(text)
    except Exception as e:  # YAML and JSON raise their own kinds
        raise UserError(f"{where}: not YAML or JSON ({type(e).__name__})") from None
    if not isinstance(data, dict) or set(data) - {"models", "fixed", "space"}:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{where}: a mapping with models, fixed and space (found {found})")
    models = data.get("models")
    if isinstance(models, str):
        models = [models]
    if not models or not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise UserError(f"{where}: models: a list of timm model names")
    types, learning = option_types(), option_types(learning=True)
    fixed = {}
    for name, value in (data.get("fixed") or {}).items():
        key = known(where, "fixed", name, types, "an option of train.py")
        fixed[key] = plain(value)
    params = []
    for name, value in (data.get("space") or {}).items():
        key = known(where, "space", name, learning, "a learning option of train.py (fix the others)")
        if key in fixed:
            raise UserError(f"{where}: {name} is both fixed and searched")
        params.append(param(where, key, value, types[key]))
    return Space(tuple(models), fixed, tuple(params))


def known(where: str, part: str, name: str, types: dict, what: str) -> str:
    key = str(name).replace("-", "_").lstrip("_")
    if key not in types:
        hint = " (the sweep sets it for each trial and fold; models: its list)" if key in SWEEP_OWN else ""
        raise UserError(f"{where}: {part}: {name} is not {what}{hint}")
    return key


def plain(value):
    """A value as config.json and the command line take it (a list: the two numbers of --img-size)."""
    return list(value) if isinstance(value, tuple) else value


def param(where: str, name: str, value, kind) -> Param:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: space: {name}: give a list of values, or [low, high, log|linear|int]")
    numeric = kind in (int, float)
    if len(value) == 3 and value[2] in SCALES and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in value[:2]):
        if not numeric:
            raise UserError(f"{where}: space: {name}: a range on a fixed choice ({name} takes "
                            f"{getattr(kind, '__name__', kind)}, not numbers): list its values instead")
        low, high, scale = float(value[0]), float(value[1]), value[2]
        if not low < high or scale == "log" and low <= 0 or (scale == "int" or kind is int) and low != int(low):
            raise UserError(f"{where}: space: {name}: [{value[0]}, {value[1]}, {scale}] needs low < high"
                            + (", both above 0 on a log scale" if scale == "log" else "")
                            + (", whole numbers" if kind is int or scale == "int" else ""))
        return Param(name, low=low, high=high, scale="int" if kind is int and scale == "linear" else scale)
    if any(v in SCALES for v in value if isinstance(v, str)) and numeric:
        raise UserError(f"{where}: space: {name}: a range is [low, high, log|linear|int]")
    return Param(name, choices=tuple(choice_key(v) for v in value))


def choice_key(value):
    """Optuna chooses among plain values: a list (--img-size) becomes '96 72'."""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return value


def suggest(trial, space: Space) -> dict:
    """A trial's model and options (a queued trial gets its own again)."""
    values = {"model": trial.suggest_categorical("model", list(space.models))}
    for p in space.params:
        if not p.is_range:
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.scale == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high))
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.scale == "log")
    return values


def config_values(values: dict) -> dict:
    """Options as a TrainConfig takes them (enums, tuples, paths)."""
    types = option_types()
    out = {}
    for name, value in values.items():
        kind = types.get(name)
        if isinstance(value, str) and " " in value and typing.get_origin(kind) is tuple:
            value = tuple(int(v) for v in value.split())
        elif isinstance(value, list):
            value = tuple(value)
        if isinstance(kind, type) and issubclass(kind, Enum):
            try:
                value = kind(value)
            except ValueError:
                raise UserError(f"{name} {value}: choose from {', '.join(str(e.value) for e in kind)}") from None
        elif kind is Path and value is not None:
            value = Path(value)
        out[name] = value
    return out


def flags(values: dict) -> list[str]:
    """train.py's command-line flags for these options (a bool: --x or --no-x; --img-size: two numbers)."""
    out = []
    for name, value in config_values(values).items():
        flag = "--" + ("run-name" if name == "run" else name.replace("_", "-"))
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            out += [flag, *map(str, value)]
        elif value is None:  # off, as the option's default is
            continue
        else:
            out += [flag, str(value.value if isinstance(value, Enum) else value)]
    return out
