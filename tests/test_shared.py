import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskfold import files, images, labels, probs
from maskfold.cli import UserError


@pytest.mark.parametrize("stem,gender,age,expected", [
    ("mask1", "male", 25, 0), ("mask5", "female", 45, 4), ("incorrect_mask", "male", 60, 8),
    ("incorrect_mask", "female", 29, 9), ("normal", "male", 30, 13), ("normal", "female", 59, 16),
    ("normal", "female", 60, 17), ("mask3", "male", 61, 2),
])
def test_label_code_hand_examples(stem, gender, age, expected):
    code = labels.encode(labels.mask_label(stem), labels.gender_label(gender), labels.age_label(age))
    assert code == expected
    assert tuple(int(x) for x in labels.decode(code)) == (labels.mask_label(stem), labels.gender_label(gender),
                                                        labels.age_label(age))


def test_age_band_boundaries_and_old_age_threshold():
    ages = np.array([0, 29, 30, 57, 58, 59, 60, 90])
    assert labels.age_label(ages).tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    assert labels.age_label(ages, old_age=58).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]


def test_decode_inverts_encode_for_every_class():
    m, g, a = labels.decode(np.arange(18))
    assert labels.encode(m, g, a).tolist() == list(range(18))
    assert set(zip(m.tolist(), g.tolist(), a.tolist())) == {(i, j, k) for i in range(3) for j in range(2)
                                                            for k in range(3)}


def test_unknown_photo_name_is_an_error():
    with pytest.raises(ValueError):
        labels.mask_label("selfie")


def test_marginals_and_joint_round_trip():
    rng = np.random.default_rng(0)
    mask, gender, age = (rng.dirichlet(np.ones(n), 4) for n in (3, 2, 3))
    j = labels.joint(mask, gender, age)
    assert np.allclose(j.sum(1), 1)
    # class 13 = normal (2), male (0), 30-59 (1)
    assert np.allclose(j[:, 13], mask[:, 2] * gender[:, 0] * age[:, 1])
    back = labels.marginals(j)
    assert np.allclose(back["mask"], mask) and np.allclose(back["gender"], gender) and np.allclose(back["age"], age)


def _save(im: Image.Image, path, **kw):
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "L", "I;16", "CMYK", "1"])
def test_read_image_returns_rgb_uint8_for_every_mode(tmp_path, mode):
    rgb = Image.new("RGB", (6, 4), (200, 100, 50))
    if mode == "I;16":
        im = Image.fromarray(np.full((4, 6), 40000, dtype=np.uint16))
    else:
        im = rgb.convert(mode)
    ext = ".jpg" if mode in ("CMYK", "L", "RGB") else ".tiff" if mode == "I;16" else ".png"
    path = _save(im, tmp_path / f"img{ext}")
    out = images.read_image(path)
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    if mode in ("RGB", "RGBA", "P"):
        assert np.abs(out[1, 1].astype(int) - [200, 100, 50]).max() <= 12
    if mode == "I;16":
        assert out[0, 0].tolist() == [156, 156, 156]  # 40000 / 257: scaled to 8 bits, not clipped or wrapped


def test_read_image_composites_transparency_on_white(tmp_path):
    im = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    out = images.read_image(_save(im, tmp_path / "a.png"))
    assert out[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("content", [b"", b"this is text, not a picture\n"])
def test_read_image_names_unreadable_file(tmp_path, content):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(UserError, match="bad.jpg"):
        images.read_image(p)


def test_read_image_refuses_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UserError, match="cut.jpg"):
        images.read_image(p)


def test_find_by_stem_ignores_extension_and_dot_files(tmp_path):
    (tmp_path / "._mask1.jpg").write_bytes(b"junk")
    (tmp_path / "mask1.jpeg").write_bytes(b"x")
    (tmp_path / "normal.png").write_bytes(b"x")
    assert images.find_by_stem(tmp_path, "mask1").name == "mask1.jpeg"
    assert images.find_by_stem(tmp_path, "normal").name == "normal.png"
    assert images.find_by_stem(tmp_path, "mask2") is None
    (tmp_path / "mask1.png").write_bytes(b"x")
    with pytest.raises(UserError, match="more than one"):
        images.find_by_stem(tmp_path, "mask1")


def test_match_ids_prefers_the_same_name_then_the_same_stem(tmp_path):
    for name in ("a.jpg", "a.png", "b.png", "p1/mask1.jpeg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = ["a.jpg", "a.png", "b.png", "p1/mask1.jpeg"]
    assert images.match_ids(tmp_path, ["a.png", "b.jpg", "p1/mask1.jpg"], found, "info.csv") == \
        ["a.png", "b.png", "p1/mask1.jpeg"]
    with pytest.raises(UserError, match=r"more than one file for a.bmp \(a.jpg, a.png\)"):
        images.match_ids(tmp_path, ["a.bmp"], found, "info.csv")
    with pytest.raises(UserError, match="2 image.s. of info.csv missing, first c.jpg, mask1.jpg"):
        images.match_ids(tmp_path, ["c.jpg", "mask1.jpg", "b.jpg"], found, "info.csv")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def _probs_csv(tmp_path, rows, name="p.csv"):
    df = pd.DataFrame(rows, columns=["ImageID"] + labels.PROB_COLS)
    df.to_csv(tmp_path / name, index=False)
    return tmp_path / name


def test_read_probs_accepts_valid_and_rejects_bad(tmp_path):
    ok = [["a.jpg"] + [1 / 18] * 18]
    assert len(probs.read_probs(_probs_csv(tmp_path, ok))) == 1
    with pytest.raises(UserError, match="row 2"):
        probs.read_probs(_probs_csv(tmp_path, [["a.jpg", float("nan")] + [1 / 17] * 17]))
    with pytest.raises(UserError, match="not a probability"):
        probs.read_probs(_probs_csv(tmp_path, [["a.jpg"] + [0.5] * 18]))
    pd.DataFrame({"ImageID": ["a"], "p0": [1.0]}).to_csv(tmp_path / "few.csv", index=False)
    with pytest.raises(UserError, match="missing probability columns"):
        probs.read_probs(tmp_path / "few.csv")


def test_fast_macro_f1_equals_sklearn():
    from sklearn.metrics import f1_score

    from maskfold.labels import macro_f1
    rng = np.random.default_rng(0)
    for n, k in ((50, 18), (400, 18), (30, 5), (7, 18)):
        y, p = rng.integers(0, k, n), rng.integers(0, 18, n)  # some classes only predicted, some never
        assert abs(macro_f1(y, p) - f1_score(y, p, average="macro")) < 1e-12
    assert macro_f1(np.array([3, 3]), np.array([3, 3])) == 1.0


def test_read_image_applies_exif_orientation(tmp_path):
    """A phone photo stored landscape with 'rotate 90' in EXIF is read upright, as every viewer shows it."""
    from maskfold.images import load_cache

    upright = np.zeros((40, 30, 3), np.uint8)
    upright[:10] = (255, 0, 0)  # red on top
    stored = np.rot90(upright, 1)  # what the camera wrote: turned a quarter to the left, red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    path = tmp_path / "phone.jpg"
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif.tobytes())
    out = images.read_image(path)
    assert out.shape == (40, 30, 3)
    assert out[2, 15, 0] > 200 and out[35, 15, 0] < 60  # red on top again
    assert load_cache([path], (40, 30))[0, 2, 15, 0] > 200  # train and predict read through the same function
    assert images.read_image(path, reduce=2).shape[:2] in ((40, 30), (20, 15))  # and the quick looks too


def _append_many(path, worker, rows):
    from maskfold import files
    for i in range(rows):
        files.append_csv(pd.DataFrame([{"run": f"w{worker}", "fold": i, "f1": 0.5 + i / 1000}]), path)


def test_append_csv_is_safe_for_processes_finishing_together(tmp_path):
    """Several folds ending at the same moment (one tmux window per GPU): one header, every row whole."""
    import multiprocessing as mp

    path = tmp_path / "results.csv"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w, 40)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_text().splitlines()
    assert lines[0] == "run,fold,f1" and lines.count("run,fold,f1") == 1
    df = pd.read_csv(path)
    assert len(df) == 240 and df.groupby("run").size().tolist() == [40] * 6
    assert not [p for p in tmp_path.iterdir() if p.name != "results.csv"]  # no lock or temp files left


def test_append_csv_with_new_columns_keeps_every_row(tmp_path):
    path = tmp_path / "results.csv"
    files.append_csv(pd.DataFrame([{"run": "a", "f1": 0.5}]), path)
    files.append_csv(pd.DataFrame([{"run": "b", "f1": 0.6, "lr": 0.01}]), path)
    files.append_csv(pd.DataFrame([{"run": "c", "f1": 0.7, "lr": 0.02}]), path)
    df = pd.read_csv(path)
    assert df["run"].tolist() == ["a", "b", "c"] and df["lr"].isna().tolist() == [True, False, False]


def test_probability_csv_record_round_trip_and_staleness(tmp_path):
    ids = ["a.jpg", "b.jpg"]
    df = pd.DataFrame(np.full((2, 18), 1 / 18), columns=labels.PROB_COLS)
    df.insert(0, "ImageID", ids)
    path = tmp_path / "p.csv"
    assert probs.read_provenance(path) is None
    probs.write_probs(df, path, {"runs": [{"run": "/x/runs/r", "folds": [0, 1]}]})
    assert probs.read_provenance(path)["runs"][0]["folds"] == [0, 1]
    path.write_text(path.read_text().replace("a.jpg", "c.jpg"))  # edited after the record was written
    with pytest.raises(UserError, match="describes another version"):
        probs.read_provenance(path)


def test_label_scheme_lives_in_one_place():
    """labels.probs18 is labels.joint of the three heads' softmaxes."""
    import torch

    logits = torch.randn(5, 8)
    p = {t: torch.softmax(v, 1).numpy() for t, v in labels.split_logits(logits).items()}
    assert np.allclose(labels.probs18(logits, "multi").numpy(), labels.joint(p["mask"], p["gender"], p["age"]),
                       atol=1e-6)


SCRIPTS = ["crop", "split", "train", "predict", "ensemble", "people", "report", "demo"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_plain_and_does_not_import_torch(script):
    """--help answers without importing torch (seconds on a cold start) and without boxes that wrap at 80
    columns."""
    import subprocess
    import sys

    from conftest import ROOT
    code = ("import runpy, sys; sys.argv = ['x', '--help']\n"
            f"try:\n    runpy.run_path('{ROOT / (script + '.py')}', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "NO-TORCH"
    assert "Usage:" in r.stdout and "╭" not in r.stdout and all(len(ln) <= 80 for ln in r.stdout.splitlines())


def test_train_help_names_every_registry_entry():
    import subprocess
    import sys

    from maskfold.training.augment import AUGS
    from maskfold.training.mixing import CUTMIX_MODES
    from maskfold.training.optim import SCHEDULERS

    from conftest import ROOT
    from losses import LOSSES
    out = subprocess.run([sys.executable, "train.py", "--help"], capture_output=True, text=True, cwd=ROOT,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}).stdout
    flat = " ".join(out.split())
    optimizers = ("sgd", "adam", "adamw", "madgrad", "adamp", "lion", "lamb", "adabelief")  # timm's, named in the help
    for names in (LOSSES, optimizers, SCHEDULERS, AUGS, CUTMIX_MODES):
        for name in names:
            assert name in flat, name


def test_a_ctrl_c_swallowed_by_a_finalizer_is_raised_at_the_next_batch(capsys):
    import os
    import signal

    from maskfold import signals

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal starts Python (not `nohup ... &`)

    class Bar:  # a progress bar whose __del__ is running when Ctrl-C comes
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(10_000))  # the handler runs here, inside the finalizer

    with signals.watching_ctrl_c():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        Bar()  # Python swallows a KeyboardInterrupt raised in __del__
        with pytest.raises(KeyboardInterrupt):
            signals.stop_if_interrupted()
    assert "KeyboardInterrupt" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signals.stop_if_interrupted()  # the next command starts afresh


def test_a_loader_worker_does_not_print_the_fd_sharers_broken_handover():
    import subprocess
    import sys

    code = """if 1:
        import sys, signal
        from maskfold import signals
        signals.loader_worker(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        for where in ("/py/lib/multiprocessing/resource_sharer.py", "/work/dataset.py"):
            try:
                exec(compile("raise EOFError('main process gone')", where, "exec"))
            except EOFError:
                sys.excepthook(*sys.exc_info())
    """
    from conftest import ROOT
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Traceback") == 1 and "/work/dataset.py" in r.stderr and "resource_sharer" not in r.stderr
