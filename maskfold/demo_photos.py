"""The demo's photos: two real portraits that installed packages ship, moved, scaled, tinted and set on varied
backgrounds per person, a mask drawn from the face's landmarks, gender and age as a striped cue on the forehead
(hard_demo.py draws the harder data's cues), saved with the real data's quirks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from maskfold import hard_demo
from maskfold.labels import PHOTO_STEMS, age_label, mask_label

W, H = 384, 512


# Face box and landmarks (eyes, nose, mouth corners) of each portrait, measured once with
# facenet-pytorch's MTCNN, so that generating needs no detector.
PORTRAITS = {
    "grace_hopper": {"box": (174, 120, 356, 340), "eyes": ((222, 192), (310, 186)), "nose": (269, 239),
                     "mouth": ((233, 280), (307, 276))},
    "astronaut": {"box": (181, 62, 268, 172), "eyes": ((205, 102), (247, 104)), "nose": (225, 129),
                  "mouth": ((202, 139), (245, 142))},
}


MASK_COLOURS = [(235, 235, 235), (120, 170, 230), (30, 30, 35), (150, 150, 150), (70, 160, 120),
                (60, 90, 160), (200, 220, 200)]


AGE_COLOURS = [(220, 30, 30), (30, 190, 60), (40, 60, 230)]


STRATA_SHARE = {(0, 0): 0.16, (0, 1): 0.16, (0, 2): 0.08, (1, 0): 0.24, (1, 1): 0.24, (1, 2): 0.12}


def load_portraits() -> dict[str, np.ndarray]:
    import matplotlib.cbook
    import skimage.data
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        grace = np.asarray(im.convert("RGB"))
    return {"grace_hopper": grace, "astronaut": skimage.data.astronaut()}


def make_people(n: int, rng: np.random.Generator, id_offset: int) -> list[dict]:
    """n people over the six gender x age strata, every stratum present when n >= 6."""
    quota = {s: max(1, int(round(share * n))) if n >= 6 else 0 for s, share in STRATA_SHARE.items()}
    strata = [s for s, q in quota.items() for _ in range(q)]
    strata = (strata + [list(STRATA_SHARE)[i % 6] for i in range(n)])[:n]
    rng.shuffle(strata)
    people, pinned = [], {1: [58, 59], 2: [60]}
    for i, (g, a) in enumerate(strata):
        extra = pinned.get(a, [])
        age = extra.pop(0) if extra else {0: int(rng.integers(18, 30)), 1: int(rng.integers(30, 60)), 2: 60}[a]
        people.append({"id": f"{id_offset + i + 1:06d}", "gender": ["male", "female"][g], "age": age,
                       "portrait": str(rng.choice(list(PORTRAITS))), "flip": bool(rng.random() < 0.5),
                       "face_w": float(rng.uniform(120, 175)), "cx": float(rng.uniform(-25, 25)),
                       "cy": float(rng.uniform(-30, 20)), "tint": rng.uniform(0.8, 1.2, 3).tolist(),
                       "bg": rng.integers(40, 230, 6).tolist(), "rng_seed": int(rng.integers(2**31))})
    return people


def affine(p: dict, jitter: np.ndarray) -> tuple[float, float, float]:
    """Scale and offset that put the portrait's face where this person's photos have it."""
    x1, y1, x2, y2 = PORTRAITS[p["portrait"]]["box"]
    s = p["face_w"] / (x2 - x1)
    fx, fy = (x1 + x2) / 2 * s, (y1 + y2) / 2 * s
    return s, W / 2 + p["cx"] + jitter[0] - fx, H * 0.42 + p["cy"] + jitter[1] - fy


def place(points, s, dx, dy, flip_w):
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    if flip_w:
        pts[:, 0] = flip_w - pts[:, 0]
    return pts * s + [dx, dy]


def person_layers(p: dict, base: np.ndarray) -> tuple[Image.Image, Image.Image]:
    """The person's tinted background and portrait, flipped and scaled once for all 7 photos."""
    tint = np.asarray(p["tint"], dtype=np.float32)
    portrait = (base[:, ::-1] if p["flip"] else base) * tint
    img = Image.fromarray(portrait.clip(0, 255).astype(np.uint8))
    s = affine(p, np.zeros(2))[0]
    img = img.resize((round(img.width * s), round(img.height * s)), Image.BILINEAR)
    g = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
    top, bottom = np.array(p["bg"][:3], np.float32), np.array(p["bg"][3:], np.float32)
    bg = np.broadcast_to((top * (1 - g) + bottom * g) * tint, (H, W, 3))
    return Image.fromarray(bg.clip(0, 255).astype(np.uint8)), img


def draw_photo(p: dict, stem: str, base: np.ndarray, layers, rng: np.random.Generator) -> Image.Image:
    info = PORTRAITS[p["portrait"]]
    s, dx, dy = affine(p, rng.normal(0, 3, 2))
    fw = base.shape[1] if p["flip"] else 0
    canvas = layers[0].copy()
    canvas.paste(layers[1], (round(dx), round(dy)))
    box = place(info["box"], s, dx, dy, fw)
    bx1, bx2 = sorted(box[:, 0])
    by1, by2 = box[0, 1], box[1, 1]
    eyes = place(info["eyes"], s, dx, dy, fw)
    nose = place(info["nose"], s, dx, dy, fw)[0]
    mouth = place(info["mouth"], s, dx, dy, fw)
    draw = ImageDraw.Draw(canvas)
    hard = p.get("hard", False)
    if hard:
        hard_demo.draw_shirt(draw, p, bx1, bx2, by2, W, H)
        hard_demo.draw_cue(draw, p, bx1, bx2, by1, eyes[:, 1].min(), rng)
    else:
        draw_cue(draw, p, bx1, bx2, by1, eyes[:, 1].min())
    m = mask_label(stem)
    if m < 2:
        index = PHOTO_STEMS.index(stem) if m == 0 else int(rng.integers(len(MASK_COLOURS)))
        colour = hard_demo.mask_colour(p, index) if hard else MASK_COLOURS[index]
        eye_y, mouth_y = eyes[:, 1].mean(), mouth[:, 1].mean()
        # worn: up to the bridge of the nose; worn wrongly: pulled down to the mouth, the nose bare
        top_y = hard_demo.mask_top(p, m, eye_y, nose[1], mouth_y) if hard else \
            eye_y + 0.45 * (nose[1] - eye_y) if m == 0 else nose[1] + 0.75 * (mouth_y - nose[1])
        draw_mask(draw, bx1, bx2, top_y, by2 + 0.08 * (by2 - by1), colour, p.get("mask_pattern", 0))
    return canvas


def draw_cue(draw: ImageDraw.ImageDraw, p: dict, x1: float, x2: float, face_top: float, eye_y: float) -> None:
    """The learnable gender x age cue: a striped band on the forehead."""
    h = eye_y - face_top
    y1, y2 = face_top + 0.05 * h, face_top + 0.55 * h
    colour = AGE_COLOURS[age_label(p["age"])]
    draw.rectangle([x1, y1, x2, y2], fill=(250, 250, 250))
    hard_demo.stripes(draw, p["gender"] == "male", x1, y1, x2, y2, colour)


def draw_mask(draw: ImageDraw.ImageDraw, x1: float, x2: float, top: float, bottom: float, colour,
              pattern: int = 0) -> None:
    w = x2 - x1
    poly = [(x1 + 0.02 * w, top + 0.1 * (bottom - top)), (x1 + 0.3 * w, top), (x2 - 0.3 * w, top),
            (x2 - 0.02 * w, top + 0.1 * (bottom - top)), (x2 - 0.12 * w, bottom), (x1 + 0.12 * w, bottom)]
    edge = tuple(max(0, c - 90) for c in colour)
    # ear loops: a mask is a mask whatever its colour
    for x_face, x_mask in ((x1 - 0.04 * w, x1 + 0.02 * w), (x2 + 0.04 * w, x2 - 0.02 * w)):
        draw.line([(x_mask, top + 0.1 * (bottom - top)), (x_face, top - 0.25 * (bottom - top))], fill=edge, width=4)
    draw.polygon(poly, fill=colour, outline=edge, width=3)
    pleat = tuple(max(0, c - 40) for c in colour)
    for f in (0.35, 0.6):  # pleats; pattern 1 adds dots, pattern 2 a darker lower half (a two-tone mask)
        y = top + f * (bottom - top)
        draw.line([(x1 + 0.1 * w, y), (x2 - 0.1 * w, y)], fill=pleat, width=2)
    if pattern == 1:
        for x in np.linspace(x1 + 0.2 * w, x2 - 0.2 * w, 5):
            draw.ellipse([x - 3, top + 0.45 * (bottom - top) - 3, x + 3, top + 0.45 * (bottom - top) + 3], fill=edge)
    elif pattern == 2:
        half = top + 0.62 * (bottom - top)
        draw.polygon([(x1 + 0.05 * w, half), (x2 - 0.05 * w, half), (x2 - 0.12 * w, bottom), (x1 + 0.12 * w, bottom)],
                     fill=pleat)


def save(img: Image.Image, path: Path, mode: str) -> None:
    if mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "L":
        img = img.convert("L")
    if path.suffix == ".png":
        img.save(path)
    else:
        img.save(path, quality=92)


def photo_format(i: int, j: int, rng: np.random.Generator) -> tuple[str, str]:
    """(extension, mode) with the real data's quirks: mixed extensions, RGBA PNGs, a greyscale photo."""
    if i == 1 and j == 6:
        return ".jpg", "L"
    r = rng.random()
    if r < 0.08:
        return ".png", "RGBA" if r < 0.04 else "RGB"
    return (".jpeg", "RGB") if r < 0.15 else (".jpg", "RGB")
