"""The competition's labels and metric: the 18-class code, the three heads' layout, and macro F1.

class = mask * 6 + gender * 3 + age; every script takes the scheme from here.
"""
from __future__ import annotations

import numpy as np

NUM_CLASSES = 18
TASKS = {"mask": 3, "gender": 2, "age": 3}
PHOTO_STEMS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
GENDERS = {"male": 0, "female": 1}
PROB_COLS = [f"p{i}" for i in range(NUM_CLASSES)]
SCHEME = "mask*6+gender*3+age"


def mask_label(stem: str) -> int:
    """mask1..mask5 -> 0 (wear), incorrect_mask -> 1, normal -> 2."""
    if stem.startswith("mask"):
        return 0
    if stem == "incorrect_mask":
        return 1
    if stem == "normal":
        return 2
    raise ValueError(f"unknown photo name {stem!r}")


def gender_label(gender: str) -> int:
    return GENDERS[gender]


def age_label(age, old_age: int = 60):
    """<30 -> 0, 30..old_age-1 -> 1, >=old_age -> 2 (scalar or array)."""
    a = np.asarray(age)
    out = np.where(a < 30, 0, np.where(a < old_age, 1, 2))
    return int(out) if out.ndim == 0 else out


def encode(mask, gender, age_band):
    """The 18-class code: mask*6 + gender*3 + age."""
    return np.asarray(mask) * 6 + np.asarray(gender) * 3 + np.asarray(age_band)


def decode(label):
    """Class code -> (mask, gender, age band): scalar, array or torch tensor alike."""
    label = label if hasattr(label, "dtype") else np.asarray(label)
    return label // 6, (label // 3) % 2, label % 3


def marginals(probs: np.ndarray) -> dict[str, np.ndarray]:
    """18-class probabilities (N, 18) -> per-task probabilities."""
    p = probs.reshape(-1, 3, 2, 3)
    return {"mask": p.sum(axis=(2, 3)), "gender": p.sum(axis=(1, 3)), "age": p.sum(axis=(1, 2))}


def joint(mask, gender, age):
    """Per-task probabilities -> 18-class joint, assuming independence (numpy arrays or torch tensors)."""
    j = mask[:, :, None, None] * gender[:, None, :, None] * age[:, None, None, :]
    return j.reshape(len(mask), NUM_CLASSES)


def task_targets(label, task: str | None):
    """Class codes as one task's classes (train.py --task), or unchanged for all 18."""
    return label if task is None else decode(label)[list(TASKS).index(task)]


def split_logits(logits):
    """(N, 8) three-head logits -> per-task logits (mask 3, gender 2, age 3), as views of `logits`."""
    out, start = {}, 0
    for t, n in TASKS.items():
        out[t] = logits[:, start:start + n]
        start += n
    return out


def probs18(logits, head: str):
    """18-class probabilities of a model's output (a torch tensor); for three heads, the joint of their
    softmaxes (class = mask*6+gender*3+age); for one task's head (train.py --task), the joint of its softmax
    with the other tasks uniform, so that the task's marginal is the model's and the others say nothing."""
    import torch

    if head == "single":
        return torch.softmax(logits.float(), dim=1)
    if head in TASKS:
        n = len(logits)
        p = {t: torch.full((n, k), 1.0 / k, device=logits.device) for t, k in TASKS.items()}
        p[head] = torch.softmax(logits.float(), dim=1)
    else:
        p = {t: torch.softmax(v.float(), dim=1) for t, v in split_logits(logits).items()}
    return joint(p["mask"], p["gender"], p["age"])


def task_scores(y_true, probs: np.ndarray, task: str | None) -> dict[str, float]:
    """A validation's scores from 18-class probabilities: `scores` of their argmax (and the mean log loss of the
    true class), or, for one task's model, that task's macro F1 as `f1` and `f1_<task>`, its accuracy and log
    loss (the other tasks' F1 are not its to score)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    q, t = (probs, y_true) if task is None else (marginals(probs)[task], task_targets(y_true, task))
    nll = float(-np.log(np.clip(q[np.arange(len(t)), t], 1e-12, None)).mean()) if len(t) else 0.0
    if task is None:
        return {**scores(t, q.argmax(1)), "loss": nll}
    f1 = macro_f1(t, q.argmax(1))
    return {"f1": f1, "acc": float((q.argmax(1) == t).mean()) if len(t) else 0.0, f"f1_{task}": f1, "loss": nll}


def task_of(probs: np.ndarray, tol: float = 1e-4) -> str | None:
    """The one task a probability set answers (a train.py --task model's: the other two tasks uniform on every
    row), or None for an 18-class answer."""
    m = marginals(np.asarray(probs, dtype=np.float64))
    flat = [t for t in TASKS if np.abs(m[t] - 1.0 / TASKS[t]).max(initial=0.0) < tol]
    return next((t for t in TASKS if t not in flat), None) if len(flat) == len(TASKS) - 1 else None


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's macro F1 (over the classes present in either array), from counts: 57-105x faster
    (18,900 and 400 labels), for searches that score thousands of candidate predictions."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    n = int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    tp = np.bincount(y_true[y_true == y_pred], minlength=n)
    true, pred = np.bincount(y_true, minlength=n), np.bincount(y_pred, minlength=n)
    present = (true + pred) > 0
    return float((2 * tp[present] / (true[present] + pred[present])).mean()) if present.any() else 0.0


def scores(y_true, y_pred) -> dict[str, float]:
    """Macro F1 over the 18 classes of the whole set (never averaged over batches), accuracy, per-task F1."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    out = {"f1": macro_f1(y_true, y_pred), "acc": float((y_true == y_pred).mean()) if len(y_true) else 0.0}
    for task, t, p in zip(TASKS, decode(y_true), decode(y_pred)):
        out[f"f1_{task}"] = macro_f1(t, p)
    return out


def class_name(c: int) -> str:
    """'13 none/M/30-59': a class code a person can read (mask worn, worn wrongly or none; gender; age)."""
    m, g, a = decode(int(c))
    return f"{int(c)} {('worn', 'wrong', 'none')[m]}/{'MF'[g]}/{('<30', '30-59', '60+')[a]}"


def task_f1(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Macro F1 over the 18 classes and of each task."""
    s = scores(y, pred)
    return {"f1": s["f1"], **{t: s[f"f1_{t}"] for t in TASKS}}


def per_class_f1(y_true, y_pred) -> list[float]:
    """F1 of each of the 18 classes (0 for a class neither array holds)."""
    from sklearn.metrics import f1_score

    return [float(f) for f in f1_score(y_true, y_pred, labels=range(NUM_CLASSES), average=None, zero_division=0)]


def train_targets(df, old_age: int) -> np.ndarray:
    """Training labels with ages >= old_age moved to the old band (the teams' 58/59 trick). A photo whose age
    band a fix set (split.py --fixes: an age or photo fix, named in the `fix` column) keeps that band: the fix
    says which band the person is in, whatever --old-age does to the ages near it."""
    band = age_label(df["age"].to_numpy(), old_age)
    if "fix" in df.columns and "age_label" in df.columns:
        fixed = df["fix"].map(lambda f: isinstance(f, str) and bool({"age", "photo"} & set(f.split(";")))).to_numpy()
        band = np.where(fixed, df["age_label"].to_numpy(), band)
    return encode(df["mask_label"].to_numpy(), df["gender_label"].to_numpy(), band)
