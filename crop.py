"""Face crops of a whole image tree: batched MTCNN, person-aware fallbacks, resumable.

    python crop.py data/train/images work/crops/train
    python crop.py data/eval/images work/crops/eval --device cuda --batch-size 256

Mirrors SRC into DST as RGB JPEGs named <stem>.jpg, writes DST/crop_report.csv (one
row per image: status face / person / prior / unreadable) and DST/preview.jpg. A
folder holding at most --person-photos images is one person's photos (the train
layout): a photo whose face is missing or implausible borrows the median box of
that person's other photos. Anything else falls back to the run's median face
position (the prior). A rerun skips finished crops.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterator

import numpy as np
import pandas as pd
import typer
from PIL import Image, ImageDraw
from tqdm import tqdm

from data import Device, UserError, append_csv, atomic_path, check_outside, fail, is_hidden, read_image, \
    read_table, remove_stale_temps, resolve_device, write_csv
from facebox import TAIL_OF_DEFAULTS, Detector, Geometry, agrees, borrow, consensus, crop_box, cut, signature

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
REPORT = "crop_report.csv"
PARTIAL = ".crop_report.partial.csv"
COLUMNS = ["path", "status", "prob", "face_x1", "face_y1", "face_x2", "face_y2",
           "crop_x1", "crop_y1", "crop_x2", "crop_y2", "width", "height", "note"]
# Where a face sits when no photo of the run shows one: centre of a 384x512 portrait.
DEFAULT_PRIOR = np.array([0.25, 0.18, 0.75, 0.58])


@dataclass
class Item:
    rel: str  # path below SRC, posix
    src: Path
    dst: Path
    group: str  # the person folder, or the image itself when its folder is not one person's


def crop_path(dst: Path, rel: str) -> Path:
    """Where the crop of SRC/rel goes: the same tree, named <stem>.jpg."""
    return dst / Path(rel).with_suffix(".jpg")


def list_items(src: Path, dst: Path, person_photos: int) -> list[Item]:
    items = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        names = sorted(f for f in files if not is_hidden(f) and Path(f).suffix.lower() in IMAGE_EXTS)
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
    return items


def load_done(dst: Path, items: list[Item]) -> pd.DataFrame:
    """Report rows of crops already on disk, from a finished or an interrupted run."""
    frames = [read_table(p) for p in (dst / REPORT, dst / PARTIAL) if p.is_file() and p.stat().st_size]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    rows = pd.concat(frames).drop_duplicates("path", keep="last")
    exists = {it.rel for it in items if it.dst.is_file()}
    return rows[rows["path"].isin(exists) & (rows["status"] != "unreadable")]


def chunks(items: list[Item], size: int):
    """Batches of whole persons, so every photo meets the rest of its person."""
    chunk, last = [], None
    for it in items:
        if len(chunk) >= size and it.group != last:
            yield chunk
            chunk = []
        chunk.append(it)
        last = it.group
    if chunk:
        yield chunk


def decode(it: Item):
    try:
        return read_image(it.src)
    except UserError as e:
        return str(e)


def decoded(pool: ThreadPoolExecutor, batches):
    """Decode the next batch in the background while the current one is detected."""
    pending = None
    for batch in batches:
        futures = [pool.submit(decode, it) for it in batch]
        if pending:
            yield pending[0], [f.result() for f in pending[1]]
        pending = (batch, futures)
    if pending:
        yield pending[0], [f.result() for f in pending[1]]


def faces_by_folder(done: pd.DataFrame) -> dict[str, list[np.ndarray]]:
    """Face boxes of crops finished earlier, by folder: a resumed person still meets its other photos."""
    faces = done[done["status"] == "face"]
    out: dict[str, list[np.ndarray]] = {}
    for path, box in zip(faces["path"], faces[COLUMNS[3:7]].to_numpy(float)):
        out.setdefault(Path(path).parent.as_posix(), []).append(box)
    return out


def decide(batch, images, dets, det: Detector, earlier: dict[str, list[np.ndarray]]) -> tuple[list[dict], list]:
    """Status and face box per photo; photos that need the run-wide prior come back deferred."""
    rows, deferred = [], []
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(batch):
        groups.setdefault(it.group, []).append(i)
    for group, idx in groups.items():
        best = {i: det.best(dets[i]) if dets[i] is not None else (None, None, "") for i in idx}
        faces = [b for b, _, _ in best.values() if b is not None] + earlier.get(group, [])
        ref = consensus(faces)
        if len(faces) >= 3:
            faces = [f for f in faces if agrees(f, ref)]
            ref = consensus(faces)
        for i in idx:
            it, (box, prob, why) = batch[i], best[i]
            if isinstance(images[i], str):
                rows.append({"path": it.rel, "status": "unreadable", "note": images[i]})
                continue
            if box is not None and len(faces) >= 2 and not agrees(box, ref):
                box, why = None, "off person"
            if box is not None:
                rows.append(row(it, "face", prob, box, images[i].shape[:2], ""))
            elif it.group != it.rel and faces:
                rows.append(row(it, "person", prob, ref, images[i].shape[:2], why))
            else:
                deferred.append((it, prob, why))
    return rows, deferred


def row(it: Item, status: str, prob, box, shape, note) -> dict:
    return {"path": it.rel, "status": status, "prob": None if prob is None else round(prob, 5),
            **dict(zip(COLUMNS[3:7], np.round(box, 1))), "width": shape[1], "height": shape[0], "note": note}


def write_crop(r: dict, dst: Path, image: np.ndarray, g: Geometry, quality: int) -> None:
    """Crop box from the face box, then the crop itself, written to a temporary name and renamed."""
    box = crop_box(np.array([r[c] for c in COLUMNS[3:7]]), (r["height"], r["width"]), g)
    r.update(zip(COLUMNS[7:11], box.tolist()))
    with atomic_path(dst) as tmp:
        Image.fromarray(cut(image, box)).save(tmp, "JPEG", quality=quality)


def crop_jobs(rows: list[dict], batch: list[Item], images: list) -> list[tuple[dict, Path, np.ndarray]]:
    """(report row, crop path, photo) of each readable photo of a batch: what write_crop needs."""
    by_rel = {it.rel: (it.dst, im) for it, im in zip(batch, images)}
    return [(r, *by_rel[r["path"]]) for r in rows if r["status"] != "unreadable"]


def write_crops(pool, rows: list[dict], batch: list[Item], images: list, g: Geometry, quality: int) -> list:
    """Start writing a batch's crops in the pool; the futures say when they are on disk."""
    return [pool.submit(write_crop, r, dst, im, g, quality) for r, dst, im in crop_jobs(rows, batch, images)]


def detect_and_decide(det: Detector, batch: list[Item], images: list, earlier: dict) -> tuple[list[dict], list]:
    ok = [i for i, im in enumerate(images) if not isinstance(im, str)]
    dets = [None] * len(batch)
    for i, found in zip(ok, det.detect([images[i] for i in ok])):
        dets[i] = found
    return decide(batch, images, dets, det, earlier)


def crop_here(todo: list[Item], det: Detector, earlier: dict, geom: Geometry, quality: int, batch_size: int,
              threads: int):
    """One process around one detector (the GPU path): threads decode the next batch and write the
    last one's crops while this one is detected. Yields (batch, rows, deferred) once its crops are on disk."""
    with ThreadPoolExecutor(threads) as pool:
        writing = None
        for batch, images in decoded(pool, chunks(todo, batch_size)):
            rows, later = detect_and_decide(det, batch, images, earlier)
            futures = write_crops(pool, rows, batch, images, geom, quality)
            if writing:
                yield settled(*writing)
            writing = batch, rows, later, futures
        if writing:
            yield settled(*writing)


def settled(batch, rows, later, futures):
    for f in futures:
        f.result()
    return batch, rows, later


_worker: dict = {}


def start_worker(detector: dict, geom: Geometry, quality: int, threads: int) -> None:
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:  # Linux: die with the parent, even when it is SIGKILLed (PR_SET_PDEATHSIG)
        import ctypes
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    torch.set_num_threads(threads)
    _worker.update(det=Detector(**detector), geom=geom, quality=quality)


def crop_in_worker(task: tuple[list[Item], dict]):
    batch, earlier = task
    images = [decode(it) for it in batch]
    rows, later = detect_and_decide(_worker["det"], batch, images, earlier)
    for r, dst, im in crop_jobs(rows, batch, images):
        write_crop(r, dst, im, _worker["geom"], _worker["quality"])
    return batch, rows, later


def crop_in_processes(todo: list[Item], detector: dict, earlier: dict, geom: Geometry, quality: int,
                      batch_size: int, workers: int) -> Iterator:
    """The CPU path: each process decodes, detects and writes whole persons with its own share of the
    cores (one process per core beats threads fighting over them: 1.5x measured on 2 cores)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    tasks = ((b, {g: earlier[g] for g in {it.group for it in b} if g in earlier}) for b in chunks(todo, batch_size))
    pool = ctx.Pool(workers, start_worker, (detector, geom, quality, threads))  # now, before any thread starts

    def results():
        with pool:
            yield from pool.imap_unordered(crop_in_worker, tasks)

    return results()


def prior_box(report: pd.DataFrame) -> np.ndarray:
    """The run's median face position, as fractions of each photo's size (photos may differ in size)."""
    faces = report[report["status"] == "face"]
    if faces.empty:
        return DEFAULT_PRIOR
    size = faces[["width", "height", "width", "height"]].to_numpy(float)
    return np.median(faces[COLUMNS[3:7]].to_numpy(float) / size, axis=0)


def preview(dst: Path, report: pd.DataFrame, n: int, seed: int = 0) -> None:
    """A contact sheet of every fallback plus a sample of faces, to eyeball failures at once."""
    ok = report[report["status"] != "unreadable"]
    fallbacks = ok[ok["status"] != "face"]
    faces = ok[ok["status"] == "face"]
    pick = pd.concat([fallbacks.head(n), faces.sample(min(len(faces), max(0, n - len(fallbacks))), random_state=seed)])
    if pick.empty:
        return
    tw, th, cols = 120, 160, 8
    sheet = Image.new("RGB", (tw * cols, th * ((len(pick) + cols - 1) // cols)), (40, 40, 40))
    colours = {"face": (60, 200, 60), "person": (240, 200, 40), "prior": (240, 60, 60)}
    for k, (_, r) in enumerate(pick.iterrows()):
        with Image.open(crop_path(dst, r["path"])) as im:
            thumb = im.convert("RGB").resize((tw - 6, th - 22))
        x, y = (k % cols) * tw, (k // cols) * th
        sheet.paste(thumb, (x + 3, y + 3))
        d = ImageDraw.Draw(sheet)
        d.rectangle([x + 1, y + 1, x + tw - 2, y + th - 2], outline=colours[r["status"]], width=2)
        d.text((x + 4, y + th - 18), f"{r['status']} {Path(r['path']).stem[:12]}", fill=colours[r["status"]])
    with atomic_path(dst / "preview.jpg") as tmp:
        sheet.save(tmp, "JPEG", quality=90)


@app.command()
def main(
    src: Annotated[Path, typer.Argument(help="image tree: a folder of person folders, or a flat eval folder")],
    dst: Annotated[Path, typer.Argument(help="output tree, mirroring SRC")],
    device: Annotated[Device, typer.Option(help="where MTCNN runs")] = Device.auto,
    batch_size: Annotated[int, typer.Option(help="photos per detection batch (32 suits a CPU, 256 a GPU)")] = 32,
    workers: Annotated[int, typer.Option(help="CPU: processes, each decoding, detecting and writing whole "
                                              "persons; GPU: decode / write threads")] = min(8, os.cpu_count() or 1),
    scale: Annotated[float, typer.Option(help="detect on a copy downscaled by this factor first (photos much "
                                              "larger than 384x512); the pyramid's levels are smaller still")] = 1.0,
    min_face: Annotated[float, typer.Option(help="smallest face MTCNN looks for, source pixels (111.46: the "
                                                  "pyramid levels MTCNN's defaults use for faces of that size)")]
    = TAIL_OF_DEFAULTS,
    min_prob: Annotated[float, typer.Option(help="lowest face probability taken as a face")] = 0.75,
    margin_x: Annotated[float, typer.Option(help="crop margin left and right, fraction of face width")] = 0.25,
    margin_top: Annotated[float, typer.Option(help="crop margin above, fraction of face height")] = 0.35,
    margin_bottom: Annotated[float, typer.Option(help="crop margin below, fraction of face height")] = 0.25,
    aspect: Annotated[float, typer.Option(help="width/height of every crop")] = 0.75,
    person_photos: Annotated[int, typer.Option(help="a folder with at most this many images is one person")] = 10,
    quality: Annotated[int, typer.Option(help="JPEG quality of the crops")] = 95,
    preview_size: Annotated[int, typer.Option(help="crops on the preview sheet (0: none)")] = 64,
    overwrite: Annotated[bool, typer.Option(help="redo every crop instead of resuming")] = False,
):
    t0 = time.time()
    try:
        if not src.is_dir():
            raise UserError(f"{src}: no such folder")
        check_outside(dst, src)
        if not (0 < scale <= 1) or batch_size < 1 or workers < 1 or aspect <= 0 or min_face < 12:
            raise UserError("--scale must be in (0, 1], --batch-size, --workers and --aspect positive, "
                            "--min-face at least 12 (MTCNN's smallest window)")
        items = list_items(src, dst, person_photos)
        if not items:
            raise UserError(f"{src}: no images found")
        dev = resolve_device(device)
    except UserError as e:
        fail(str(e))
    dst.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dst)  # a killed run's half-written crops never got their real names
    if overwrite:
        for p in (dst / REPORT, dst / PARTIAL):
            p.unlink(missing_ok=True)
    try:
        done = load_done(dst, items)
    except UserError as e:
        fail(f"{e}; --overwrite starts afresh")
    finished = set(done["path"])
    todo = [it for it in items if it.rel not in finished]
    earlier = faces_by_folder(done)
    detector = dict(device=dev, scale=scale, min_face=min_face, min_prob=min_prob)
    geom = Geometry(margin_x, margin_top, margin_bottom, aspect)
    processes = dev == "cpu" and workers > 1
    importlib.import_module("facenet_pytorch")  # 3 s to import: once here, before any worker forks

    new_rows, deferred = [], []
    t1 = time.time()
    if processes:
        batches = crop_in_processes(todo, detector, earlier, geom, quality, batch_size, workers)
    else:
        batches = crop_here(todo, Detector(**detector), earlier, geom, quality, batch_size, workers)
    try:
        with tqdm(total=len(todo), desc="crop", unit="img", file=sys.stderr) as bar:
            for batch, rows, later in batches:
                append_csv(pd.DataFrame(rows).reindex(columns=COLUMNS), dst / PARTIAL)  # only now: crops on disk
                new_rows += rows
                deferred += later
                bar.update(len(batch))
    except KeyboardInterrupt:
        fail(f"interrupted after {len(new_rows)} new crops; the same command resumes", code=130)
    if deferred:
        with ThreadPoolExecutor(workers) as pool:
            new_rows += crop_fallbacks(pool, deferred, src, done, new_rows, geom, quality)
    report = finish_report(dst, done, new_rows)
    elapsed = time.time() - t1
    counts = report["status"].value_counts().to_dict()
    if preview_size:
        preview(dst, report, preview_size)
    summary = {"src": str(src), "dst": str(dst), "images": len(items), "skipped": len(done),
               "processed": len(todo), **{s: int(counts.get(s, 0)) for s in ("face", "person", "prior", "unreadable")},
               "img_per_s": round(len(todo) / elapsed, 1) if todo else None, "seconds": round(time.time() - t0, 1),
               "device": dev, "workers": f"{workers} {'processes' if processes else 'threads'}"}
    with atomic_path(dst / "crop_summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    bad = report[report["status"] == "unreadable"]
    if len(bad):
        for _, r in bad.head(5).iterrows():
            print(f"unreadable: {r['note']}", file=sys.stderr)
        fail(f"{len(bad)} unreadable image(s), first {', '.join(bad['path'].head(3))}; see {dst / REPORT}", code=1)


def look(path: Path) -> np.ndarray | None:
    """The photo's signature, from a fast reduced-size decode (an eighth of the size is plenty)."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (im.width // 8, im.height // 8))
            return signature(np.asarray(im.convert("RGB")))
    except Exception:  # unreadable photos were reported already; they only lend nothing here
        return None


def lookalikes(pool, deferred, src: Path, report: pd.DataFrame) -> dict[str, tuple[np.ndarray, str]]:
    """Face boxes (fractions of the photo) borrowed from look-alike photos, for faceless photos of flat
    folders: eval photos are unnamed, but a person's 7 photos share everything except the mask."""
    wanted = [it for it, _, _ in deferred if it.group == it.rel]
    out: dict[str, tuple[np.ndarray, str]] = {}
    by_folder: dict[str, list[Item]] = {}
    for it in wanted:
        by_folder.setdefault(Path(it.rel).parent.as_posix(), []).append(it)
    faces_all = report[report["status"] == "face"]
    parents = faces_all["path"].map(lambda p: Path(p).parent.as_posix())
    for folder, queries in by_folder.items():
        faces = faces_all[parents == folder]
        frac = faces[COLUMNS[3:7]].to_numpy(float) / faces[["width", "height", "width", "height"]].to_numpy(float)
        rels = faces["path"].tolist() + [it.rel for it in queries]
        boxes = list(frac) + [None] * len(queries)
        sigs = list(pool.map(look, [src / r for r in rels]))
        keep = [i for i, v in enumerate(sigs) if v is not None]
        S = np.stack([sigs[i] for i in keep]) if keep else np.zeros((0, 1))
        boxes = [boxes[i] for i in keep]
        at = {rels[i]: j for j, i in enumerate(keep)}
        asked = [it.rel for it in queries if it.rel in at]
        for start in range(0, len(asked), 512):  # one matrix product per block of queries
            block = asked[start:start + 512]
            sims = S[[at[r] for r in block]] @ S.T
            for rel, row_sims in zip(block, sims):
                row_sims[at[rel]] = -np.inf
                box, n = borrow(row_sims, boxes)
                if box is not None:
                    out[rel] = box, f"box of {n} look-alike photo{'s' * (n > 1)}"
    return out


def crop_fallbacks(pool, deferred, src: Path, done: pd.DataFrame, rows: list[dict], geom: Geometry,
                   quality: int) -> list[dict]:
    """Photos with no usable face of their own or of their person: look-alike photos' faces in flat
    folders, else the run's median face position (the prior)."""
    report = pd.concat([done, pd.DataFrame(rows).reindex(columns=COLUMNS)])
    prior = prior_box(report)
    borrowed = lookalikes(pool, deferred, src, report)
    out = []
    for start in range(0, len(deferred), 256):  # a few hundred full-size photos in memory at a time
        part = deferred[start:start + 256]
        images = list(pool.map(decode, [it for it, _, _ in part]))
        rows_part = []
        for (it, prob, why), im in zip(part, images):
            if isinstance(im, str):
                rows_part.append({"path": it.rel, "status": "unreadable", "note": im})
                continue
            H, W = im.shape[:2]
            if it.rel in borrowed:
                box, note = borrowed[it.rel]
                rows_part.append(row(it, "person", prob, box * [W, H, W, H], (H, W), f"{why or 'no face'}; {note}"))
            else:
                rows_part.append(row(it, "prior", prob, prior * [W, H, W, H], (H, W), why or "no face"))
        for f in write_crops(pool, rows_part, [it for it, _, _ in part], images, geom, quality):
            f.result()
        out += rows_part
    return out


def finish_report(dst: Path, done: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    report = pd.concat([done, pd.DataFrame(rows).reindex(columns=COLUMNS)]).drop_duplicates("path", keep="last")
    report = report.sort_values("path").reindex(columns=COLUMNS)
    write_csv(report, dst / REPORT)
    (dst / PARTIAL).unlink(missing_ok=True)
    return report


if __name__ == "__main__":
    app()
