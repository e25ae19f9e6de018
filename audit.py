"""Train labels the out-of-fold answers doubt, ranked per person: label_issues.csv.

    python audit.py runs/efficientnet_b2 runs/resnet50 --folds-csv work/folds.csv -o work/label_issues.csv
    python audit.py work/runs/mobilenetv3_small_100 --folds-csv work/folds.csv -o work/label_issues.csv \
        --truth demo_data/train/label_noise.csv        # the demo: how many of the injected errors it finds

Each row: the person (and the photo, for a single photo), the field (gender, age, swap of the
incorrect_mask and normal files, photo), the label, the suggested value and how sure the held-out
answers are: the gender and swap rows first (surest first), then ages, then single photos. The runs'
out-of-fold probabilities are averaged over the photos they share; every photo was scored by a model that
never trained on it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from maskfold.blending.oof import read_run_oof
from maskfold.cli import UserError, arg, choose, command, make_app, opt, result
from maskfold.files import check_new, read_table, write_csv
from maskfold.folds import REQUIRED, read_fold_table
from maskfold.labelling.label_audit import CLEAR_FIELDS, TIERS, audit
from maskfold.labels import PROB_COLS
from maskfold.runs import fold_configs, run_task, task_words

app = make_app()


@dataclass(frozen=True, kw_only=True)
class AuditOptions:
    runs: list[Path] = arg("run folders whose out-of-fold files score the train photos")
    folds_csv: Optional[Path] = opt(None, "folds.csv the runs were trained from (split.py); required")
    out: Path = opt(..., "label issues CSV to write", "--out", "-o")
    photo_floor: float = opt(0.02, "also list single photos whose label gets less than this held-out probability")
    truth: Optional[Path] = opt(None, "the demo's train/label_noise.csv: print what share of its errors the "
                                "person-level rows find, and how many of those rows are right")
    accepted: Optional[Path] = opt(None, "also write the person-level rows at least --accept sure here, a fixes file "
                                   "for split.py --fixes (look at their photos first)")
    accept: float = opt(0.9, "how sure a person-level row must be to go into --accepted")
    accept_fields: str = opt(",".join(CLEAR_FIELDS), "the fields whose rows may go into --accepted (comma-separated: "
                             "gender, swap, age); ages are left to a look by default: votes cannot tell a moved "
                             "age from a person who looks the neighbouring band")
    preview: Optional[Path] = opt(None, "a JPEG sheet: each suspect person's photos in a row with label and "
                                  "held-out vote, surest first")
    preview_rows: int = opt(40, "people on the preview sheet")
    overwrite: bool = opt(False, "replace an existing output file")

    RENAMED = {"--folds": "folds_csv"}  # ClassVar: the old spelling works for one release


def held_out(o: AuditOptions) -> pd.DataFrame:
    """folds.csv's rows with the runs' mean out-of-fold probabilities (photos some run did not score: left out,
    said)."""
    df = read_fold_table(o.folds_csv, (*REQUIRED, "id", "age_label"))
    df.index = df["path"]  # out-of-fold files name photos as folds.csv does
    oofs = []
    for run in o.runs:
        if not run.is_dir():
            raise UserError(f"{run}: no such run folder")
        if task := run_task(run):
            raise UserError(f"{run} is {task_words(task)}; the audit weighs whole classes: give runs of "
                            "all 18 classes")
        oofs.append(read_run_oof(run, resolve=False)[PROB_COLS])
    common = df.index
    for x in oofs:
        common = common.intersection(x.index)
    if not len(common):
        raise UserError(f"{o.folds_csv}: none of its photos is in the runs' out-of-fold files (another folds.csv?)")
    if len(common) < len(df):
        print(f"note: {len(common)} of {len(df)} photos were scored out of fold by every run (unfinished folds?); "
              "the others are not audited", file=sys.stderr)
    probs = sum(x.loc[common].to_numpy() for x in oofs) / len(oofs)
    out = df.loc[common].copy()
    out[PROB_COLS] = probs
    out["stem"] = [Path(p).stem for p in out["path"]]
    return out.reset_index(drop=True)


def runs_old_age(runs: list[Path]) -> int:
    """The --old-age the runs trained with: the age bands their held-out answers are read against."""
    from maskfold.training.options import RUN_DEFAULTS

    ages = {run: {c.get("old_age", RUN_DEFAULTS["old_age"]) for c in fold_configs(run).values()} for run in runs}
    found = set().union(*ages.values())
    if len(found) > 1:
        which = ", ".join(f"{run} {sorted(a)}" for run, a in ages.items())
        raise UserError(f"the runs were trained with different --old-age ({which}): their answers put the ages "
                        "near 60 in different bands; audit runs of one --old-age")
    return found.pop() if found else RUN_DEFAULTS["old_age"]


def score_against(issues: pd.DataFrame, accepted: pd.DataFrame, df: pd.DataFrame, truth: Path) -> dict:
    """How the person-level rows find the injected errors: recall and precision of all of them, of the top n
    (n: as many as were injected) and of the accepted ones, and per kind."""
    noise = read_table(truth, dtype={"id": str})
    person_of = dict(zip(df["id"], df["person"]))
    injected = {(person_of.get(r.id), r.kind) for r in noise.itertuples() if r.id in person_of}
    rows = [(r.person, r.field) for r in issues.itertuples() if r.field != "photo"]

    def rate(found: list) -> dict:
        hits = injected & set(found)
        return {"rows": len(found), "found": len(hits),
                "recall": round(len(hits) / len(injected), 4) if injected else None,
                "precision": round(len(hits) / len(found), 4) if found else None}

    out = {"injected": len(injected), **rate(rows), "top_n": rate(rows[:len(injected)]),
           "accepted": rate([(r.person, r.field) for r in accepted.itertuples()])}
    out["person_rows"] = out.pop("rows")
    for kind in ("gender", "swap", "age"):
        k_inj = {x for x in injected if x[1] == kind}
        k_rows = [x for x in rows if x[1] == kind]
        out[kind] = {"injected": len(k_inj), "rows": len(k_rows), "found": len(k_inj & set(k_rows)),
                     "found_in_top_n": len(k_inj & set(rows[:len(injected)]))}
    return out


def accept_fields(o: AuditOptions) -> list[str]:
    return [f.strip() for f in o.accept_fields.split(",") if f.strip()]


def check(o: AuditOptions) -> None:
    if o.folds_csv is None:
        raise UserError("--folds-csv FOLDS_CSV: the folds.csv the runs were trained from is required")
    if not 0 <= o.accept <= 1:
        raise UserError(f"--accept {o.accept}: a sureness from 0 to 1")
    for f in accept_fields(o):
        choose(f, [k for k in TIERS if k != "photo"], "--accept-fields")


@command(app, AuditOptions, check)
def main(o: AuditOptions):
    """Rank the train labels the out-of-fold answers doubt, per person."""
    for path in (o.out, o.accepted, o.preview):
        if path:
            check_new(path, overwrite=o.overwrite)
    fields = accept_fields(o)
    df = held_out(o)
    issues = audit(df, o.photo_floor, runs_old_age(o.runs), o.folds_csv.parent)
    accepted = issues["field"].isin(fields) & (issues["sure"] >= o.accept)
    issues["apply"] = np.where(accepted, "yes", "")  # split.py --fixes applies the rows marked yes, and no other
    write_csv(issues, o.out)
    sure = issues[accepted]
    if o.accepted:
        write_csv(sure, o.accepted)
        print(f"audit: {len(sure)} person-level rows at least {o.accept} sure in {o.accepted}", file=sys.stderr)
    if o.preview:
        from maskfold.pages.contact_sheet import audit_sheet

        audit_sheet(issues, df, o.folds_csv.parent, o.preview_rows, o.preview)
    counts = issues["field"].value_counts().to_dict()
    print(f"audit: {len(issues)} suspect labels in {df['person'].nunique()} people ("
          + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"); surest first in {o.out}", file=sys.stderr)
    summary = {"out": str(o.out), "photos": len(df), "people": int(df["person"].nunique()), "rows": len(issues),
               "by_field": {k: int(v) for k, v in counts.items()}}
    if o.truth:
        summary["against_truth"] = s = score_against(issues, sure, df, o.truth)
        print(f"audit against {o.truth}: {s['injected']} injected person-level errors; all {s['person_rows']} "
              f"person-level rows find {s['found']} (recall {s['recall']}, precision {s['precision']}); the top "
              f"{s['injected']} find {s['top_n']['found']}; the {s['accepted']['rows']} rows at least {o.accept} sure "
              f"of {o.accept_fields} find {s['accepted']['found']} (recall {s['accepted']['recall']}, precision "
              f"{s['accepted']['precision']})", file=sys.stderr)
    summary["files"] = [str(p) for p in (o.out, o.accepted, o.preview) if p]
    result(summary)


if __name__ == "__main__":
    app()
