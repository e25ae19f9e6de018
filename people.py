"""Which photos of a flat folder are one person: people.csv for one answer per person in ensemble.py.

    python people.py data/eval/images -o work/people.csv --info data/eval/info.csv --preview work/people.jpg
    python people.py data/train/images --flatten -o work/people_train.csv   # the train photos, as if unnamed

Writes ImageID,group,size,sure,margin (sure: the group's least sure photo; margin: how much more a
photo looks like its own group than like the next best one) and <out>.json. With --flatten the
photos of a tree are grouped as one flat folder and scored against their person folders; with
--truth (ImageID,person) against those. Raw photos group better than crops: they show more of
the setting and clothes that one person's photos share.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from maskfold import grouping
from maskfold.cli import UserError, arg, command, make_app, opt, result
from maskfold.files import check_new, check_outside, read_info, read_table, write_csv, write_json
from maskfold.images import is_image_name, match_ids, stem_key

app = make_app()


@dataclass(frozen=True, kw_only=True)
class PeopleOptions:
    images: Path = arg("flat folder of photos (raw photos or crops), or a tree with --flatten")
    out: Path = opt(..., "people CSV to write", "--out", "-o")
    info: Optional[Path] = opt(None, "info.csv: group exactly its ImageIDs (matched by stem)")
    size: int = opt(7, "photos per person: no group is larger; a folder of whole people gets groups of exactly this")
    flatten: bool = opt(False, "group every photo below IMAGES as one flat folder (ImageID: the path below it)")
    truth: Optional[Path] = opt(None, "ImageID,person: print the grouping's purity against it")
    preview: Optional[Path] = opt(None, "sheet of a sample of groups, least sure first (JPEG)")
    preview_groups: int = opt(16, "groups on the preview sheet")
    workers: int = opt(os.cpu_count() or 1, "decoding threads")
    overwrite: bool = opt(False, "replace existing output files")


def is_crop_sheet(p: Path) -> bool:
    """crop.py's preview sheet, which sits among the crops of a flat folder."""
    return p.name == "preview.jpg" and (p.parent / "crop_report.csv").is_file()


def list_photos(o: PeopleOptions) -> list[str]:
    """ImageIDs: file names of a flat folder, or paths below IMAGES with --flatten."""
    if not o.images.is_dir():
        raise UserError(f"{o.images}: no such folder")
    files = sorted(p for p in (o.images.rglob("*") if o.flatten else o.images.iterdir())
                   if p.is_file() and is_image_name(p.name) and not is_crop_sheet(p)
                   and not any(part.startswith(".") for part in p.relative_to(o.images).parts))
    ids = [p.relative_to(o.images).as_posix() for p in files]
    if not ids:
        nested = not o.flatten and any(p.is_file() and is_image_name(p.name) for p in o.images.glob("*/*"))
        raise UserError(f"{o.images}: no photos" + (" directly in it, but its folders hold some (a train tree of "
                                                     "person folders?): pass --flatten" if nested else ""))
    if (o.images / "crop_report.csv").is_file() or (o.images / "crop_summary.json").is_file():
        print(f"warning: {o.images} holds crop.py's crops: people group better on the raw photos, which show the "
              "setting and clothes one person's photos share (purity 0.90 on crops against 1.00 on the demo's raw "
              "eval photos); pass the folder crop.py read", file=sys.stderr)
    if not o.info:
        return ids
    return match_ids(o.images, read_info(o.info).tolist(), ids, str(o.info))


def persons(o: PeopleOptions, ids: list[str]) -> np.ndarray | None:
    """The true person of each photo, where it is known: --truth, or the person folders of --flatten."""
    if o.truth:
        t = read_table(o.truth, dtype=str)
        if not {"ImageID", "person"} <= set(t.columns):
            raise UserError(f"{o.truth}: needs ImageID,person columns")
        known = dict(zip(t["ImageID"].map(stem_key), t["person"]))
        missing = [i for i in ids if stem_key(i) not in known]
        if missing:
            raise UserError(f"{o.truth}: no person for {len(missing)} photo(s), first {missing[0]}")
        return np.array([known[stem_key(i)] for i in ids])
    return np.array([str(Path(i).parent) for i in ids]) if o.flatten else None


def peak_rss_mib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def table(ids: list[str], label: np.ndarray, margin: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({"ImageID": ids, "group": label, "margin": np.round(margin, 4)})
    df["size"] = df.groupby("group")["group"].transform("size")
    df["sure"] = df.groupby("group")["margin"].transform("min")
    return df[["ImageID", "group", "size", "sure", "margin"]]


@command(app, PeopleOptions)
def main(o: PeopleOptions):
    """Group the photos of a flat folder into people."""
    t0 = time.time()
    check_new(o.out, o.preview, overwrite=o.overwrite)
    check_outside(o.out, o.images)
    if o.size < 1:
        raise UserError("--size must be at least 1")
    ids = list_photos(o)
    person = persons(o, ids)
    F, bad = grouping.features([o.images / i for i in ids], o.workers)
    for i in bad[:5]:
        print(f"warning: unreadable, left in a group of its own: {ids[i]}", file=sys.stderr)
    ok = np.setdiff1d(np.arange(len(ids)), bad)
    label = np.full(len(ids), -1)
    label[ok] = grouping.group(F[ok], o.size)
    label[bad] = label.max() + 1 + np.arange(len(bad))
    margin = np.full(len(ids), np.nan)
    margin[ok] = grouping.sureness(F[ok], label[ok])
    df = table(ids, label, margin)
    write_csv(df, o.out)
    sizes = df.groupby("group").size()
    summary = {"out": str(o.out), "photos": len(ids), "groups": int(len(sizes)),
               "sizes": {int(k): int(v) for k, v in sizes.value_counts().sort_index().items()},
               "share_in_groups_of_size": round(float((df["size"] == o.size).mean()), 4) if len(df) else 0.0,
               "unreadable": len(bad), "photos_per_s": round(len(ids) / (time.time() - t0), 1),
               "features_mib": round(F.nbytes / 2**20, 1), "peak_rss_mib": peak_rss_mib()}
    print(f"people: {summary['groups']} groups of {len(ids)} photos, {summary['share_in_groups_of_size']:.1%} in "
          f"groups of {o.size}", file=sys.stderr)
    sure = (df["sure"] > 0).to_numpy()
    summary["share_sure"] = round(float(sure.mean()), 4)  # in groups ensemble.py uses by default
    if person is not None:
        summary["purity"] = round(grouping.purity(label, person), 4)
        summary["purity_sure"] = round(grouping.purity(label, person, sure), 4)
        print(f"people: purity {summary['purity']:.4f} (share of photos whose group is exactly their person); "
              f"{summary['purity_sure']:.4f} among the {summary['share_sure']:.1%} in groups surer than 0",
              file=sys.stderr)
    write_json(Path(f"{o.out}.json"), {"images": str(o.images.resolve()), "size": o.size, "flatten": o.flatten,
                                        **summary})
    if o.preview:
        from maskfold.contact_sheet import people_sheet

        people_sheet(df, o.images, person, o.preview_groups, o.size, o.preview)
    summary["files"] = [str(o.out), f"{o.out}.json"] + ([str(o.preview)] if o.preview else [])
    summary["seconds"] = round(time.time() - t0, 1)
    result(summary)


if __name__ == "__main__":
    app()
