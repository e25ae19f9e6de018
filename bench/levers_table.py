"""bench/levers.sh's table: each variant's CV and test macro F1 (per task too) per seed, their mean, the gain over
the baseline of the same seeds, and the minutes per fold.

    python bench/levers_table.py bench/out/levers      # reads scores.jsonl; writes levers.json
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

TASKS = ("mask", "gender", "age")


def fold_count(run: Path) -> int:
    """A run's K folds (fold0..fold<K-1>; its final model, fold_all, is not one of them)."""
    return len([d for d in run.glob("fold*") if d.name[4:].isdigit() and (d / "metrics.json").is_file()])


def rows(out: Path) -> list[dict]:
    found = []
    for line in (out / "scores.jsonl").read_text().splitlines():
        s = json.loads(line)
        m = re.fullmatch(r"(.+)_s(\d+)", s["name"])
        runs = s["run"] if isinstance(s["run"], list) else [s["run"]]  # a composed submission: its runs together
        minutes = [sum(json.loads((Path(r) / f"fold{k}" / "metrics.json").read_text())["minutes"] for r in runs)
                   for k in range(fold_count(Path(runs[0])))]
        found.append({"variant": m.group(1), "seed": int(m.group(2)), "cv": s["cv_f1"], "test": s["test_f1"],
                      "cv_tasks": s["cv_f1_tasks"], "test_tasks": s["test_f1_tasks"],
                      "minutes_per_fold": float(np.mean(minutes))})
    return found


def table(found: list[dict], base: str) -> tuple[list[dict], str]:
    variants = list(dict.fromkeys(r["variant"] for r in found))
    ref = {r["seed"]: r for r in found if r["variant"] == base}
    summary, lines = [], ["| variant | CV per seed | CV mean | vs base | test per seed | test mean | vs base | "
                          "test mask / gender / age | CV mask / gender / age | min/fold |", "|" + "---|" * 10]
    for v in variants:
        rs = sorted((r for r in found if r["variant"] == v), key=lambda r: -r["seed"])
        mean = {k: float(np.mean([r[k] for r in rs])) for k in ("cv", "test", "minutes_per_fold")}
        tasks = {f"{k}_{t}": float(np.mean([r[f"{k}_tasks"][t] for r in rs])) for k in ("cv", "test") for t in TASKS}
        same = [r for r in rs if r["seed"] in ref]
        gain = {k: float(np.mean([r[k] - ref[r["seed"]][k] for r in same])) if same else None for k in ("cv", "test")}
        summary.append({"variant": v, "seeds": [r["seed"] for r in rs], **mean, **tasks,
                        "cv_gain": gain["cv"], "test_gain": gain["test"],
                        "per_seed": [{k: r[k] for k in ("seed", "cv", "test")} for r in rs]})

        def g(x, base_row=(v == base)):
            return "" if x is None or base_row else f"{x:+.3f}"

        per_seed = {k: " / ".join(format(r[k], ".3f") for r in rs) for k in ("cv", "test")}
        by_task = {k: " / ".join(format(tasks[k + "_" + t], ".3f") for t in TASKS) for k in ("cv", "test")}
        lines.append(f"| {v} | {per_seed['cv']} | {mean['cv']:.3f} | {g(gain['cv'])} | {per_seed['test']} | "
                     f"{mean['test']:.3f} | {g(gain['test'])} | {by_task['test']} | {by_task['cv']} | "
                     f"{mean['minutes_per_fold']:.2f} |")
    return summary, "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="bench/levers.sh's OUT folder")
    ap.add_argument("--base", default="base", help="the variant the others are measured against")
    a = ap.parse_args()
    summary, text = table(rows(a.out), a.base)
    (a.out / "levers.json").write_text(json.dumps(summary, indent=1))
    print(text)


if __name__ == "__main__":
    main()
