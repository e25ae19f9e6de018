"""One HTML page that compares runs and shows the photos behind their errors.

    python report.py runs -o work/report.html                      # every run in runs/
    python report.py runs/resnet50 runs/efficientnet_b2 -o report.html --crops work/crops/train

The page is self-contained (pictures inlined): it opens on a laptop after scp. It has the
runs' table (sortable; each run labelled by the options that differ between the runs),
every fold, curves, per-class F1, confusion matrices, the out-of-fold photos each run gets
most wrong, the people whose labels the out-of-fold predictions doubt, and crop.py's
status counts and preview. A run or file that cannot be read is named in one line and left
out; the rest is still written (exit code 1).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from maskfold.cli import UserError, arg, command, make_app, opt, result
from maskfold.files import check_new, write_text
from maskfold.pages import html_page as html
from maskfold.pages.report_sections import (
    audit_section,
    blend_section,
    confusions,
    crop_section,
    curves,
    folds_table,
    label_runs,
    load_run,
    per_class,
    runs_table,
    suspect_people_section,
    worst_photos,
)
from maskfold.runs import fold_dirs

app = make_app()


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    runs: Optional[list[Path]] = arg("run folders, or folders of runs (each run inside them); none with --sweep "
                                     "alone", default=None)
    out: Path = opt(Path("report.html"), "HTML page to write", "--out", "-o")
    crops: Optional[list[Path]] = opt(None, "crop.py output folder (repeat): its status counts and preview sheet")
    worst: int = opt(24, "out-of-fold photos per run to show, those it gets most wrong first")
    suspect_people: int = opt(8, "people per run whose labels its out-of-fold predictions doubt most")
    blend: Optional[Path] = opt(None, "ensemble.py's record of a submission (<submission>.csv.json): its inputs and "
                                "weights, the CV of each step, per-class F1 and the answers each step changed")
    audit: Optional[Path] = opt(None, "audit.py's label_issues.csv: its suspect people's photos, surest first, "
                                "with label and held-out vote")
    sweep: Optional[list[Path]] = opt(None, "sweep.py's table of a study (<out>/sweep_<study>.csv; repeat): its "
                                      "trials, the options' importance and the CV against each option")
    title: str = opt("Runs compared", "the page's title")
    overwrite: bool = opt(False, "replace an existing page")

    RENAMED = {"--suspects": "suspect_people"}  # ClassVar: the old spelling works for one release


def run_paths(paths: list[Path], problems: list[str]) -> list[Path]:
    """Run folders: each path that holds fold folders, else the run folders inside it."""
    out = []
    for p in paths:
        if p.is_dir() and fold_dirs(p):
            out.append(p)
        elif p.is_dir() and (inner := [d for d in sorted(p.iterdir()) if d.is_dir() and fold_dirs(d)]):
            out += inner
        else:
            problems.append(f"{p}: not a run folder (no fold*/ inside) nor a folder of runs")
    return out


@command(app, ReportOptions)
def main(o: ReportOptions):
    """One self-contained HTML page comparing runs, with the photos behind their errors."""
    t0 = time.time()
    check_new(o.out, overwrite=o.overwrite)
    problems: list[str] = []
    runs = [r for r in (load_run(p, problems) for p in run_paths(o.runs or [], problems)) if r is not None]
    sections = []
    if runs:
        label_runs(runs)
        with_oof = [r for r in runs if r.oof is not None]
        whole = [r for r in with_oof if r.task is None]  # a task's model (train.py --task) has no 18-class errors
        sections += ["<h2>Runs</h2>", runs_table(runs), "<h2>Folds</h2>", folds_table(runs), "<h2>Curves</h2>",
                     curves(runs)]
        if with_oof:
            sections += ["<h2>Confusion matrices</h2>", confusions(runs)]
        if whole:
            sections += ["<h2>Per-class F1 (out of fold)</h2>", per_class(whole),
                         "<h2>Photos each run gets most wrong</h2>",
                         *(worst_photos(r, o.worst) for r in whole),
                         "<h2>People whose labels the out-of-fold predictions doubt</h2>",
                         *(suspect_people_section(r, o.suspect_people) for r in whole)]
    if o.audit and any(r.oof is not None and r.task is None for r in runs):
        sections += ["<h2>Labels the audit doubts</h2>",
                     audit_section(o.audit, [r for r in runs if r.task is None], o.suspect_people * 3, problems)]
    elif o.audit:
        problems.append(f"{o.audit}: no run with out-of-fold files to show its photos")
    if o.blend:  # the headline: what was submitted, first
        sections[:0] = ["<h2>The submission</h2>", blend_section(o.blend, problems)]
    for path in o.sweep or []:
        from maskfold.pages.sweep_section import sweep_section

        sections += [f"<h2>Sweep {html.esc(path.stem.removeprefix('sweep_'))}</h2>", sweep_section(path, problems)]
    crops = [crop_section(f, problems) for f in o.crops or []]
    if any(crops):
        sections += ["<h2>Crops</h2>", *crops]
    if not sections:
        raise UserError("nothing to report: " + "; ".join(problems))
    warn = "".join(f"<div class='warn'>{html.esc(p)}</div>" for p in problems)
    models = sorted({str(r.config.get("model")) for r in runs})
    subtitle = (f"{len(runs)} run(s)" + (f" of {models[0]}" if len(models) == 1 else "")
                + f", written {time.strftime('%Y-%m-%d %H:%M')}")
    write_text(o.out, html.page(o.title, subtitle, [warn, *sections]))
    size = o.out.stat().st_size
    result({"out": str(o.out), "runs": [str(r.path) for r in runs], "problems": len(problems),
            "kib": round(size / 1024, 1), "seconds": round(time.time() - t0, 1), "files": [str(o.out)]})
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    app()
