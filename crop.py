"""Face crops of a whole image tree: batched MTCNN, person-aware fallbacks, resumable.

    python crop.py data/train/images work/crops/train
    python crop.py data/eval/images work/crops/eval --device cuda --batch-size 256

Mirrors SRC into DST as RGB JPEGs named <stem>.jpg, writes DST/crop_report.csv (one
row per image: status face / person / prior / unreadable), DST/crop_summary.json and
DST/preview.jpg. A folder holding at most --person-photos images is one person's photos
(the train layout): a photo whose face is missing or implausible borrows the median box
of that person's other photos. In a flat folder (eval) it borrows the face of its
look-alike photos; else the run's median face position (the prior). A rerun skips
finished crops.
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from maskfold.cli import Interrupted, UserError, command, fail, make_app, result
from maskfold.crop.cropping import (
    COLUMNS,
    CropOptions,
    Item,
    crop_fallbacks,
    crop_here,
    crop_in_processes,
    crop_path,
    faces_by_folder,
    threads_per_process,
)
from maskfold.device import resolve_device
from maskfold.files import append_csv, read_table, remove_stale_temps, write_csv, write_json
from maskfold.images import is_image_name
from maskfold.signals import stop_if_interrupted

app = make_app()
REPORT, PARTIAL = "crop_report.csv", ".crop_report.partial.csv"
STATUSES = ("face", "person", "prior", "unreadable")


def list_items(src: Path, dst: Path, person_photos: int) -> list[Item]:
    items = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = sorted(f for f in files if is_image_name(f))
        rel_root = Path(root).relative_to(src)
        person = len(names) <= person_photos and rel_root != Path(".")
        for name in names:
            rel = (rel_root / name).as_posix()
            items.append(Item(rel, Path(root) / name, crop_path(dst, rel), rel_root.as_posix() if person else rel))
    seen: dict[Path, str] = {}
    for it in items:
        if it.dst in seen:
            raise UserError(f"{seen[it.dst]} and {it.rel} would both be cropped to {it.dst}")
        seen[it.dst] = it.rel
    if not items:
        raise UserError(f"{src}: no images found")
    return items


def load_done(dst: Path, items: list[Item]) -> pd.DataFrame:
    """Report rows of crops already on disk, from a finished or an interrupted run."""
    frames = [read_table(p) for p in (dst / REPORT, dst / PARTIAL) if p.is_file() and p.stat().st_size]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    rows = pd.concat(frames).drop_duplicates("path", keep="last")
    exists = {it.rel for it in items if it.dst.is_file()}
    return rows[rows["path"].isin(exists) & (rows["status"] != "unreadable")]


def finish_report(dst: Path, done: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    report = pd.concat([done, pd.DataFrame(rows).reindex(columns=COLUMNS)]).drop_duplicates("path", keep="last")
    report = report.sort_values("path").reindex(columns=COLUMNS)
    write_csv(report, dst / REPORT)
    (dst / PARTIAL).unlink(missing_ok=True)
    return report


def run_crops(o: CropOptions, dev: str, todo: list[Item], done: pd.DataFrame) -> list[dict]:
    """Every photo to do: detected, decided and written in batches, then the folder-wide fallbacks."""
    earlier = faces_by_folder(done)
    processes = dev == "cpu" and o.workers > 1
    batches = crop_in_processes(todo, o, dev, earlier) if processes else crop_here(todo, o, dev, earlier)
    new_rows, deferred = [], []
    try:
        with tqdm(total=len(todo), desc="crop", unit="img", file=sys.stderr, disable=None, mininterval=1) as bar:
            for batch, rows, later in batches:
                append_csv(pd.DataFrame(rows).reindex(columns=COLUMNS), o.dst / PARTIAL)  # only now: crops on disk
                new_rows += rows
                deferred += later
                bar.update(len(batch))
                stop_if_interrupted()
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after {len(new_rows)} new crops; the same command resumes") from None
    if deferred:
        with ThreadPoolExecutor(o.workers) as pool:
            new_rows += crop_fallbacks(pool, deferred, done, new_rows, o)
    return new_rows


@command(app, CropOptions)
def main(o: CropOptions):
    """Face crops of a photo tree, with a report of every photo and a preview sheet."""
    t0 = time.time()
    o.check()
    items = list_items(o.src, o.dst, o.person_photos)
    dev = resolve_device(o.device)
    o.dst.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(o.dst)  # a killed run's half-written crops never got their real names
    if o.overwrite:
        for p in (o.dst / REPORT, o.dst / PARTIAL):
            p.unlink(missing_ok=True)
    try:
        done = load_done(o.dst, items)
    except UserError as e:
        raise UserError(f"{e}; --overwrite starts afresh") from None
    finished = set(done["path"])
    todo = [it for it in items if it.rel not in finished]
    from maskfold.crop.detector import check_facenet
    try:
        check_facenet()  # here, before any worker forks: 3 s to import, and a worker that fails to start would hang
    except KeyboardInterrupt:
        raise Interrupted("interrupted before any crop of this run was written; the same command starts it") from None
    processes = dev == "cpu" and o.workers > 1
    threads = threads_per_process(o, processes)[1]
    print(f"crop: {len(todo)} photos on {dev}, {threads}", file=sys.stderr)
    t1 = time.time()
    try:
        report = finish_report(o.dst, done, run_crops(o, dev, todo, done))
    except KeyboardInterrupt:  # before the first batch, or while the look-alikes lend their boxes
        raise Interrupted(f"interrupted; the crops written so far are kept: the same command resumes ({len(done)} "
                          "were done before this run)") from None
    elapsed = time.time() - t1
    counts = report["status"].value_counts().to_dict()
    if o.preview_size:
        from maskfold.pages.contact_sheet import crop_preview
        crop_preview(o.src, o.dst / "preview.jpg", report, o.preview_size)
    summary = {"src": str(o.src), "dst": str(o.dst), "images": len(items), "skipped": len(done),
               "processed": len(todo), **{s: int(counts.get(s, 0)) for s in STATUSES},
               "img_per_s": round(len(todo) / elapsed, 1) if todo else None, "seconds": round(time.time() - t0, 1),
               "device": dev, "workers": f"{o.workers} {'processes' if processes else 'threads'}", "threads": threads,
               "files": [str(o.dst / REPORT), str(o.dst / "crop_summary.json")]
               + ([str(o.dst / "preview.jpg")] if o.preview_size else [])}
    write_json(o.dst / "crop_summary.json", summary)
    result(summary)
    bad = report[report["status"] == "unreadable"]
    if len(bad):
        for _, r in bad.head(5).iterrows():
            print(f"unreadable: {r['note']}", file=sys.stderr)
        fail(f"{len(bad)} unreadable image(s), first {', '.join(bad['path'].head(3))}; see {o.dst / REPORT}", code=1)


if __name__ == "__main__":
    app()
