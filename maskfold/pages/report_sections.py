"""The report's sections, each an HTML string: the runs and their folds, curves, per-class F1, confusion
matrices, the photos a run gets most wrong, the people it doubts, the submission, the audit, the crops."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from maskfold.blending.oof import read_run_oof
from maskfold.cli import UserError
from maskfold.files import read_table
from maskfold.labelling.label_audit import suspect_people
from maskfold.labels import NUM_CLASSES, PROB_COLS, TASKS, class_name, per_class_f1, task_scores
from maskfold.pages import html_page as html
from maskfold.runs import fold_configs, read_json, run_folds, run_task
from maskfold.training.options import RUN_DEFAULTS, RUN_KEYS


@dataclass
class Run:
    path: Path
    config: dict
    metrics: pd.DataFrame  # one row per finished fold
    histories: dict[int, pd.DataFrame]
    of: Optional[int]
    oof: Optional[pd.DataFrame] = None  # path (resolved), label, fold, p0..p17
    label: str = ""
    task: Optional[str] = None  # the one task its models learn (train.py --task), None for all 18 classes


def load_run(path: Path, problems: list[str]) -> Run | None:
    try:
        folds = run_folds(path)
    except UserError as e:
        problems.append(str(e))
        return None
    configs = fold_configs(path)
    ks = sorted(folds.finished)
    metrics = pd.DataFrame([read_json(path / f"fold{k}" / "metrics.json") for k in ks])
    histories = {k: read_table(path / f"fold{k}" / "history.csv") for k in ks if (path / f"fold{k}/history.csv")
                 .is_file()}
    run = Run(path, configs.get(ks[0], {}), metrics, histories, folds.expected, task=run_task(path))
    try:
        run.oof = read_run_oof(path).reset_index()
    except UserError as e:
        problems.append(f"{e}; {path.name}'s photos and per-class scores are left out")
    return run


def label_runs(runs: list[Run]) -> None:
    """Each run's label: the options that differ between the runs on the page (its name if none do); of the
    folds.csv, its file name (another split, or the same folds with fixed labels: split.py --fixes); a run trained
    with pseudo-labels (train.py --extra) says so, with the file and how many photos its first fold added."""
    def get(r: Run, k: str):
        return r.config.get(k, RUN_DEFAULTS.get(k))  # an option newer than the run: its default

    keys = [k for k in RUN_KEYS if k != "extra" and len({json.dumps(get(r, k)) for r in runs}) > 1]
    for r in runs:
        parts = [f"{k}={'x'.join(map(str, v)) if isinstance(v, list) else Path(v).name if k == 'folds_csv' else v}"
                 for k in keys if (v := get(r, k)) is not None]
        if r.config.get("extra"):  # a second round: always said, whatever the other runs on the page are
            parts.append(f"pseudo-labels {Path(r.config['extra']).name}"
                         + (f" (fold {r.config.get('fold', 0)}: +{r.config['extra_rows']} photos)"
                            if r.config.get("extra_rows") is not None else ""))
        r.label = ", ".join(parts) or r.path.name


def runs_table(runs: list[Run]) -> str:
    rows = []
    # a task's model: its task's CV F1 (the label says which task)
    cvs = [task_scores(r.oof["label"], r.oof[PROB_COLS].to_numpy(), r.task)["f1"] if r.oof is not None else None
           for r in runs]
    # the best of the 18-class runs (a task run's CV is its task's, not comparable), best CV first, task runs after
    best = max((cv for cv, r in zip(cvs, runs) if cv is not None and r.task is None), default=None)
    order = sorted(range(len(runs)), key=lambda i: (runs[i].task is not None, runs[i].task or "",
                                                    1 if cvs[i] is None else -cvs[i]))
    for r, cv in ((runs[i], cvs[i]) for i in order):
        m = r.metrics
        spread = [html.cell(f"{m['f1'].mean():.3f}±{m['f1'].std(ddof=0):.3f}")] + \
            [html.cell(pd.to_numeric(m[f"f1_{t}"], errors="coerce").mean(), "{:.3f}") for t in TASKS]
        rows.append([html.cell(r.path.name, cls="l"), html.cell(r.label, cls="wrap")]
                    + [html.cell(f"{len(m)}/{r.of or '?'}"), html.cell(cv, cls="best" if cv == best else "")]
                    + spread + [html.cell(m["best_epoch"].median(), "{:.0f}"),
                                html.cell(m["img_per_s"].mean(), "{:.0f}"), html.cell(m["minutes"].sum(), "{:.1f}")])
    return html.table(["run", "label (options that differ)", "folds", "CV F1 (a task run: its task's)", "fold F1 ± sd",
                       "mask", "gender",
                       "age", "best epoch", "img/s", "min"], rows, table_id="runs")


def folds_table(runs: list[Run]) -> str:
    rows = [[html.cell(r.path.name), html.cell(int(f["fold"]), "{}"), html.cell(f["f1"])]
            + [html.cell(f[f"f1_{t}"]) for t in TASKS] + [html.cell(int(f["best_epoch"]), "{}"),
                                                           html.cell(f.get("epochs_run"), "{:.0f}"),
                                                           html.cell(f["minutes"], "{:.2f}")]
            for r in runs for _, f in r.metrics.iterrows()]
    return html.table(["run", "fold", "macro F1", "mask", "gender", "age", "best epoch", "epochs", "minutes"], rows)


def curves(runs: list[Run]) -> str:
    from maskfold.pages import charts

    plt = charts._plt()
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    for r in runs:
        if not r.histories:
            continue
        h = pd.concat(r.histories.values()).groupby("epoch")[["val_f1", "val_loss", "train_loss"]].mean()
        line = ax[0].plot(h.index, h["val_f1"], label=r.label[:40])[0]
        ax[1].plot(h.index, h["val_loss"], color=line.get_color())
        ax[1].plot(h.index, h["train_loss"], color=line.get_color(), linestyle=":")
    ax[0].set_title("val macro F1 (mean over folds)")
    ax[1].set_title("loss: val (solid), train (dotted)")
    for a in ax:
        a.set_xlabel("epoch")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    return f"<div class='figs'><img src='{charts.png_data(fig)}' alt='curves'></div>"


def per_class(runs: list[Run]) -> str:
    have = [r for r in runs if r.oof is not None]
    f1 = {r.path.name: per_class_f1(r.oof["label"], r.oof[PROB_COLS].to_numpy().argmax(1)) for r in have}
    counts = {c: int(sum((r.oof["label"] == c).sum() for r in have[:1])) for c in range(NUM_CLASSES)}
    rows = [[html.cell(class_name(c)), html.cell(counts[c], "{}")] + [html.heat(f1[r.path.name][c]) for r in have]
            for c in range(NUM_CLASSES)]
    return html.table(["class", "photos"] + [r.path.name for r in have], rows)


def confusions(runs: list[Run]) -> str:
    from maskfold.pages import charts

    imgs = []
    for r in (r for r in runs if r.oof is not None):
        fig = charts.confusion(r.oof["label"].to_numpy(), r.oof[PROB_COLS].to_numpy().argmax(1), title=r.path.name,
                               task=r.task)
        imgs.append(f"<img src='{charts.png_data(fig, dpi=60)}' alt='confusion {html.esc(r.path.name)}'>")
    return f"<div class='figs'>{''.join(imgs)}</div>"


def worst_photos(r: Run, n: int) -> str:
    p = r.oof[PROB_COLS].to_numpy()
    y = r.oof["label"].to_numpy()
    p_true = p[np.arange(len(y)), y]
    tiles = []
    for i in np.argsort(p_true)[:n]:
        pred = int(p[i].argmax())
        tiles.append(html.thumb(html.thumb_uri(Path(r.oof["path"].iloc[i])),
                                 [f"true {class_name(y[i])}", f"pred {class_name(pred)}",
                                  f"p(true) {p_true[i]:.2f}, fold {int(r.oof['fold'].iloc[i])}"], bad=pred != y[i]))
    return f"<h3>{html.esc(r.path.name)}</h3><div class='thumbs'>{''.join(tiles)}</div>"


def suspect_people_section(r: Run, n: int) -> str:
    p = r.oof[PROB_COLS].to_numpy()
    df = r.oof.assign(person=[Path(x).parent.name for x in r.oof["path"]],
                      p_label=p[np.arange(len(p)), r.oof["label"].to_numpy()], pred=p.argmax(1))
    worst = suspect_people(r.oof["path"], r.oof["label"].to_numpy(), p, n)["person"]
    rows = []
    for person in worst:
        ph = df[df["person"] == person].head(14)
        who = (f"<div class='who'><b>{html.esc(person)}</b><br>mean p(label) {ph['p_label'].mean():.2f}<br>"
               f"{int((ph['pred'] != ph['label']).sum())} of {len(ph)} wrong</div>")
        tiles = [html.thumb(html.thumb_uri(Path(x.path)), [f"label {class_name(x.label)}",
                                                             f"pred {class_name(x.pred)}"], bad=x.pred != x.label)
                 for x in ph.itertuples()]
        rows.append(f"<div class='row'>{who}{''.join(tiles)}</div>")
    return f"<h3>{html.esc(r.path.name)}</h3>{''.join(rows)}"


def blend_section(path: Path, problems: list[str]) -> str:
    """What ensemble.py submitted: its inputs and weights, the out-of-fold CV after each step, the per-class
    F1 of the submitted recipe out of fold, and how many eval answers each step changed."""
    try:
        rec = read_json(path)
        if rec.get("kind") != "submission":
            raise UserError(f"{path}: not ensemble.py's record of a submission (<submission>.csv.json)")
    except UserError as e:
        problems.append(str(e))
        return ""
    r = rec.get("recipe", {})
    files = rec.get("input_files", [])
    weights = r.get("weights") or [None] * len(files)
    cv = rec.get("cv_inputs") or [None] * len(files)
    runs = rec.get("input_runs") or [""] * len(files)
    tasks = rec.get("input_tasks") or [None] * len(files)  # a task's model: its CV is its task's
    inputs = [[html.cell(Path(f).name, cls="l"), html.cell(str(run) + (f" ({t} only)" if t else ""), cls="wrap"),
               html.cell(w, "{:.3f}"), html.cell(c)] for f, run, w, c, t in zip(files, runs, weights, cv, tasks)]
    out = [f"<div class='sub'>{html.esc(path)}: {rec.get('images', '?')} eval photos, mean "
           f"{html.esc(r.get('mean', '?'))}"
           + "".join(f"; {t} from {html.esc(json.dumps(r[f'{t}_from']))}" for t in TASKS if f"{t}_from" in r)
           + "</div>", html.table(["input", "runs", "weight", "CV macro F1 (a task's model: its task's)"], inputs,
                                  sortable=False)]
    fw = rec.get("fit_weights")
    if fw:
        out.append(f"<div class='sub'>fitted weights ({html.esc(fw['how'])}): held-out CV {fw['held_out_f1']:.4f} "
                   f"against {fw['equal_f1']:.4f} with equal weights"
                   + (f" and {fw['best_input_f1']:.4f} for the best input" if fw.get("best_input_f1") is not None
                      else "")
                   + f"; {'applied' if fw['applied'] else 'not applied'}</div>")
    changed = rec.get("changed", {})
    steps = [[html.cell(st["step"], cls="l"), html.cell(st["f1"]), html.cell("yes" if st["applied"] else "no"),
              html.cell(changed.get({"bias (held out)": "bias", "per person": "people"}.get(st["step"], ""), ""),
                        "{}")] for st in rec.get("cv_steps", [])]
    if steps:
        out.append(html.table(["step", "CV macro F1", "applied", "eval answers it changed"], steps, sortable=False))
    if rec.get("test_f1") is not None:
        out.append(f"<div class='sub'>test macro F1 (the demo's hidden truth): {rec['test_f1']:.4f}</div>")
    per = rec.get("cv_per_class")
    if per:  # 6 rows of mask x gender, 3 columns of age: the 18 classes at a glance
        grid = [[html.cell(f"{mask} / {gender}", cls="l")] + [html.heat(per[m * 6 + g * 3 + a]) for a in range(3)]
                for m, mask in enumerate(("worn", "wrong", "none")) for g, gender in enumerate(("male", "female"))]
        out.append("<div class='sub'>out-of-fold F1 of each class, as submitted (bias and per-person rule where "
                   "applied)</div>" + html.table(["mask / gender", "<30", "30-59", "60+"], grid, sortable=False))
    return "".join(out)


def audit_section(path: Path, runs: list[Run], n: int, problems: list[str]) -> str:
    """The audit's person-level rows, surest first: each person's photos with label and the held-out vote of the
    runs on the page (mean over those that scored the photo)."""
    try:
        issues = read_table(path, dtype=str, keep_default_na=False)
        if not {"person", "field", "label", "suggested", "sure"} <= set(issues.columns):
            raise UserError(f"{path}: not audit.py's label_issues.csv (its columns differ)")
    except UserError as e:
        problems.append(str(e))
        return ""
    oof = pd.concat([r.oof for r in runs if r.oof is not None])
    oof = oof.groupby("path", sort=False).agg({**{c: "mean" for c in PROB_COLS}, "label": "first"}).reset_index()
    oof["person"] = [Path(x).parent.name for x in oof["path"]]
    rows = []
    asks = issues[issues["field"] != "photo"]
    for person in asks["person"].drop_duplicates().head(n):
        photos = oof[oof["person"] == person]
        said = "<br>".join(f"{html.esc(a.field)}: {html.esc(a.label)} &rarr; <b>{html.esc(a.suggested)}</b> "
                           f"(sure {float(a.sure):.2f})" for a in asks[asks["person"] == person].itertuples())
        tiles = []
        for x in photos.itertuples():
            p = photos.loc[x.Index, PROB_COLS].to_numpy(float)
            vote = int(p.argmax())
            tiles.append(html.thumb(html.thumb_uri(Path(x.path)), [f"label {class_name(x.label)}",
                                                                     f"vote {class_name(vote)} {p[vote]:.2f}"],
                                    bad=vote != x.label))
        who = f"<div class='who'><b>{html.esc(person)}</b><br>{said}</div>"
        rows.append(f"<div class='row'>{who}{''.join(tiles)}</div>")
    head = (f"<div class='sub'>{html.esc(path)}: {len(asks)} person-level rows of {len(issues)}; the first "
            f"{min(n, asks['person'].nunique())} people</div>")
    return head + "".join(rows)


def crop_section(folder: Path, problems: list[str]) -> str:
    report = folder / "crop_report.csv"
    if not report.is_file():
        problems.append(f"{folder}: no crop_report.csv (not an output folder of crop.py)")
        return ""
    df = read_table(report)
    counts = df["status"].value_counts()
    row = [html.cell(str(folder)), html.cell(len(df), "{}")] + [html.cell(int(counts.get(s, 0)), "{}")
                                                                   for s in ("face", "person", "prior", "unreadable")]
    summary = folder / "crop_summary.json"
    rate = read_json(summary).get("img_per_s") if summary.is_file() else None
    uri = html.jpeg_uri(folder / "preview.jpg") if (folder / "preview.jpg").is_file() else None
    return (html.table(["crops", "photos", "face", "person", "prior", "unreadable"], [row], sortable=False)
            + (f"<div class='sub'>{rate} photos/s</div>" if rate else "")
            + (f"<details><summary>preview sheet of {html.esc(folder)}</summary><div class='figs'>"
               f"<img src='{uri}' alt='crop preview'></div></details>" if uri else ""))
