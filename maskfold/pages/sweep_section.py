"""The report's section of a sweep (sweep.py's sweep_<study>.csv and its record): one line per trial, the options'
importance for the CV, and the CV against each option searched."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from maskfold.pages import html_page as html


def sweep_section(path: Path, problems: list[str]) -> str:
    try:
        df = pd.read_csv(path)
        record = json.loads(Path(f"{path}.json").read_text())
    except (OSError, ValueError) as e:
        problems.append(f"--sweep {path}: unreadable ({type(e).__name__}); sweep.py --show writes it again")
        return ""
    options = ["model", *record.get("space", {}).get("space", {})]
    folds = [c for c in df.columns if c.startswith("f1_fold")]
    done = df[df["state"] == "done"]
    stopped = df[df["state"] == "stopped"]
    after = ", ".join(str(int(r[folds].notna().sum())) for _, r in stopped.iterrows()) or "-"
    head = (f"<p>study <b>{html.esc(record.get('study'))}</b> ({html.esc(record.get('storage'))}): {len(df)} trials, "
            f"{len(done)} done, {len(stopped)} stopped by the pruner"
            + (f" (after {html.esc(after)} fold(s) each)" if len(stopped) else "") + "</p>")
    rows = []
    best = done["cv_f1"].max() if len(done) else None
    for _, r in df.sort_values("cv_f1", ascending=False, na_position="last").iterrows():
        mark = " class='best'" if best is not None and r["cv_f1"] == best else ""
        rows.append([f"<td{mark}>{int(r['trial'])}</td>", f"<td>{html.esc(r['state'])}</td>",
                     *(f"<td>{html.esc(fmt(r.get(o)))}</td>" for o in options),
                     *(html.cell(r[f]) if pd.notna(r[f]) else "<td>-</td>" for f in folds),
                     html.cell(r["cv_f1"]) if pd.notna(r["cv_f1"]) else "<td>-</td>",
                     html.cell(r["seconds"], "{:.0f}") if pd.notna(r.get("seconds")) else "<td>-</td>"])
    parts = [head, html.table(["trial", "state", *options, *(f.replace("f1_", "") for f in folds), "CV", "s"], rows)]
    if record.get("importance"):
        imp = record["importance"]
        parts.append("<h3>Importance of each option for the CV (Optuna's fANOVA)</h3>" + html.table(
            ["option", "importance"], [[f"<td>{html.esc(k)}</td>", html.heat(v)] for k, v in imp.items()],
            sortable=False))
    varied = [o for o in options if o in done.columns and done[o].astype(str).nunique() > 1]
    if len(done) >= 2 and varied:
        parts.append(cv_against_options(done, varied))
    if record.get("best_command"):
        parts.append("<p>the best trial, to train it again by hand:</p><pre style='white-space:pre-wrap'>"
                     f"{html.esc(record['best_command'])}</pre>")
    return "".join(parts)


def fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def cv_against_options(done: pd.DataFrame, options: list[str]) -> str:
    """One small plot per option: each finished trial's CV at its value (numbers on their own axis, a log one
    where they span a decade or more; choices side by side)."""
    import numpy as np

    from maskfold.pages import charts

    plt = charts._plt()
    fig, axes = plt.subplots(1, len(options), figsize=(3.2 * len(options), 2.8), squeeze=False)
    for ax, o in zip(axes[0], options):
        x = done[o]
        if pd.api.types.is_numeric_dtype(x):
            ax.scatter(x, done["cv_f1"], s=18)
            if x.min() > 0 and x.max() / x.min() >= 10:
                ax.set_xscale("log")
        else:
            names = sorted(x.astype(str).unique())
            pos = x.astype(str).map({n: i for i, n in enumerate(names)})
            ax.scatter(pos + np.random.default_rng(0).uniform(-0.1, 0.1, len(pos)), done["cv_f1"], s=18)
            ax.set_xticks(range(len(names)), [n[:14] for n in names], rotation=30, fontsize=7)
        ax.set_title(o, fontsize=9)
        ax.set_ylabel("CV macro F1", fontsize=8)
    fig.tight_layout()
    return f"<h3>CV against each option</h3><div class='figs'><img src='{charts.png_data(fig)}' alt='sweep'></div>"
