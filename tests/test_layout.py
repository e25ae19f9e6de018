"""The layout's rules: scripts at the root over one package that never imports them, and files written
before the package existed still load."""
import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd

from conftest import ROOT, invoke

EDITED = {"models", "losses"}  # the two files a competitor edits; everything else at the root is a script


def root_modules() -> set[str]:
    return {p.stem for p in ROOT.glob("*.py")}


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_never_imports_a_script():
    scripts = root_modules()
    offenders = {p.name: sorted(imported_names(p) & scripts) for p in (ROOT / "maskfold").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_the_root_holds_only_scripts_and_the_two_edited_files():
    stems = root_modules()
    assert len(stems) <= 13, sorted(stems)
    for stem in stems - EDITED:
        text = (ROOT / f"{stem}.py").read_text()
        assert "app = make_app()" in text and 'if __name__ == "__main__":' in text, f"{stem}.py is not a script"


def package_imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports, at its top or inside a function."""
    mods = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (ROOT / "maskfold").rglob("*.py")}
    graph = {}
    for name, path in mods.items():
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("maskfold"):
                graph[name] |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                                for a in node.names}
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in mods}
    return graph


def test_the_package_has_no_import_circle():
    graph = package_imports()

    def reaches(start, seen=None):
        seen = set() if seen is None else seen
        for nxt in graph.get(start, ()):
            if nxt not in seen:
                seen.add(nxt)
                reaches(nxt, seen)
        return seen

    circles = sorted(m for m in graph if m in reaches(m))
    assert not circles, circles


def test_the_house_limits_hold():
    """No module of the package over 300 lines, no function over 60, a README a user reads through."""
    long = {}
    for path in (ROOT / "maskfold").rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 300:
            long[str(path.relative_to(ROOT))] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long[f"{path.relative_to(ROOT)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert not long, long
    assert len((ROOT / "README.md").read_text().splitlines()) <= 170


def test_no_root_module_shadows_an_installed_package():
    from importlib.metadata import packages_distributions

    installed = set(packages_distributions())
    assert not (root_modules() | {"maskfold"}) & installed


def test_a_run_written_before_the_package_existed_predicts_and_blends(demo_tree, tmp_path):
    """Run folders, checkpoints, results.csv, probability CSVs and records in the format of the flat layout
    (written here by hand, key by key) load, predict and blend."""
    import torch

    import ensemble
    import models
    import predict
    import report

    run = tmp_path / "runs" / "test_resnet"
    options = {"model": "test_resnet", "pretrained": False, "head": "single", "task_weights": "1,1,1", "loss": "ce",
               "focal_gamma": 2.0, "smoothing": 0.1, "optimizer": "adamw", "lr": 0.001, "weight_decay": 0.0001,
               "scheduler": "cosine", "warmup_epochs": 0, "step_size": 3, "step_gamma": 0.5, "epochs": 1,
               "batch_size": 16, "accum_steps": 1, "clip_grad": 0.0, "img_size": [32, 24], "aug": "light",
               "cutmix": 0.0, "cutmix_mode": "box", "cutmix_alpha": 1.0, "mixup": 0.0, "mixup_alpha": 0.4,
               "ema": 0.0, "old_age": 60, "drop_rate": 0.0, "seed": 42, "patience": 0, "init_from": None,
               "folds_csv": str(tmp_path / "folds.csv")}
    (run).mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(options))
    train_photos = sorted((demo_tree / "train" / "images").rglob("*.jpg"))[:14]
    torch.manual_seed(0)
    for k in (0, 1):
        d = run / f"fold{k}"
        d.mkdir()
        net = models.create("test_resnet", "single", pretrained=False)
        torch.save({"model": "test_resnet", "head": "single", "img_size": [32, 24], "mean": [0.485, 0.456, 0.406],
                    "std": [0.229, 0.224, 0.225], "num_classes": 18, "label_scheme": "mask*6+gender*3+age",
                    "epoch": 1, "metric": {"val_f1": 0.1}, "ema": False, "state_dict": net.state_dict()},
                   d / "best.pt")
        (d / "config.json").write_text(json.dumps({**options, "fold": k, "run": None, "out": str(tmp_path / "runs"),
                                                   "device": "auto", "workers": 0, "amp": None, "amp_dtype": "auto",
                                                   "compile": False, "channels_last": True, "wandb": None,
                                                   "resume": False, "skip_done": False, "overwrite": False,
                                                   "folds_total": 2}))
        (d / "metrics.json").write_text(json.dumps({"run": "test_resnet", "fold": k, "best_epoch": 1, "f1": 0.1,
                                                    "acc": 0.1, "f1_mask": 0.3, "f1_gender": 0.5, "f1_age": 0.3,
                                                    "val_loss": 2.9, "img_per_s": None, "minutes": 0.1,
                                                    "epochs_run": 1, "best_is_ema": False, "gpu_peak_gib": None}))
        mine = train_photos[k * 7:(k + 1) * 7]
        p = np.random.default_rng(k).dirichlet(np.ones(18), len(mine))
        oof = pd.DataFrame(p, columns=[f"p{i}" for i in range(18)])
        oof.insert(0, "fold", k)
        oof.insert(0, "label", np.arange(len(mine)) % 18)
        oof.insert(0, "path", [str(f) for f in mine])
        oof.to_csv(d / "oof.csv", index=False)
    pd.DataFrame([{"run": "test_resnet", "fold": k, "model": "test_resnet", "f1": 0.1} for k in (0, 1)]).to_csv(
        tmp_path / "runs" / "results.csv", index=False)

    probs = tmp_path / "probs.csv"
    r = invoke(predict.app, run, "--images", demo_tree / "eval" / "images", "--info", demo_tree / "eval" / "info.csv",
               "-o", probs, "--device", "cpu")
    assert r.exit_code == 0, r.output
    sub = tmp_path / "submission.csv"
    r = invoke(ensemble.app, probs, "--info", demo_tree / "eval" / "info.csv", "-o", sub)
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(sub)) == len(pd.read_csv(demo_tree / "eval" / "info.csv"))
    assert "CV" in r.output  # the record written by predict.py pairs it with the run's out-of-fold files
    r = invoke(report.app, run, "-o", tmp_path / "report.html")
    assert r.exit_code == 0, r.output
