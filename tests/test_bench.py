"""The benchmark scripts: the GPU proof in the reduced form it has for a machine without one, and every script's
imports."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_script_runs_reduced_and_reports_every_part(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--reduced", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["reduced"] is True and s["failed"] == [] and s["device"] in ("cpu", "cuda")
    for part in ("crop", "train", "predict", "torchrun", "pipeline"):
        assert s[part] is not None, part
    assert set(s["goals"]) == {"crop_img_per_s", "train_vs_model_only", "projected_5fold_10epoch_minutes",
                               "predict_vs_model_only"}
    assert s["torchrun"]["backend"] == ("nccl" if s["device"] == "cuda" else "gloo")
    assert s["pipeline"]["submission_rows"] == 21 and s["train"]["train_img_per_s"] > 0
    assert json.loads((tmp_path / "gpu.json").read_text())["goals"] == s["goals"]


def test_gpu_script_without_a_gpu_says_so_in_one_line(tmp_path):
    import pytest
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script runs in full here")
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error: no CUDA device")


def test_every_bench_script_imports_what_it_uses():
    """A benchmark is run by hand, rarely: a moved function must not wait for that day to show."""
    scripts = sorted(p for p in (ROOT / "bench").glob("*.py") if p.name != "common.py")
    for p in scripts:
        r = subprocess.run([sys.executable, str(p), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0, f"{p.name}: {r.stderr[-500:]}"
