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

from maskfold.cli import UserError, arg, command, make_app, opt, result
from maskfold.files import check_new, check_outside, read_info, read_table, record_path, write_csv, write_json
from maskfold.images import is_image_name, match_ids, stem_key
from maskfold.people import features, grouping
from maskfold.people.answers import eval_answers, joined, train_answers

app = make_app()


@dataclass(frozen=True, kw_only=True)
class PeopleOptions:
    images: Path = arg("flat folder of photos (raw photos or crops), or a tree with --flatten")
    out: Path = opt(..., "people CSV to write", "--out", "-o")
    info: Optional[Path] = opt(None, "info.csv: group exactly its ImageIDs (matched by stem)")
    group_size: int = opt(7, "photos per person: no group is larger; a folder of whole people gets groups of exactly "
                          "this")
    flatten: bool = opt(False, "group every photo below IMAGES as one flat folder (ImageID: the path below it)")
    truth: Optional[Path] = opt(None, "ImageID,person: print the grouping's purity against it")
    probs: Optional[Path] = opt(None, "probability CSV of these photos (predict.py): the model's gender and age join "
                                "the looks, and photos that cannot be one person (two sure 'no mask' or 'worn "
                                "wrongly', a sure male and a sure female) are never grouped")
    also: Optional[Path] = opt(None, "a train tree of person folders grouped together with these photos, so that its "
                               "photos have as many look-alikes as these: their groups go to --also-out (for "
                               "ensemble.py --oof-people) and their purity estimates this grouping's")
    also_out: Optional[Path] = opt(None, "people CSV of the --also photos (ImageID: <person folder>/<file>)")
    also_probs: Optional[list[Path]] = opt(None, "run folder(s) whose out-of-fold files score the --also photos "
                                           "(repeat; averaged): their --probs")
    preview: Optional[Path] = opt(None, "sheet of a sample of groups, least sure first (JPEG)")
    preview_groups: int = opt(16, "groups on the preview sheet")
    workers: int = opt(os.cpu_count() or 1, "decoding threads")
    overwrite: bool = opt(False, "replace existing output files")

    RENAMED = {"--size": "group_size"}  # ClassVar: the old spelling works for one release


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


def also_summary(o: PeopleOptions, also: list[str], label: np.ndarray, margin: np.ndarray, n: int) -> dict:
    """Write the --also photos' groups; their purity (their person folders are the truth), which estimates the
    purity of the main folder's grouping: in one grouping, they faced the same look-alikes."""
    rows = table(also, label[n:], margin[n:])
    # a group shared with main-folder photos counts its --also photos only: those the check can score
    write_csv(rows, o.also_out)
    truth = np.array([str(Path(i).parent) for i in also])
    sure = (rows["sure"] > 0).to_numpy()
    out = {"also_photos": len(also), "also_out": str(o.also_out),
           "estimated_purity": round(grouping.purity(label[n:], truth), 4),
           "estimated_purity_sure": round(grouping.purity(label[n:], truth, sure), 4),
           "mixed_groups": int(len(set(label[:n]) & set(label[n:])))}
    print(f"people: the {len(also)} photos of {o.also}, grouped with these: purity {out['estimated_purity']:.4f} "
          f"(the estimate of this grouping's), {out['mixed_groups']} groups mix the two folders", file=sys.stderr)
    return out


def grouped(F: np.ndarray, bad: list[int], size: int, answers: dict[str, np.ndarray] | None) -> np.ndarray:
    """A group per photo; each unreadable photo a group of its own."""
    ok = np.setdiff1d(np.arange(len(F)), bad)
    label = np.full(len(F), -1)
    label[ok] = grouping.group(F[ok], size, answers=None if answers is None else {t: v[ok] for t, v in answers.items()})
    label[bad] = label.max() + 1 + np.arange(len(bad))
    return label


def choose_grouping(o: PeopleOptions, F: np.ndarray, bad: list[int], answers: dict[str, np.ndarray] | None,
                    also: list[str]) -> tuple[np.ndarray, dict]:
    """The grouping by looks alone, or with the model's answers where they help: with --also, both groupings are
    made and the answers kept only if they raise the purity of the --also photos (whose person folders are the
    truth); a weak model's answers can split people. Without --also they are used unchecked, as asked."""
    looks = grouped(F, bad, o.group_size, None)
    if answers is None:
        return looks, {"given": False, "answers_used": False}
    told = grouped(F, bad, o.group_size, answers)
    if not also:
        print("people: the model's answers used unchecked (--also with a train tree checks that they raise the "
              "purity)", file=sys.stderr)
        return told, {"given": True, "answers_used": True, "checked": False}
    n = len(F) - len(also)
    truth = np.array([str(Path(i).parent) for i in also])
    with_, without = (round(grouping.purity(lab[n:], truth), 4) for lab in (told, looks))
    use = with_ > without
    print(f"people: purity of the --also photos {with_:.4f} with the model's answers, {without:.4f} by looks alone: "
          f"{'the answers are used' if use else 'grouped by looks alone (the answers do not raise it)'}",
          file=sys.stderr)
    return (told if use else looks), {"given": True, "answers_used": bool(use), "checked": True,
                                      "also_purity_with_answers": with_, "also_purity_looks_alone": without}


@dataclass(frozen=True)
class Grouped:
    """The photos grouped in one run: the folder's ImageIDs, then the --also photos'; a group and a margin per
    photo; the unreadable ones; what the model's answers did."""
    ids: list[str]
    also: list[str]
    label: np.ndarray
    margin: np.ndarray
    bad: list[int]
    answers: dict
    features_mib: float


def group_all(o: PeopleOptions, ids: list[str], also: list[str]) -> Grouped:
    """The folder's photos and the --also photos grouped together, with each photo's margin."""
    answers = joined(eval_answers(o.probs, ids) if o.probs else None,
                     train_answers(o.also_probs, also) if o.also_probs else None, len(ids), len(also))
    paths = [o.images / i for i in ids] + [o.also / i for i in also]
    F, bad = features.features(paths, o.workers)
    for i in bad[:5]:
        print(f"warning: unreadable, left in a group of its own: {paths[i]}", file=sys.stderr)
    label, checked = choose_grouping(o, F, bad, answers, also)
    ok = np.setdiff1d(np.arange(len(paths)), bad)
    margin = np.full(len(paths), np.nan)
    margin[ok] = grouping.sureness(F[ok], label[ok])
    return Grouped(ids, also, label, margin, bad, checked, round(F.nbytes / 2**20, 1))


def summarize(o: PeopleOptions, g: Grouped, df: pd.DataFrame, t0: float) -> dict:
    sizes = df.groupby("group").size()
    summary = {"out": str(o.out), "photos": len(g.ids), "groups": int(len(sizes)),
               "sizes": {int(k): int(v) for k, v in sizes.value_counts().sort_index().items()},
               "share_in_groups_of_size": round(float((df["size"] == o.group_size).mean()), 4) if len(df) else 0.0,
               "unreadable": len(g.bad), "photos_per_s": round(len(g.ids) / (time.time() - t0), 1),
               "features_mib": g.features_mib, "peak_rss_mib": peak_rss_mib(),
               "share_sure": round(float((df["sure"] > 0).mean()), 4),  # in groups ensemble.py uses by default
               "probs": g.answers["answers_used"], "answers": g.answers}  # probs: the answers shaped the groups
    print(f"people: {summary['groups']} groups of {len(g.ids)} photos, {summary['share_in_groups_of_size']:.1%} "
          f"in groups of {o.group_size}", file=sys.stderr)
    return summary


def scored(g: Grouped, person: np.ndarray, sure: np.ndarray, share_sure: float) -> dict:
    """The purity against the known people (a group that takes --also photos in is not one of these people's,
    whole)."""
    everyone = np.concatenate([person.astype(object),
                               np.array([f"--also {Path(i).parent}" for i in g.also], dtype=object)])
    first = np.arange(len(g.label)) < len(g.ids)
    out = {"purity": round(grouping.purity(g.label, everyone, first), 4),
           "purity_sure": round(grouping.purity(g.label, everyone,
                                                first & np.concatenate([sure, np.zeros(len(g.also), bool)])), 4)}
    print(f"people: purity {out['purity']:.4f} (share of photos whose group is exactly their person); "
          f"{out['purity_sure']:.4f} among the {share_sure:.1%} in groups surer than 0", file=sys.stderr)
    return out


def write_records(o: PeopleOptions, summary: dict) -> list[str]:
    """people.csv.json (and the --also file's), each with the grouping's summary; the files written."""
    write_json(record_path(o.out), {"images": str(o.images.resolve()), "size": o.group_size, "flatten": o.flatten,
                                    **summary})
    files = [str(o.out), str(record_path(o.out))]
    if o.also:
        write_json(record_path(o.also_out), {"images": str(o.also.resolve()), "size": o.group_size,
                                             "flatten": True, "grouped_with": str(o.images.resolve()), **summary})
        files += [str(o.also_out), str(record_path(o.also_out))]
    return files


def check(o: PeopleOptions) -> None:
    if o.group_size < 1:
        raise UserError("--group-size must be at least 1")
    if bool(o.also) != bool(o.also_out) or (o.also_probs and not o.also):
        raise UserError("--also and --also-out go together (and --also-probs needs them)")


@command(app, PeopleOptions, check)
def main(o: PeopleOptions):
    """Group the photos of a flat folder into people."""
    t0 = time.time()
    check_new(o.out, o.preview, o.also_out, overwrite=o.overwrite)
    check_outside(o.out, o.images)
    ids = list_photos(o)
    person = persons(o, ids)
    also = list_photos(PeopleOptions(images=o.also, out=o.also_out, flatten=True)) if o.also else []
    g = group_all(o, ids, also)
    df = table(ids, g.label[:len(ids)], g.margin[:len(ids)])
    write_csv(df, o.out)
    summary = summarize(o, g, df, t0)
    if o.also:
        summary.update(also_summary(o, also, g.label, g.margin, len(ids)))
    if person is not None:
        summary.update(scored(g, person, (df["sure"] > 0).to_numpy(), summary["share_sure"]))
    files = write_records(o, summary)
    if o.preview:
        from maskfold.pages.contact_sheet import people_sheet

        people_sheet(df, o.images, person, o.preview_groups, o.group_size, o.preview)
        files.append(str(o.preview))
    result(summary | {"files": files, "seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    app()
