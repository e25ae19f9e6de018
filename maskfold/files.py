"""Files between the steps: safe writes (temporary name, then rename), locks, and checked CSVs."""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from maskfold.errors import UserError

UMASK = os.umask(0o022)
os.umask(UMASK)  # read once, at import: mkstemp's files are private (0600), outputs should not be


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.exists(tmp):
            os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def record_path(path: Path) -> Path:
    """The record a script writes beside an output (`<file>.json`): what made it."""
    return Path(f"{path}.json")


def read_record(path: Path | None) -> dict:
    """The record beside `path`, or {} where there is none or it cannot be read."""
    if path is None:
        return {}
    try:
        return json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return {}


def json_safe(obj):
    """`obj` with every non-finite float (NaN, infinities, which JSON has not) as null: a record must parse."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(json_safe(obj), indent=1, ensure_ascii=False, allow_nan=False))


def write_csv(df: pd.DataFrame, path: Path, **kw) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kw)


def remove_stale_temps(folder: Path) -> int:
    """Delete the temporary files a killed run left under `folder` (atomic_path's names only)."""
    pattern = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
    stale = [p for p in Path(folder).rglob(".*.tmp") if pattern.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink()
    return len(stale)


@contextmanager
def locked(folder: Path):
    """An exclusive lock on a folder, shared by every process that writes there (on the folder itself,
    so no lock file is left behind and the files inside may be replaced while others wait)."""
    import fcntl

    Path(folder).mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def append_csv(df: pd.DataFrame, path: Path) -> None:
    """Rows appended under a lock, in one write: folds finishing at the same moment in several tmux
    windows never write two headers or interleave rows. Rows with new columns rewrite the file with
    the union of both (old rows get blanks there)."""
    path = Path(path)
    with locked(path.parent):
        old = list(pd.read_csv(path, nrows=0).columns) if path.is_file() and path.stat().st_size else None
        if old is None or old == list(df.columns):
            with open(path, "a") as f:
                f.write(df.to_csv(index=False, header=old is None))
        else:
            merged = pd.concat([pd.read_csv(path), df], ignore_index=True)
            write_csv(merged[old + [c for c in df.columns if c not in old]], path)


def check_outside(out: Path, *inputs: Path) -> None:
    """Refuse an output path inside an input tree: scripts never write into their inputs."""
    out = Path(out).resolve()
    for src in inputs:
        src = Path(src).resolve()
        if src.is_dir() and (out == src or src in out.parents):
            raise UserError(f"output {out} is inside the input folder {src}")


def check_new(*outputs: Path | None, overwrite: bool) -> None:
    """A finished output is kept unless the user asks to replace it; what a killed run left half
    written under its temporary name goes."""
    for p in outputs:
        if p is None:
            continue
        if Path(p).exists() and not overwrite:
            raise UserError(f"{p} exists (pass --overwrite to replace it)")
        if Path(p).parent.is_dir():
            for stale in Path(p).parent.glob(f".{Path(p).name}.*.tmp"):
                stale.unlink(missing_ok=True)


def read_table(path: Path, **kw) -> pd.DataFrame:
    """pd.read_csv, with a broken or missing file reported as one line naming it."""
    try:
        return pd.read_csv(path, **kw)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read CSV ({e})") from None


def read_info(path: Path) -> pd.Series:
    """The ImageIDs of info.csv, in its row order (the order a submission must follow)."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such file")
    ids = read_table(path, dtype=str)
    if "ImageID" not in ids.columns:
        raise UserError(f"{path}: no ImageID column")
    return ids["ImageID"]
