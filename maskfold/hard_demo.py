"""The harder demo's people: the real data's make-up, cues as ambiguous as faces, shared rooms, label noise.

The easy demo's cues (a stripe direction for gender, one of three colours for age) leave no photo in
doubt. Here, as in the competition's data (../shared/COMPETITION.md):
- 61% of people are female; ages <30 / 30-59 / 60 are 47% / 45% / 7% of people, every old person is
  exactly 60 and the 50s are crowded up to 59, so 58-59 against 60 is the hardest call;
- the age cue is a colour that moves continuously with the age in years, with a spread of its own per
  person (a 29-year-old and a 31-year-old look alike, and a 59 like a 60);
- the gender cue (the stripes' direction) is faint for some people, some people's is veiled further (a
  fringe, a hat's shadow), and a few people look like the other gender (their stripes turned the other way:
  right only by their label);
- a person's hard cue is hard in all seven photos, as a face is one face: the light and the veil are the
  person's (a photo only moves a little around them), so a person's photos err together and one answer per
  person cannot undo what one photo got wrong;
- masks come in many colours and patterns, and some people wear theirs low, close to "worn wrongly";
- some people share a room (background, light and framing) and differ only by themselves (their
  shirt, their face's tint, their cue);
- the train labels carry the real data's kinds of noise (a person's gender wrong, a person's
  incorrect_mask and normal photos swapped, an age moved across 30 or 60), recorded for scoring only.
"""
from __future__ import annotations

import colorsys

import numpy as np

FEMALE = 0.61
AGE_BANDS = (0.47, 0.45, 0.08)  # of people: <30, 30-59, 60 (the real data has 7.1%)
AGE_SPREAD = 7.0  # years: sd of a person's age cue around their age
LOOKS_OTHER = 0.06  # of people whose face reads as the other gender's (the stripes turned the other way)
VEILED = 0.2  # of people whose gender cue is veiled to 0.5 of its strength in every photo
ROOM_SHARE = 0.3  # of people photographed in a room shared with 1-3 others
NOISE_KINDS = {"gender": 0.4, "swap": 0.4, "age": 0.2}  # of the people whose labels are wrong


def age_of(band: int, rng: np.random.Generator) -> int:
    """An age in the band, the 30-59 band crowded towards its end as the real data's is."""
    if band == 0:
        return int(rng.integers(18, 30))
    if band == 2:
        return 60
    return int(rng.integers(50, 60)) if rng.random() < 0.5 else int(rng.integers(30, 50))


def make_people(n: int, rng: np.random.Generator, id_offset: int, portraits: list[str]) -> list[dict]:
    """n people with the real data's make-up; the strata are drawn, not rounded, so small sets vary."""
    people = []
    for i in range(n):
        gender = "female" if rng.random() < FEMALE else "male"
        band = int(rng.choice(3, p=AGE_BANDS))
        age = age_of(band, rng)
        people.append({
            "id": f"{id_offset + i + 1:06d}", "gender": gender, "age": age, "hard": True,
            "portrait": str(rng.choice(portraits)), "flip": bool(rng.random() < 0.5),
            "face_w": float(rng.uniform(120, 175)), "cx": float(rng.uniform(-25, 25)),
            "cy": float(rng.uniform(-30, 20)), "tint": rng.uniform(0.8, 1.2, 3).tolist(),
            "bg": rng.integers(40, 230, 6).tolist(), "rng_seed": int(rng.integers(2**31)),
            "age_cue": float(age + rng.normal(0, AGE_SPREAD)),
            "gender_strength": float(rng.beta(2, 1.5)),  # some people's cue is faint
            "looks_other": bool(rng.random() < LOOKS_OTHER),
            "veil": 0.5 if rng.random() < VEILED else 1.0, "light": float(rng.uniform(0.75, 1.15)),
            "shirt": rng.integers(20, 235, 3).tolist(),
            "mask_top": float(rng.uniform(0.3, 0.8)),  # 0.8: worn low, close to worn wrongly
            "wrong_top": float(rng.uniform(0.25, 0.85)),
            "mask_colours": rng.integers(20, 240, (7, 3)).tolist(), "mask_pattern": int(rng.integers(3))})
    share_rooms(people, rng)
    return people


def share_rooms(people: list[dict], rng: np.random.Generator) -> None:
    """Put ROOM_SHARE of the people in rooms of 2-4: the same background, light and framing."""
    order = [int(i) for i in rng.permutation(len(people))]
    todo = order[:int(round(ROOM_SHARE * len(people)))]
    while len(todo) >= 2:
        k = min(len(todo), int(rng.integers(2, 5)))
        room, todo = todo[:k], todo[k:]
        first = people[room[0]]
        for i in room[1:]:
            for key in ("bg", "tint", "face_w", "cx", "cy", "flip", "light"):
                people[i][key] = first[key]


def age_colour(cue: float) -> tuple[int, int, int]:
    """The age cue: a hue that turns from red (18) through green to blue (75) with the age in years."""
    t = float(np.clip((cue - 18) / (75 - 18), 0, 1))
    r, g, b = colorsys.hsv_to_rgb(0.66 * t, 0.85, 0.9)
    return int(255 * r), int(255 * g), int(255 * b)


def draw_cue(draw, p: dict, x1: float, x2: float, face_top: float, eye_y: float, rng: np.random.Generator) -> None:
    """A band on the forehead in the age colour, with stripes whose direction says the gender, as faint as
    the person's gender strength and veil, in the person's light; a photo moves the light by a few percent."""
    h = eye_y - face_top
    y1, y2 = face_top + 0.05 * h, face_top + 0.55 * h
    colour = np.array(age_colour(p["age_cue"]), float)
    light = p["light"] * float(rng.uniform(0.97, 1.03))
    draw.rectangle([x1, y1, x2, y2], fill=tuple(int(v) for v in np.clip(colour * light, 0, 255)))
    strength = p["gender_strength"] * p["veil"]
    stripe = tuple(int(v) for v in np.clip((colour * (1 - strength) + 250 * strength) * light, 0, 255))
    stripes(draw, (p["gender"] == "male") != p.get("looks_other", False), x1, y1, x2, y2, stripe)


def stripes(draw, male: bool, x1: float, y1: float, x2: float, y2: float, fill) -> None:
    """The gender cue of both demos: vertical stripes across the band for male, horizontal for female."""
    step = max(4.0, (x2 - x1) / 10)
    if male:
        for x in np.arange(x1, x2, step):
            draw.rectangle([x, y1, x + step / 2, y2], fill=fill)
    else:
        for y in np.arange(y1, y2, (y2 - y1) / 3):
            draw.rectangle([x1, y, x2, y + (y2 - y1) / 6], fill=fill)


def draw_shirt(draw, p: dict, x1: float, x2: float, chin: float, width: int, height: int) -> None:
    """What a person wears: a shirt below the chin, in the person's colour."""
    w = x2 - x1
    top = chin + 0.25 * w
    draw.polygon([(x1 - 0.1 * w, top), (x2 + 0.1 * w, top), (min(width, x2 + 0.9 * w), height),
                  (max(0, x1 - 0.9 * w), height)], fill=tuple(p["shirt"]))


def mask_top(p: dict, m: int, eye_y: float, nose_y: float, mouth_y: float) -> float:
    """Where the mask's upper edge sits: worn (m 0) between the nose's bridge and its tip, worn wrongly
    (m 1) between the tip and the mouth, each person at their own height."""
    if m == 0:
        return eye_y + p["mask_top"] * (nose_y - eye_y)
    return nose_y + p["wrong_top"] * (mouth_y - nose_y)


def mask_colour(p: dict, index: int) -> tuple[int, int, int]:
    return tuple(p["mask_colours"][index % 7])


def add_noise(people: list[dict], share: float, rng: np.random.Generator) -> list[dict]:
    """Wrong labels for `share` of the people, in the real data's kinds; each person keeps the truth in
    their drawing and gets the wrong label on file. Returns the record of what was changed."""
    n = int(round(share * len(people)))
    chosen = rng.choice(len(people), n, replace=False) if n else []
    kinds, weights = list(NOISE_KINDS), np.array(list(NOISE_KINDS.values()))
    record = []
    for i in chosen:
        p = people[int(i)]
        kind = str(rng.choice(kinds, p=weights / weights.sum()))
        if kind == "gender":
            label = "male" if p["gender"] == "female" else "female"
            record.append({"id": p["id"], "kind": kind, "field": "gender", "true": p["gender"], "recorded": label})
            p["label_gender"] = label
        elif kind == "swap":
            record.append({"id": p["id"], "kind": kind, "field": "incorrect_mask/normal", "true": "as drawn",
                           "recorded": "swapped"})
            p["swap_files"] = True
        else:
            moved = 30 if p["age"] < 30 else 29 if p["age"] < 45 else 60 if p["age"] < 60 else 58
            record.append({"id": p["id"], "kind": kind, "field": "age", "true": p["age"], "recorded": moved})
            p["label_age"] = moved
    return record
