import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskfold import demo_photos
from maskfold.crop import cropping
from maskfold.crop.facebox import Geometry, crop_box

import crop
from conftest import invoke, iou


def photo(portrait: str, stem: str, seed: int = 0, cx: float = 0.0, cy: float = 0.0):
    """A 384x512 photo of a real portrait and where its face is, in photo pixels (cx, cy: face offset)."""
    rng = np.random.default_rng(seed)
    p = demo_photos.make_people(6, rng, 0)[0] | {"portrait": portrait, "flip": False, "face_w": 150.0, "cx": cx,
                                                  "cy": cy}
    base = demo_photos.load_portraits()[portrait]
    img = demo_photos.draw_photo(p, stem, base, demo_photos.person_layers(p, base), np.random.default_rng(seed))
    s, dx, dy = demo_photos.affine(p, np.zeros(2))
    face = np.array(demo_photos.PORTRAITS[portrait]["box"], dtype=float) * s + [dx, dy, dx, dy]
    return img, face


def person_photos(folder, shown: dict) -> dict:
    """Photos named as `shown` says ({name: (portrait, drawn stem, seed)}) in a new person folder; their faces."""
    folder.mkdir(parents=True)
    faces = {}
    for name, (portrait, stem, seed) in shown.items():
        img, faces[name] = photo(portrait, stem, seed=seed)
        img.save(folder / f"{name}.jpg", quality=95)
    return faces


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    person = src / "000001_female_Asian_45"
    # drawn masks found by MTCNN's defaults and crop.py's (both miss some others, as on real masks)
    shown = {"normal": ("grace_hopper", "normal", 1), "mask1": ("grace_hopper", "mask1", 2),
             "mask2": ("astronaut", "normal", 1), "mask3": ("astronaut", "mask2", 1)}
    faces = {f"000001_female_Asian_45/{k}.jpg": v for k, v in person_photos(person, shown).items()}
    img, faces["000001_female_Asian_45/mask4.png"] = photo("astronaut", "mask5", seed=1)
    img.convert("RGBA").save(person / "mask4.png")
    # a photo of the same person with no detectable face: a flat grey card
    Image.new("RGB", (384, 512), (128, 128, 128)).save(person / "incorrect_mask.jpg")
    (person / "mask5.jpg").write_bytes(b"")
    (person / "._normal.jpg").write_bytes(b"junk")
    flat = src / "eval"
    flat.mkdir()
    for i in range(11):  # more than --person-photos: a flat folder, not a person
        img, face = photo("astronaut" if i % 2 else "grace_hopper", "normal", seed=i)
        img.save(flat / f"{i:040x}.jpg", quality=95)
        faces[f"eval/{i:040x}.jpg"] = face
    Image.new("RGB", (384, 512), (90, 90, 90)).save(flat / f"{99:040x}.jpg")
    # one person framed off-centre, unlike everyone else in the folder: two photos with faces, one without
    for name, stem in (("look_normal", "normal"), ("look_incorrect", "incorrect_mask"), ("look_mask", "mask1")):
        img, face = photo("grace_hopper", stem, 5, cx=-70, cy=30)
        img.save(flat / f"{name}.jpg", quality=95)
        if name != "look_mask":
            faces[f"eval/{name}.jpg"] = face
    # and one framed off-centre the other way, with one photo showing a face: its near twin lends it alone
    for name, stem in (("solo_normal", "normal"), ("solo_mask", "mask2")):
        img, face = photo("grace_hopper", stem, 7, cx=60, cy=-25)
        img.save(flat / f"{name}.jpg", quality=95)
        if name == "solo_normal":
            faces[f"eval/{name}.jpg"] = face
    (flat / "notes.jpg").write_text("a text file named .jpg\n")
    return src, faces


@pytest.fixture(scope="module")
def cropped(tree, tmp_path_factory):
    src, _ = tree
    dst = tmp_path_factory.mktemp("dst") / "crops"
    r = invoke(crop.app, src, dst, "--device", "cpu", "--batch-size", "8", "--preview-size", "16")
    return dst, r


def test_faces_found_and_inside_their_crops(tree, cropped):
    _, faces = tree
    dst, r = cropped
    report = pd.read_csv(dst / "crop_report.csv").set_index("path")
    for rel, face in faces.items():
        row = report.loc[rel]
        assert row["status"] == "face", (rel, row.to_dict())
        crop_xyxy = row[["crop_x1", "crop_y1", "crop_x2", "crop_y2"]].to_numpy(float)
        assert (crop_xyxy[:2] <= face[:2] + 15).all() and (crop_xyxy[2:] >= face[2:] - 15).all(), rel
        found = row[["face_x1", "face_y1", "face_x2", "face_y2"]].to_numpy(float)
        inter = np.clip(np.minimum(found[2:], face[2:]) - np.maximum(found[:2], face[:2]), 0, None).prod()
        assert inter / np.prod(face[2:] - face[:2]) > 0.6, rel  # the detected box is the drawn face
        with Image.open(dst / rel.replace(".png", ".jpg")) as im:
            assert im.mode == "RGB" and im.format == "JPEG"
            w, h = im.size
        assert abs(w / h - 0.75) < 0.01


def test_faceless_photo_borrows_the_person_box(cropped):
    dst, _ = cropped
    report = pd.read_csv(dst / "crop_report.csv").set_index("path")
    row = report.loc["000001_female_Asian_45/incorrect_mask.jpg"]
    assert row["status"] == "person"
    others = report[(report.index.str.startswith("000001_female_Asian_45/")) & (report["status"] == "face")]
    box = row[["face_x1", "face_y1", "face_x2", "face_y2"]].to_numpy(float)
    assert np.allclose(box, np.median(others[["face_x1", "face_y1", "face_x2", "face_y2"]], axis=0), atol=0.2)


def test_flat_folder_faceless_photo_gets_the_prior(cropped):
    dst, _ = cropped
    report = pd.read_csv(dst / "crop_report.csv").set_index("path")
    assert report.loc[f"eval/{99:040x}.jpg", "status"] == "prior"
    assert (dst / "eval" / f"{99:040x}.jpg").is_file()


def test_flat_folder_faceless_photo_borrows_its_look_alikes_box(cropped):
    dst, _ = cropped
    row = pd.read_csv(dst / "crop_report.csv").set_index("path").loc["eval/look_mask.jpg"]
    assert row["status"] == "person" and "box of 2 look-alike photos" in row["note"], row.to_dict()
    _, face = photo("grace_hopper", "mask1", 5, cx=-70, cy=30)
    # its person's faces, not the centred ones of everyone else in the folder (IoU with those is about 0.4)
    assert iou(row[["face_x1", "face_y1", "face_x2", "face_y2"]].to_numpy(float), face) > 0.7


def test_flat_folder_faceless_photo_borrows_its_near_twins_box_alone(cropped):
    dst, _ = cropped
    row = pd.read_csv(dst / "crop_report.csv").set_index("path").loc["eval/solo_mask.jpg"]
    assert row["status"] == "person" and row["note"].endswith("box of 1 look-alike photo"), row.to_dict()
    _, face = photo("grace_hopper", "mask2", 7, cx=60, cy=-25)
    assert iou(row[["face_x1", "face_y1", "face_x2", "face_y2"]].to_numpy(float), face) > 0.7


def test_unreadable_reported_rest_cropped_nonzero_exit(tree, cropped):
    src, faces = tree
    dst, r = cropped
    assert r.exit_code == 1
    report = pd.read_csv(dst / "crop_report.csv").set_index("path")
    assert report.loc["000001_female_Asian_45/mask5.jpg", "status"] == "unreadable"
    assert report.loc["eval/notes.jpg", "status"] == "unreadable"
    assert "2 unreadable image(s)" in r.stderr.strip().splitlines()[-1]
    assert len(report) == len(faces) + 6  # every image has a row; ._ junk has none
    assert not any("._" in p for p in report.index)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["face"] == len(faces) and summary["person"] == 3 and summary["prior"] == 1
    assert (dst / "preview.jpg").is_file()
    assert not list(dst.rglob("*.tmp")) and not (dst / crop.PARTIAL).exists()
    assert sorted(p.name for p in src.rglob("*") if p.is_file() and "crops" in str(p)) == []


def test_resume_redoes_only_missing_crops(tree, cropped, tmp_path):
    src, _ = tree
    dst, _ = cropped
    import shutil
    copy = tmp_path / "crops"
    shutil.copytree(dst, copy)
    (copy / "eval" / f"{3:040x}.jpg").unlink()
    (copy / "000001_female_Asian_45" / "normal.jpg").unlink()
    before = (copy / "eval" / f"{4:040x}.jpg").stat().st_mtime_ns
    r = invoke(crop.app, src, copy, "--device", "cpu", "--preview-size", "0")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    # the two deleted crops, plus the two unreadable files that are tried again
    assert summary["processed"] == 4 and summary["face"] == len(tree[1])
    assert (copy / "eval" / f"{3:040x}.jpg").is_file()
    assert (copy / "eval" / f"{4:040x}.jpg").stat().st_mtime_ns == before
    assert pd.read_csv(copy / "crop_report.csv").equals(pd.read_csv(dst / "crop_report.csv"))


def test_refuses_output_inside_input(tree):
    src, _ = tree
    r = invoke(crop.app, src, src / "crops", "--device", "cpu")
    assert r.exit_code == 2 and "inside the input folder" in r.stderr
    assert not (src / "crops").exists()


def test_crop_box_keeps_aspect_and_stays_inside():
    g = Geometry()
    for face in ([150, 150, 250, 280], [0, 0, 120, 160], [300, 400, 384, 512]):
        b = crop_box(np.array(face, float), (512, 384), g)
        w, h = b[2] - b[0], b[3] - b[1]
        assert abs(w / h - 0.75) < 0.01
        assert b[0] >= 0 and b[1] >= 0 and b[2] <= 384 and b[3] <= 512
        assert b[0] <= face[0] and b[1] <= face[1] and b[2] >= face[2] and b[3] >= face[3]


def test_geometry_options_reach_the_crops(tree, cropped, tmp_path):
    src, faces = tree
    dst, _ = cropped
    r = invoke(crop.app, src, tmp_path / "sq", "--device", "cpu", "--aspect", "1.0", "--margin-x", "0.6",
               "--preview-size", "0")
    assert r.exit_code == 1  # the two unreadable files, as before
    wide = pd.read_csv(tmp_path / "sq" / "crop_report.csv").set_index("path")
    base = pd.read_csv(dst / "crop_report.csv").set_index("path")
    rel = "eval/" + f"{0:040x}.jpg"
    with Image.open(tmp_path / "sq" / rel) as im:
        assert abs(im.width - im.height) <= 1
    w = lambda df: df.loc[rel, "crop_x2"] - df.loc[rel, "crop_x1"]  # noqa: E731
    assert w(wide) > w(base)


def _report(dst):
    return pd.read_csv(dst / "crop_report.csv").set_index("path")


@pytest.mark.parametrize("option,value,note", [("--min-face", "400", "no face"), ("--min-prob", "1.01", "low prob")])
def test_detection_options_reach_the_detector(tree, tmp_path, option, value, note):
    src, faces = tree
    r = invoke(crop.app, src, tmp_path / "c", "--device", "cpu", option, value, "--preview-size", "0")
    report = _report(tmp_path / "c")
    assert (report["status"] != "face").all(), r.output
    assert (report.loc[list(faces), "note"] == note).all()


def test_person_quality_margin_and_scale_options(tree, cropped, tmp_path):
    src, faces = tree
    dst, _ = cropped
    r = invoke(crop.app, src, tmp_path / "c", "--device", "cpu", "--person-photos", "0", "--quality", "30",
               "--margin-top", "1.0", "--margin-bottom", "0.6", "--scale", "0.5", "--workers", "1",
               "--preview-size", "0")
    assert r.exit_code == 1
    new, base = _report(tmp_path / "c"), _report(dst)
    # no folder counts as a person: the faceless card falls back to the prior, not the person
    assert new.loc["000001_female_Asian_45/incorrect_mask.jpg", "status"] == "prior"
    rel = "eval/" + f"{0:040x}.jpg"
    h = lambda df: df.loc[rel, "crop_y2"] - df.loc[rel, "crop_y1"]  # noqa: E731
    assert h(new) > h(base)
    assert (tmp_path / "c" / rel).stat().st_size < (dst / rel).stat().st_size
    # detected on a half-size copy: boxes close to, but not the same as, the full-size ones
    cols = ["face_x1", "face_y1", "face_x2", "face_y2"]
    assert not np.allclose(new.loc[rel, cols].to_numpy(float), base.loc[rel, cols].to_numpy(float))
    assert np.allclose(new.loc[rel, cols].to_numpy(float), base.loc[rel, cols].to_numpy(float), atol=20)


def test_worker_processes_and_threads_give_the_same_crops(tree, tmp_path):
    src, _ = tree
    runs = {}
    for workers in ("1", "2"):
        r = invoke(crop.app, src, tmp_path / workers, "--device", "cpu", "--workers", workers, "--batch-size", "4",
                   "--preview-size", "0")
        runs[workers] = json.loads(r.stdout.strip().splitlines()[-1])["workers"]
    assert runs == {"1": "1 threads", "2": "2 processes"}  # on CPU, more than one worker means processes
    one, two = _report(tmp_path / "1"), _report(tmp_path / "2")
    assert one.index.equals(two.index) and (one["status"] == two["status"]).all()
    assert np.allclose(one.iloc[:, 1:12].to_numpy(float), two.iloc[:, 1:12].to_numpy(float), atol=0.2, equal_nan=True)
    for rel in one.index[one["status"] != "unreadable"]:
        a, b = (np.asarray(Image.open(cropping.crop_path(tmp_path / w, rel))) for w in ("1", "2"))
        assert a.shape == b.shape and np.abs(a.astype(int) - b).mean() < 1


def test_detector_finds_the_boxes_of_facenet_pytorchs_detect_face(tree):
    """The integral-image MTCNN against facenet-pytorch's own, one photo per call (the habit's way)."""
    import torch
    from facenet_pytorch.models.utils.detect_face import detect_face

    from maskfold.crop.detector import Detector
    from maskfold.images import read_image

    src, faces = tree
    images = [read_image(src / rel) for rel in faces]
    images.append(np.ascontiguousarray(images[0][:300, :200]))  # another size in the same call
    images.append(np.zeros((100, 90, 3), np.uint8))  # smaller than the smallest face: no pyramid at all
    det = Detector()
    mine = det.detect(images)
    m = det.mtcnn
    found = 0
    for im, a in zip(images, mine):
        with torch.inference_mode():
            ref = detect_face(torch.from_numpy(im.copy()), det.min_face, m.pnet, m.rnet, m.onet, m.thresholds, m.factor,
                              "cpu")[0][0] if min(im.shape[:2]) >= det.min_face else None
        b = np.zeros((0, 5)) if ref is None or len(ref) == 0 else np.asarray(ref, dtype=float).reshape(-1, 5)
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-3), (a, b)
        found += len(a) > 0
    assert found >= len(faces) - 2  # most photos show a face: not a comparison of empty lists


def test_area_means_from_integral_images_equal_pytorchs_area_resize():
    import torch
    import torch.nn.functional as F

    from maskfold.crop.detector import Detector, area_windows, box_means, integral_images, level_means

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 50, 37, 3), dtype=np.uint8)
    S = Detector()._integrals(list(imgs))
    assert torch.equal(S, integral_images(torch.from_numpy(imgs)))  # the GPU path's integral images
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float()
    for size in [(12, 9), (50, 37), (80, 61)]:  # down, same, up
        assert torch.allclose(level_means(S, *size), F.interpolate(x, size=size, mode="area"), atol=1e-4)
    n = torch.tensor([0, 2, 1, 2])
    y0, x0 = torch.tensor([0, 10, 33, 5]), torch.tensor([0, 3, 20, 30])
    h, w = torch.tensor([50, 31, 17, 5]), torch.tensor([37, 24, 9, 7])  # the last two smaller than 24: upsampled
    out = box_means(S, n, *area_windows(y0, h, 24), *area_windows(x0, w, 24))
    for k in range(4):
        part = x[n[k]:n[k] + 1, :, y0[k]:y0[k] + h[k], x0[k]:x0[k] + w[k]]
        assert torch.allclose(out[k:k + 1], F.interpolate(part, size=(24, 24), mode="area"), atol=1e-4)


@pytest.mark.parametrize("option,value", [("--scale", "1.5"), ("--min-face", "5"), ("--workers", "0"),
                                          ("--batch-size", "0"), ("--aspect", "0")])
def test_bad_crop_options_end_in_one_line(tree, tmp_path, option, value):
    src, _ = tree
    r = invoke(crop.app, src, tmp_path / "c", "--device", "cpu", option, value)
    assert r.exit_code == 2 and option in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "c").exists()


def test_pyramid_is_the_tail_of_mtcnn_defaults():
    """The default smallest face starts the pyramid where MTCNN's defaults (20 px) reach 384x512 portraits'
    faces: the same levels, to the pixel (112 px would give 55x42 and 39x30 instead of 56x42 and 40x30)."""
    from maskfold.crop.detector import TAIL_OF_DEFAULTS, pyramid

    defaults = [size for _, size in pyramid(512, 384, 20)]
    mine = [size for _, size in pyramid(512, 384, TAIL_OF_DEFAULTS)]
    assert mine == defaults[-len(mine):] and mine[0] == (56, 42) and len(mine) == 4
    assert [size for _, size in pyramid(512, 384, 112)][:2] == [(55, 42), (39, 30)]


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    """One person, photos at two sizes: four at 384x512, a fifth and a faceless card at twice that."""
    src = tmp_path_factory.mktemp("mixed")
    person = src / "000002_male_Asian_30"
    faces = person_photos(person, {"mask1": ("grace_hopper", "mask1", 2), "mask2": ("grace_hopper", "normal", 1),
                                   "mask3": ("grace_hopper", "normal", 3), "mask4": ("grace_hopper", "normal", 4)})
    img, face = photo("grace_hopper", "normal", seed=5)
    img.resize((768, 1024), Image.BICUBIC).save(person / "normal.jpg", quality=95)
    faces["normal"] = face * 2
    Image.new("RGB", (768, 1024), (128, 128, 128)).save(person / "incorrect_mask.jpg")
    return src, faces


def test_a_person_whose_photos_differ_in_size(mixed_sizes, tmp_path):
    """The large photo's face is its own (not 'off person'), and the faceless large photo borrows the person's
    box in its own pixels: boxes are compared and lent relative to each photo's size."""
    src, faces = mixed_sizes
    invoke(crop.app, src, tmp_path / "c", "--device", "cpu", "--preview-size", "0")
    report = _report(tmp_path / "c")
    cols = ["face_x1", "face_y1", "face_x2", "face_y2"]
    big = report.loc["000002_male_Asian_30/normal.jpg"]
    assert big["status"] == "face", big.to_dict()
    assert iou(big[cols].to_numpy(float), faces["normal"]) > 0.6
    card = report.loc["000002_male_Asian_30/incorrect_mask.jpg"]
    assert card["status"] == "person" and card["width"] == 768
    small = report[report.index.str.contains("/mask") & (report["status"] == "face")]
    expected = np.median(np.vstack([small[cols].to_numpy(float) / 384 * 768 / 1 * [1, 1, 1, 1],
                                    big[cols].to_numpy(float)[None]]), axis=0)
    assert iou(card[cols].to_numpy(float), expected) > 0.9  # in the large photo's pixels, not the small ones'


def test_detector_on_a_12_megapixel_photo_finds_the_downscaled_photos_box():
    """A bright 4000x3000 photo: its sums pass 2^31, the box must still be the one found on the photo
    downscaled to 512x384 (times the scale)."""
    import cv2
    import torch

    from maskfold.crop.detector import Detector, area_windows, box_means, integral_images

    img, _ = photo("grace_hopper", "normal", seed=1)
    small = np.asarray(img)
    big = cv2.resize(small, (3000, 4000), interpolation=cv2.INTER_CUBIC)
    big = (255 - (255 - big.astype(np.float32)) * 0.4).astype(np.uint8)  # washed out: a mean well above 180
    assert int(big.sum(axis=(0, 1)).max()) >= 2**31
    det = Detector()
    a = det.detect([big])[0]
    b = det.detect([cv2.resize(big, (384, 512), interpolation=cv2.INTER_AREA)])[0]
    assert len(a) and len(b)
    assert iou(a[np.argmax(a[:, 4]), :4], b[np.argmax(b[:, 4]), :4] * 3000 / 384) > 0.85
    # the integral images of both paths hold whole-photo sums exactly
    S = det._integrals([big])
    whole = box_means(S, torch.tensor([0]), *area_windows(torch.tensor([0]), torch.tensor([4000]), 1),
                      *area_windows(torch.tensor([0]), torch.tensor([3000]), 1))
    assert np.allclose(whole.numpy().ravel(), big.reshape(-1, 3).mean(0), atol=1e-3)
    T = integral_images(torch.from_numpy(big[None]))
    assert torch.equal(T[0, -1, -1].double(), S[0, -1, -1].double())


def test_a_changed_facenet_helper_is_named_in_one_line(tree, tmp_path, monkeypatch):
    from facenet_pytorch.models.utils import detect_face as module

    from maskfold.crop.detector import Detector
    monkeypatch.setattr(module, "rerec", lambda boxes, square=True: boxes)
    with pytest.raises(Exception, match=r"detect_face.rerec is now \(boxes, square\)"):
        Detector()
    src, _ = tree
    r = invoke(crop.app, src, tmp_path / "c", "--device", "cpu")
    assert r.exit_code == 2 and "facenet-pytorch" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_photo_stored_sideways_with_exif_orientation_is_cropped_upright(tmp_path):
    src = tmp_path / "src" / "000003_female_Asian_20"
    src.mkdir(parents=True)
    img, face = photo("grace_hopper", "normal", seed=1)
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 270 clockwise to view": the pixels are stored turned a quarter to the right
    img.transpose(Image.Transpose.ROTATE_270).save(src / "normal.jpg", quality=95, exif=exif.tobytes())
    invoke(crop.app, tmp_path / "src", tmp_path / "c", "--device", "cpu", "--preview-size", "0")
    row = _report(tmp_path / "c").loc["000003_female_Asian_20/normal.jpg"]
    assert row["status"] == "face" and (row["width"], row["height"]) == (384, 512)
    assert iou(row[["face_x1", "face_y1", "face_x2", "face_y2"]].to_numpy(float), face) > 0.6
