"""report.py: the page's content, its faults, and the page in a real browser."""
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from maskfold.labels import PROB_COLS

import report
from conftest import invoke


@pytest.fixture(scope="module")
def two_runs(tiny_run, tmp_path_factory):
    """The tiny run, and a copy of it labelled with another learning rate (as a bash loop over --lr makes)."""
    _, run = tiny_run
    root = tmp_path_factory.mktemp("runs")
    a, b = root / "test_resnet", root / "lr0.01"
    shutil.copytree(run, a)
    shutil.copytree(run, b)
    for cfg in b.glob("fold*/config.json"):
        cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {"lr": 0.01}))
    oof = pd.read_csv(b / "fold0" / "oof.csv")
    oof[PROB_COLS] = oof[PROB_COLS].to_numpy()[:, ::-1]  # another run: other predictions
    oof.to_csv(b / "fold0" / "oof.csv", index=False)
    return root


def test_report_compares_runs_and_shows_their_photos(two_runs, tmp_path):
    out = tmp_path / "report.html"
    r = invoke(report.app, two_runs, "-o", out)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["files"] == [str(out)] and len(s["runs"]) == 2 and s["problems"] == 0
    page = out.read_text()
    for section in ("Runs", "Folds", "Curves", "Per-class F1", "Confusion matrices", "most wrong", "doubt"):
        assert f"<h2>{section}" in page or section in page, section
    assert "lr=0.01" in page and "lr=0.003" in page  # each run labelled by the option that differs
    assert len(re.findall(r"<div class='thumb( bad)?'>", page)) >= 2 * 24
    assert "src='file:" not in page and "data:image/jpeg" in page  # pictures inlined: the page travels alone


def test_report_worst_suspects_and_title_options(two_runs, tmp_path):
    out = tmp_path / "report.html"
    r = invoke(report.app, two_runs, "-o", out, "--worst", "3", "--suspect-people", "1", "--title", "loop over lr")
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "<title>loop over lr</title>" in page
    assert page.count("<div class='row'>") == 2  # one suspect person per run
    worst = page.split("most wrong")[1].split("<h2>")[0]
    assert len(re.findall(r"<div class='thumb( bad)?'>", worst)) == 2 * 3


def test_report_names_what_it_cannot_read_and_writes_the_rest(two_runs, tmp_path):
    broken = tmp_path / "runs"
    shutil.copytree(two_runs, broken)
    empty = broken / "unfinished"
    (empty / "fold0").mkdir(parents=True)
    (empty / "fold0" / "last.pt").write_bytes(b"")
    oof = pd.read_csv(broken / "lr0.01" / "fold1" / "oof.csv").drop(columns=["label"])
    oof.to_csv(broken / "lr0.01" / "fold1" / "oof.csv", index=False)
    out = tmp_path / "report.html"
    r = invoke(report.app, broken, "-o", out, "--crops", tmp_path / "no_crops")
    assert r.exit_code == 1, r.output
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 3
    assert any("unfinished: no finished fold" in w for w in warnings)
    assert any("lr0.01/fold1/oof.csv: not an oof.csv" in w for w in warnings)
    assert any("no_crops: no crop_report.csv" in w for w in warnings)
    page = out.read_text()
    assert "test_resnet" in page and "<h2>Photos each run gets most wrong" in page and page.count("class='warn'") == 3


def browser():
    chromium, driver = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not (chromium.is_file() and driver.is_file()):
        pytest.skip("no browser: Debian's chromium and chromium-driver are not installed (apt-get install -y "
                    "chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--window-size=1366,1800"):  # a laptop's width
        opts.add_argument(a)
    opts.binary_location = str(chromium)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(driver)), options=opts)


@pytest.fixture(scope="module")
def blend_record(tiny_run, demo_tree, tmp_path_factory):
    """ensemble.py's record of a submission made from the tiny run, with the bias step."""
    import ensemble
    import predict

    _, run = tiny_run
    tmp = tmp_path_factory.mktemp("blend")
    info = demo_tree / "eval" / "info.csv"
    assert invoke(predict.app, run, "--images", demo_tree / "eval" / "images", "--info", info, "-o", tmp / "p.csv",
                  "--device", "cpu").exit_code == 0
    r = invoke(ensemble.app, tmp / "p.csv", tmp / "p.csv", "--info", info, "-o", tmp / "sub.csv", "--bias",
               "--weights", "2,1", "--truth", demo_tree / "eval" / "truth.csv")
    assert r.exit_code == 0, r.output
    return tmp / "sub.csv.json"


def test_report_shows_the_submission(two_runs, blend_record, tmp_path):
    rec = json.loads(blend_record.read_text())
    out = tmp_path / "r.html"
    r = invoke(report.app, two_runs, "-o", out, "--blend", blend_record)
    assert r.exit_code == 0, r.output
    page = out.read_text()
    section = page[page.index("The submission"):page.index("<h2>Runs")]  # first on the page
    assert "0.667" in section and "0.333" in section  # the weights 2,1
    assert f"{rec['cv_steps'][0]['f1']:.4f}" in section and "bias (held out)" in section
    assert f"{rec['test_f1']:.4f}" in section and section.count("</tr>") == (1 + 2) + (1 + 2) + (1 + 6)
    bad = tmp_path / "x.json"
    bad.write_text('{"kind": "probabilities"}')
    r = invoke(report.app, two_runs, "-o", tmp_path / "r2.html", "--blend", bad)
    assert r.exit_code == 1 and "not ensemble.py's record" in r.output


def test_report_in_a_real_browser(two_runs, blend_record, tmp_path):
    from selenium.webdriver.common.by import By

    out = tmp_path / "report.html"
    assert invoke(report.app, two_runs, "-o", out, "--blend", blend_record).exit_code == 0
    d = browser()
    try:
        d.get(out.as_uri())
        assert d.execute_script("return document.body.dataset.ready") == "1"  # the page's script ran to its end
        errors = [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        rows = d.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
        assert len(rows) == 2
        loaded = d.execute_script("return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
        assert loaded == len(d.find_elements(By.TAG_NAME, "img")) > 50  # every inlined picture decodes
        header = next(th for th in d.find_elements(By.CSS_SELECTOR, "#runs th") if th.text.startswith("CV F1"))
        column = [th.text for th in d.find_elements(By.CSS_SELECTOR, "#runs th")].index(header.text)

        def values():
            return [float(r.find_elements(By.TAG_NAME, "td")[column].get_attribute("data-v"))
                    for r in d.find_elements(By.CSS_SELECTOR, "#runs tbody tr")]

        assert values() == sorted(values(), reverse=True)  # best CV first as written
        wide = d.execute_script("return [document.documentElement.scrollWidth, window.innerWidth, "
                                "document.getElementById('runs').scrollWidth, "
                                "document.getElementById('runs').parentElement.clientWidth]")
        assert wide[0] <= wide[1] and wide[2] <= wide[3], wide  # no scrolling sideways on a laptop
        header.click()
        assert values() == sorted(values())
        header.click()
        assert values() == sorted(values(), reverse=True)
        assert d.save_screenshot(str(tmp_path / "report.png")) and (tmp_path / "report.png").stat().st_size > 20_000
    finally:
        d.quit()
