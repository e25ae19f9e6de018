"""Cropping in batches: detect, choose each photo's face box, and write its crop, in processes or threads.

crop.py lists the tree and keeps the report; this module turns batches of whole persons into
crops on disk and report rows, and lends faces to the photos left without one.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from maskfold import lookalike
from maskfold.cli import UserError, arg, opt
from maskfold.crop import facebox
from maskfold.device import Device
from maskfold.files import atomic_path, check_outside
from maskfold.images import read_ahead, read_image
from maskfold.threads import choose as choose_threads
from maskfold.threads import option as threads_option
from maskfold.threads import usable_cores

FACE, CROP = ["face_x1", "face_y1", "face_x2", "face_y2"], ["crop_x1", "crop_y1", "crop_x2", "crop_y2"]
COLUMNS = ["path", "status", "prob", *FACE, *CROP, "width", "height", "note"]


@dataclass(frozen=True, kw_only=True)
class CropOptions:
    src: Path = arg("image tree: a folder of person folders, or a flat eval folder")
    dst: Path = arg("output tree, mirroring SRC")
    device: Device = opt(Device.auto, "where MTCNN runs")
    batch_size: int = opt(32, "photos per detection batch (32 suits a CPU, 256 a GPU)")
    workers: int = opt(min(8, usable_cores()), "CPU: processes, each decoding, detecting and writing whole "
                       "persons; GPU: decode / write threads")
    threads: Optional[int] = threads_option("the cores this process may use; on a CPU, shared by the --workers "
                                            "processes")
    scale: float = opt(1.0, "detect on a copy downscaled by this factor first (photos much larger than 384x512)")
    min_face: float = opt(round(facebox.TAIL_OF_DEFAULTS, 2), "smallest face MTCNN looks for, in source pixels "
                          "(the default, 20/0.709^5, gives the pyramid levels MTCNN's defaults use for such faces)")
    min_prob: float = opt(0.75, "lowest face probability taken as a face")
    margin_x: float = opt(0.25, "crop margin left and right, fraction of face width")
    margin_top: float = opt(0.35, "crop margin above, fraction of face height")
    margin_bottom: float = opt(0.25, "crop margin below, fraction of face height")
    aspect: float = opt(0.75, "width/height of every crop")
    person_photos: int = opt(10, "a folder with at most this many images is one person")
    quality: int = opt(95, "JPEG quality of the crops")
    preview_size: int = opt(64, "photos on the preview sheet (0: none)")
    overwrite: bool = opt(False, "redo every crop instead of resuming")

    def check(self) -> None:
        if not self.src.is_dir():
            raise UserError(f"{self.src}: no such folder")
        check_outside(self.dst, self.src)
        if not (0 < self.scale <= 1) or self.batch_size < 1 or self.workers < 1 or self.aspect <= 0 \
                or self.min_face < 12 or (self.threads is not None and self.threads < 1):
            raise UserError("--scale must be in (0, 1], --batch-size, --workers, --threads and --aspect positive, "
                            "--min-face at least 12 (MTCNN's smallest window)")


@dataclass
class Item:
    rel: str  # path below SRC, posix
    src: Path
    dst: Path
    group: str  # the person folder, or the image itself when its folder is not one person's

    @property
    def in_person(self) -> bool:
        return self.group != self.rel


def crop_path(dst: Path, rel: str) -> Path:
    """Where the crop of SRC/rel goes: the same tree, named <stem>.jpg."""
    return dst / Path(rel).with_suffix(".jpg")


def decode(it: Item):
    try:
        return read_image(it.src)
    except UserError as e:
        return str(e)


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


def fractions(faces: pd.DataFrame) -> np.ndarray:
    """Report rows' face boxes as fractions of their photos' width and height."""
    return faces[FACE].to_numpy(float) / faces[["width", "height", "width", "height"]].to_numpy(float)


def faces_by_folder(done: pd.DataFrame) -> dict[str, list[np.ndarray]]:
    """Face boxes (fractions of their photos) of crops finished earlier, by folder: a resumed person
    still meets its other photos."""
    faces = done[done["status"] == "face"]
    frac = fractions(faces)
    out: dict[str, list[np.ndarray]] = {}
    for path, box in zip(faces["path"], frac):
        out.setdefault(Path(path).parent.as_posix(), []).append(box)
    return out


def row(it: Item, status: str, prob, box, shape, note) -> dict:
    return {"path": it.rel, "status": status, "prob": None if prob is None else round(prob, 5),
            **dict(zip(FACE, np.round(box, 1))), "width": shape[1], "height": shape[0], "note": note}


def decide(batch: list[Item], images: list, dets: list, min_prob: float, earlier: dict) -> tuple[list, list]:
    """Report rows of a batch's photos; photos that need a folder-wide fallback come back deferred."""
    rows, deferred, groups = [], [], {}
    for i, it in enumerate(batch):
        if isinstance(images[i], str):
            rows.append({"path": it.rel, "status": "unreadable", "note": images[i]})
        else:
            groups.setdefault(it.group, []).append(i)
    for group, idx in groups.items():
        shapes = [images[i].shape for i in idx]
        found = [facebox.best_face(dets[i], s, min_prob) for i, s in zip(idx, shapes)]
        choices = facebox.choose_for_person(found, shapes, earlier.get(group, []), batch[idx[0]].in_person)
        for i, shape, c in zip(idx, shapes, choices):
            if c.status is None:
                deferred.append((batch[i], c.prob, c.why))
            else:
                rows.append(row(batch[i], c.status, c.prob, c.box, shape, c.why))
    return rows, deferred


def detect_and_decide(det, batch: list[Item], images: list, min_prob: float, earlier: dict):
    ok = [i for i, im in enumerate(images) if not isinstance(im, str)]  # an unreadable photo is its reason
    found = dict(zip(ok, det.detect([images[i] for i in ok])))
    return decide(batch, images, [found.get(i) for i in range(len(batch))], min_prob, earlier)


def geometry(o: CropOptions) -> facebox.Geometry:
    return facebox.Geometry(o.margin_x, o.margin_top, o.margin_bottom, o.aspect)


def write_crop(r: dict, dst: Path, image: np.ndarray, g: facebox.Geometry, quality: int) -> None:
    """Crop box from the face box, then the crop itself, written to a temporary name and renamed."""
    from PIL import Image

    box = facebox.crop_box(np.array([r[c] for c in FACE]), (r["height"], r["width"]), g)
    r.update(zip(CROP, box.tolist()))
    with atomic_path(dst) as tmp:
        Image.fromarray(facebox.cut(image, box)).save(tmp, "JPEG", quality=quality)


def crop_jobs(rows: list[dict], batch: list[Item], images: list) -> list[tuple[dict, Path, np.ndarray]]:
    """(report row, crop path, photo) of each readable photo of a batch: what write_crop needs."""
    by_rel = {it.rel: (it.dst, im) for it, im in zip(batch, images)}
    return [(r, *by_rel[r["path"]]) for r in rows if r["status"] != "unreadable"]


def crop_here(todo: list[Item], o: CropOptions, dev: str, earlier: dict):
    """One process around one detector (the GPU path): threads decode the next batch and write the
    last one's crops while this one is detected. Yields (batch, rows, deferred) once its crops are on disk."""
    import torch

    from maskfold.crop.detector import Detector

    torch.set_num_threads(threads_per_process(o, processes=False)[0])
    det, geom = Detector(dev, o.scale, o.min_face), geometry(o)
    with ThreadPoolExecutor(o.workers) as pool, ThreadPoolExecutor(1) as ahead:
        writing = None
        for batch, images in read_ahead(ahead, chunks(todo, o.batch_size), lambda b: list(pool.map(decode, b))):
            rows, later = detect_and_decide(det, batch, images, o.min_prob, earlier)
            jobs = crop_jobs(rows, batch, images)
            futures = [pool.submit(write_crop, r, d, im, geom, o.quality) for r, d, im in jobs]
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


def start_worker(o: CropOptions, dev: str, threads: int) -> None:
    import torch

    from maskfold.crop.detector import Detector
    from maskfold.signals import child_process

    child_process()
    torch.set_num_threads(threads)
    _worker.update(det=Detector(dev, o.scale, o.min_face), o=o)


def crop_in_worker(task: tuple[list[Item], dict]):
    batch, earlier = task
    o = _worker["o"]
    images = [decode(it) for it in batch]
    rows, later = detect_and_decide(_worker["det"], batch, images, o.min_prob, earlier)
    for r, dst, im in crop_jobs(rows, batch, images):
        write_crop(r, dst, im, geometry(o), o.quality)
    return batch, rows, later


def threads_per_process(o: CropOptions, processes: bool = True) -> tuple[int, str]:
    """Each detecting process's torch threads and the words for them: --threads (or OMP_NUM_THREADS, or the usable
    cores) shared by the --workers processes on a CPU; all of them for the one process of the GPU path."""
    total, why = choose_threads(o.threads)
    if not processes:
        return total, f"threads {total} ({why})"
    each = max(1, total // o.workers)
    return each, f"{o.workers} processes x {each} thread{'s' if each > 1 else ''} ({why})"


def crop_in_processes(todo: list[Item], o: CropOptions, dev: str, earlier: dict):
    """The CPU path: each process decodes, detects and writes whole persons with its own share of the
    cores (one process per core beats threads fighting over them: 1.5x measured on 2 cores)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    threads = threads_per_process(o)[0]
    tasks = ((b, {g: earlier[g] for g in {it.group for it in b} if g in earlier}) for b in chunks(todo, o.batch_size))
    pool = ctx.Pool(o.workers, start_worker, (o, dev, threads))  # now, before any thread starts
    with pool:
        yield from pool.imap_unordered(crop_in_worker, tasks)


def look(it: Item) -> np.ndarray | None:
    """The photo's look-alike signature, from a fast reduced-size decode (an eighth of the size is plenty)."""
    try:
        return lookalike.signature(read_image(it.src, reduce=8))
    except UserError:  # unreadable photos were reported already; they only lend nothing here
        return None


def lookalikes(pool, deferred, report: pd.DataFrame, src: Path) -> dict[str, tuple[np.ndarray, str]]:
    """Face boxes (fractions of the photo) borrowed from look-alike photos, for faceless photos of flat
    folders: eval photos are unnamed, but a person's 7 photos share everything except the mask."""
    out: dict[str, tuple[np.ndarray, str]] = {}
    by_folder: dict[str, list[Item]] = {}
    for it, _, _ in deferred:
        if not it.in_person:
            by_folder.setdefault(Path(it.rel).parent.as_posix(), []).append(it)
    faces_all = report[report["status"] == "face"]
    parents = faces_all["path"].map(lambda p: Path(p).parent.as_posix())
    for folder, queries in by_folder.items():
        faces = faces_all[parents == folder]
        frac = fractions(faces)
        items = [Item(p, src / p, Path(), p) for p in faces["path"]] + queries
        sigs = list(pool.map(look, items))
        keep = [i for i, v in enumerate(sigs) if v is not None]
        boxes = (list(frac) + [None] * len(queries))
        S = np.stack([sigs[i] for i in keep]) if keep else np.zeros((0, 1))
        at = {items[i].rel: j for j, i in enumerate(keep)}
        asked = [at[it.rel] for it in queries if it.rel in at]
        lent = lookalike.lookalike_boxes(S, [boxes[i] for i in keep], asked)
        for j, (box, n) in lent.items():
            out[items[keep[j]].rel] = box, f"box of {n} look-alike photo{'s' * (n > 1)}"
    return out


def crop_fallbacks(pool, deferred, done: pd.DataFrame, rows: list[dict], o: CropOptions) -> list[dict]:
    """Photos with no usable face of their own or of their person: look-alike photos' faces in flat
    folders, else the run's median face position (the prior)."""
    report = pd.concat([done, pd.DataFrame(rows).reindex(columns=COLUMNS)])
    faces = report[report["status"] == "face"]
    prior = facebox.prior_box(faces[FACE].to_numpy(float), faces[["height", "width"]].to_numpy(float))
    borrowed = lookalikes(pool, deferred, report, o.src)
    out = []
    for start in range(0, len(deferred), 256):  # a few hundred full-size photos in memory at a time
        part = deferred[start:start + 256]
        images = list(pool.map(decode, [it for it, _, _ in part]))
        rows_part = []
        for (it, prob, why), im in zip(part, images):
            if isinstance(im, str):
                rows_part.append({"path": it.rel, "status": "unreadable", "note": im})
            elif it.rel in borrowed:
                box, note = borrowed[it.rel]
                rows_part.append(row(it, "person", prob, box * facebox.size4(im.shape), im.shape,
                                     f"{why or 'no face'}; {note}"))
            else:
                rows_part.append(row(it, "prior", prob, prior * facebox.size4(im.shape), im.shape, why or "no face"))
        jobs = crop_jobs(rows_part, [it for it, _, _ in part], images)
        list(pool.map(lambda j: write_crop(*j, geometry(o), o.quality), jobs))
        out += rows_part
    return out
