"""train.py's --aug (presets and a saved albumentations pipeline) and --config (a file of options that the
command line overrides)."""
import json

import numpy as np
import pytest
import yaml

from maskfold.training import augment, data

import split
import train
from conftest import invoke

TINY = ["--model", "test_resnet", "--no-pretrained", "--epochs", "1", "--img-size", "32", "24", "--batch-size", "16",
        "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def folds(demo_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("folds") / "folds.csv"
    assert invoke(split.app, demo_tree / "train" / "train.csv", demo_tree / "train" / "images", "-o", out,
                  "--folds", "2").exit_code == 0
    return out


@pytest.mark.parametrize("name", ["ssr", "dropout", "noise", "colour", "strong"])
def test_each_face_preset_changes_images_as_its_family_does(name):
    tf = augment.build_aug(name)
    kinds = {type(t).__name__ for t in tf.transforms}
    family = {"ssr": {"Affine"}, "dropout": {"CoarseDropout"}, "noise": {"GaussNoise"}, "colour": {"ColorJitter"},
              "strong": {"Affine", "CoarseDropout", "GaussNoise", "ColorJitter"}}[name]
    assert family <= kinds and "HorizontalFlip" in kinds
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 36, 3), dtype=np.uint8)
    changed = 0
    for seed in range(8):
        tf.set_random_seed(seed)
        changed += not np.array_equal(tf(image=image)["image"], image)
    assert changed >= 4


def test_aug_file_is_the_pipeline_trained_with_and_recorded(folds, tmp_path, monkeypatch):
    import albumentations as A

    path = tmp_path / "aug.yaml"
    A.save(A.Compose([A.VerticalFlip(p=1.0)]), str(path), data_format="yaml")
    seen = []
    real = data.CachedImages.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        seen.append(self.tf)

    monkeypatch.setattr(data.CachedImages, "__init__", spy)
    r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--aug", path)
    assert r.exit_code == 0, r.output
    assert [type(t).__name__ for t in seen[0].transforms] == ["VerticalFlip"]
    image = np.arange(24 * 32 * 3, dtype=np.uint8).reshape(32, 24, 3)
    assert np.array_equal(seen[0](image=image)["image"], image[::-1])
    config = json.loads((tmp_path / "runs" / "test_resnet" / "fold0" / "config.json").read_text())
    assert config["aug"] == str(path) and "VerticalFlip" in json.dumps(config["aug_pipeline"])
    # the file changed: fold 1 would train another augmentation than fold 0, refused
    A.save(A.Compose([A.HorizontalFlip(p=1.0)]), str(path), data_format="yaml")
    r = invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--aug", path, "--fold", "1")
    assert r.exit_code == 2 and "aug_digest" in r.output, r.output
    for bad, needle in ((tmp_path / "none.yaml", "no such file"), (tmp_path / "bad.json", "not an albumentations")):
        if bad.suffix == ".json":
            bad.write_text('{"transform": 3}')
        r = invoke(train.app, folds, *TINY, "--out", tmp_path / "x", "--aug", bad)
        assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output


def test_config_sets_the_options_and_the_command_line_wins(folds, tmp_path):
    assert invoke(train.app, folds, *TINY, "--out", tmp_path / "runs", "--lr", "0.02", "--aug", "none",
                  "--head", "multi").exit_code == 0
    source = tmp_path / "runs" / "test_resnet" / "config.json"
    r = invoke(train.app, "--config", source, "--out", tmp_path / "runs", "--run-name", "again", "--fold", "1",
               "--epochs", "2", "--workers", "0", "--device", "cpu")
    assert r.exit_code == 0, r.output
    a = json.loads((tmp_path / "runs" / "test_resnet" / "fold0" / "config.json").read_text())
    b = json.loads((tmp_path / "runs" / "again" / "fold1" / "config.json").read_text())
    assert b["lr"] == 0.02 and b["head"] == "multi" and b["aug"] == "none" and b["folds_csv"] == a["folds_csv"]
    assert b["epochs"] == 2 and b["fold"] == 1 and b["config"] == str(source)
    own = tmp_path / "mine.yaml"
    own.write_text(yaml.safe_dump({"model": "test_resnet", "pretrained": False, "img-size": [32, 24], "lr": 0.005,
                                   "epochs": 1, "batch_size": 16, "fold": 1}))
    r = invoke(train.app, folds, "--config", own, "--out", tmp_path / "runs", "--run-name", "yaml", "--workers", "0",
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    c = json.loads((tmp_path / "runs" / "yaml" / "fold0" / "config.json").read_text())
    assert c["lr"] == 0.005 and c["img_size"] == [32, 24] and c["fold"] == 0  # fold: the command line's
    assert "fold not taken from the file" in r.output
    own.write_text("lr: 0.1\nlearning_rate: 3\n")
    r = invoke(train.app, folds, *TINY, "--config", own, "--out", tmp_path / "z")
    assert r.exit_code == 2 and "unknown option(s) learning_rate" in r.output and not (tmp_path / "z").exists()
