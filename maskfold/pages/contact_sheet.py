"""Contact sheets: tiles of photos with boxes and captions, for a person to check a step at a glance."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from maskfold.cli import UserError
from maskfold.files import atomic_path

COLOURS = {"face": (60, 200, 60), "person": (240, 200, 40), "prior": (240, 60, 60), "crop": (255, 255, 255),
           "good": (60, 200, 60), "doubt": (240, 200, 40), "bad": (240, 60, 60), "text": (235, 235, 235)}


@dataclass
class Tile:
    image: np.ndarray  # RGB, any size: fitted into the tile
    lines: list[str]  # caption, one tile-wide line each (cut with an ellipsis)
    colour: tuple = COLOURS["text"]  # frame and first caption line
    boxes: list[tuple[np.ndarray, tuple]] = field(default_factory=list)  # (x1,y1,x2,y2 in image pixels, colour)


def font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        return ImageFont.load_default()


def fit_text(draw: ImageDraw.ImageDraw, text: str, width: int, f) -> str:
    if draw.textlength(text, font=f) <= width:
        return text
    while text and draw.textlength(text + "…", font=f) > width:
        text = text[:-1]
    return text + "…"


def render(tile: Tile, w: int, h: int, f, line_h: int) -> Image.Image:
    """One tile: the image fitted above its caption, its boxes drawn, a frame in its colour."""
    cap = line_h * len(tile.lines) + 4
    out = Image.new("RGB", (w, h), (32, 32, 32))
    im = Image.fromarray(tile.image)
    scale = min((w - 6) / im.width, (h - cap - 6) / im.height)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    x0, y0 = (w - size[0]) // 2, 3
    out.paste(im.resize(size, Image.BILINEAR), (x0, y0))
    d = ImageDraw.Draw(out)
    for box, colour in tile.boxes:
        b = np.asarray(box, float) * scale + [x0, y0, x0, y0]
        d.rectangle(b.tolist(), outline=colour, width=2)
    d.rectangle([0, 0, w - 1, h - 1], outline=tile.colour, width=2)
    for k, line in enumerate(tile.lines):
        d.text((4, h - cap + 2 + k * line_h), fit_text(d, line, w - 8, f), fill=tile.colour if k == 0 else
               COLOURS["text"], font=f)
    return out


def sheet(tiles: list[Tile], cols: int, w: int = 150, h: int = 220, title: str | None = None) -> Image.Image:
    """Tiles in rows of `cols`, an optional title line on top."""
    f, line_h = font(11), 14
    top = 22 if title else 0
    rows = max(1, (len(tiles) + cols - 1) // cols)
    out = Image.new("RGB", (w * cols, top + h * rows), (20, 20, 20))
    if title:
        d = ImageDraw.Draw(out)
        d.text((6, 4), fit_text(d, title, w * cols - 12, font(13)), fill=COLOURS["text"], font=font(13))
    for k, t in enumerate(tiles):
        out.paste(render(t, w, h, f, line_h), ((k % cols) * w, top + (k // cols) * h))
    return out


def save_jpeg(image: Image.Image, path: Path, quality: int = 88) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, "JPEG", quality=quality)


def quotas(counts: dict[str, int], n: int) -> dict[str, int]:
    """n tiles shared among the statuses present: rare ones show whole, the rest split what is left."""
    out, left, keys = {}, n, sorted((k for k in counts if counts[k]), key=lambda k: counts[k])
    for i, k in enumerate(keys):
        out[k] = min(counts[k], left // (len(keys) - i))
        left -= out[k]
    return out


def crop_preview(src: Path, path: Path, report, n: int, seed: int = 0) -> None:
    """A sample of each status (rare fallbacks whole), each photo with its face box in the status's colour
    and its crop box in white, captioned with status, probability, folder and note."""
    from maskfold.images import read_image

    ok = report[report["status"] != "unreadable"]
    counts = ok["status"].value_counts().to_dict()
    picks = [ok[ok["status"] == s].sample(q, random_state=seed) for s, q in quotas(counts, n).items()]
    order = {"prior": 0, "person": 1, "face": 2}
    pick = pd.concat(picks).sort_values("status", key=lambda s: s.map(order)) if picks else ok.head(0)
    tiles = []
    for _, r in pick.iterrows():
        try:
            im = read_image(src / r["path"], reduce=4)
        except UserError:
            continue
        k = im.shape[1] / r["width"]
        face = r[["face_x1", "face_y1", "face_x2", "face_y2"]].to_numpy(float) * k
        crop = r[["crop_x1", "crop_y1", "crop_x2", "crop_y2"]].to_numpy(float) * k
        prob = "" if pd.isna(r["prob"]) else f" p={r['prob']:.2f}"
        rel = Path(r["path"])
        note = "" if pd.isna(r["note"]) else str(r["note"])
        tiles.append(Tile(im, [f"{r['status']}{prob}", str(rel.parent) if str(rel.parent) != "." else rel.stem,
                               rel.name if str(rel.parent) != "." else note, note if str(rel.parent) != "." else ""],
                          COLOURS[r["status"]], [(crop, COLOURS["crop"]), (face, COLOURS[r["status"]])]))
    counts_line = ", ".join(f"{s} {int((report['status'] == s).sum())}" for s in ("face", "person", "prior",
                                                                                    "unreadable"))
    save_jpeg(sheet(tiles, cols=8, title=f"{len(report)} photos: {counts_line}. Shown: "
                    + ", ".join(f"{s} {q}" for s, q in quotas(counts, n).items())), path)


def people_sheet(df: pd.DataFrame, folder: Path, person: np.ndarray | None, groups: int, size: int,
                 out: Path) -> None:
    """people.py's preview: one row per group of people.csv's table `df`, least sure first, so that a person sees
    at once whether a row is one person; `groups` rows of `size` photos from `folder`."""
    from maskfold.images import read_image

    worst = df.groupby("group")["sure"].first().sort_values().index[:groups]
    tiles = []
    for g in worst:
        rows = df[df["group"] == g].sort_values("margin")
        for k, (_, r) in enumerate(rows.iterrows()):
            colour = COLOURS["bad" if r["margin"] < 0 else "doubt" if r["margin"] < 0.05 else "good"]
            first = f"group {g} ({r['size']} photos)" if k == 0 else ""
            who = f"person {person[r.name]}" if person is not None else Path(r["ImageID"]).stem[:16]
            sure = f"margin {r['margin']:+.3f}" + (" (least)" if k == 0 else "")
            try:
                image = read_image(folder / r["ImageID"], reduce=4)
            except UserError:
                image = np.zeros((8, 6, 3), np.uint8)
            tiles.append(Tile(image, [first, sure, who], colour))
        tiles += [Tile(np.zeros((8, 6, 3), np.uint8), ["", "", ""], (32, 32, 32))] * (size - len(rows))
    title = f"{df['group'].nunique()} groups of {len(df)} photos; the {len(worst)} least sure, one per row"
    save_jpeg(sheet(tiles, cols=size, w=120, h=180, title=title), out)


def audit_sheet(issues: pd.DataFrame, df: pd.DataFrame, base: Path, rows: int, out: Path) -> None:
    """audit.py's preview: each suspect person's photos in a row, surest first, each captioned with its label
    and the held-out vote (red where they differ), so that a person accepts or rejects a row in seconds.
    `df`: folds.csv's rows (paths relative to `base`) with their held-out p0..p17."""
    from maskfold.images import read_image
    from maskfold.labels import PROB_COLS, class_name

    suspects = issues[issues["field"] != "photo"].drop_duplicates("person").head(rows)
    tiles, size = [], 7
    for s in suspects.itertuples():
        photos = df[df["person"] == s.person]
        asks = [f"{a.field} {a.label} -> {a.suggested}, {a.sure:.2f}" for a in issues[
            (issues["person"] == s.person) & (issues["field"] != "photo")].itertuples()]
        for k, r in enumerate(photos.itertuples()):
            p = photos.loc[r.Index, PROB_COLS].to_numpy(float)
            vote = int(p.argmax())
            try:
                image = read_image(base / r.path, reduce=2)
            except UserError:
                image = np.zeros((8, 6, 3), np.uint8)
            lines = [asks[k] if k < len(asks) else "", f"label {class_name(int(r.label))}",
                     f"vote {class_name(vote)} {p[vote]:.2f}", str(s.person) if k == 0 else Path(r.path).stem]
            tiles.append(Tile(image, lines, COLOURS["bad" if vote != r.label else "good"]))
        tiles += [Tile(np.zeros((8, 6, 3), np.uint8), [""] * 4, (32, 32, 32))] * (size - len(photos))
    title = (f"{len(suspects)} suspect people of {df['person'].nunique()}, surest first; a row: the person's photos "
             "with their label and held-out vote (red: they differ)")
    save_jpeg(sheet(tiles, cols=size, w=170, h=250, title=title), out)
