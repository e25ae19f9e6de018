#!/usr/bin/env bash
# One answer per person at the real eval folder's size: the grouping with and without the model's answers
# (people.py --probs), and the out-of-fold check made on the train photos grouped alone or grouped together
# with the eval photos (--also), each scored against the demo's hidden truth.
#
#   RUN=bench/out/label_audit_300/work_0.014/runs/noisy TRAIN_IMAGES=bench/out/label_audit_300/data_0.014/train/images \
#       bash bench/people_scale.sh
#
# RUN: a finished run trained on the harder demo of PEOPLE train people drawn with SEED, whose train tree is
# TRAIN_IMAGES (the same people are drawn again here with EVAL_PEOPLE eval people, 1,800, the real eval
# folder's size; their label noise may differ, so the run's own train tree is grouped).
# Writes $OUT/scores.json and prints a table; bench/README.md keeps the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PEOPLE=${PEOPLE:-300}
EVAL_PEOPLE=${EVAL_PEOPLE:-1800}
SEED=${SEED:-0}
NOISE=${NOISE:-0.014}
RUN=${RUN:?a finished run on the same train people}
OUT=${OUT:-bench/out/people_scale}
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
TRAIN_IMAGES=${TRAIN_IMAGES:?the train tree RUN was trained on}
mkdir -p "$OUT"
D=$OUT/data
if [ ! -f "$OUT/probs.csv" ]; then
  log "demo: $PEOPLE train and $EVAL_PEOPLE eval people"
  $PY demo.py "$D" --train-people "$PEOPLE" --eval-people "$EVAL_PEOPLE" --seed "$SEED" --label-noise "$NOISE" --overwrite >/dev/null
  log "crop the eval photos"
  $PY crop.py "$D/eval/images" "$OUT/crops_eval" --overwrite > /dev/null
  log "predict"
  $PY predict.py "$RUN" --images "$OUT/crops_eval" --info "$D/eval/info.csv" -o "$OUT/probs.csv" --overwrite > /dev/null
fi
EV=("$D/eval/images" --info "$D/eval/info.csv" --truth "$D/eval/people_truth.csv" --overwrite)
log "people: looks alone"
$PY people.py "${EV[@]}" -o "$OUT/people_plain.csv" > "$OUT/people_plain.json"
$PY people.py "$TRAIN_IMAGES" --flatten -o "$OUT/train_alone.csv" --overwrite > "$OUT/train_alone.json"
log "people: with the model's answers"
$PY people.py "${EV[@]}" -o "$OUT/people_probs.csv" --probs "$OUT/probs.csv" > "$OUT/people_probs.json"
log "people: looks alone, train photos grouped with the eval photos"
$PY people.py "${EV[@]}" -o "$OUT/people_joint_plain.csv" --also "$TRAIN_IMAGES" \
    --also-out "$OUT/train_joint_plain.csv" > "$OUT/people_joint_plain.json"
log "people: with the answers, train photos grouped with the eval photos"
$PY people.py "${EV[@]}" -o "$OUT/people_joint.csv" --probs "$OUT/probs.csv" --also "$TRAIN_IMAGES" \
    --also-out "$OUT/train_joint.csv" --also-probs "$RUN" > "$OUT/people_joint.json"
: > "$OUT/scores.jsonl"
for variant in "plain train_alone" "probs train_alone" "joint_plain train_joint_plain" "joint train_joint" \
               "joint train_joint --fit-min-sure"; do
  set -- $variant
  log "ensemble $variant"
  $PY ensemble.py "$OUT/probs.csv" --info "$D/eval/info.csv" -o "$OUT/sub.csv" --truth "$D/eval/truth.csv" \
      --people "$OUT/people_$1.csv" --oof-people "$OUT/$2.csv" ${3:-} --overwrite 2> "$OUT/ensemble_$1_$2${3:-}.log" \
    | tail -1 | $PY -c "import json, sys; s = json.loads(sys.stdin.read()); s['variant'] = '$variant'; \
print(json.dumps(s))" >> "$OUT/scores.jsonl"
done
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
last = lambda f: json.loads((out / f).read_text().strip().splitlines()[-1])
groupings = {n: last(f"people_{n}.json") for n in ("plain", "probs", "joint_plain", "joint")}
alone = last("train_alone.json")
print(f"{'grouping':12} {'purity':>7} {'sure':>7} {'est.':>7} {'seconds':>8} {'MiB':>6}")
for n, g in groupings.items():
    print(f"{n:12} {g['purity']:7.4f} {g['purity_sure']:7.4f} {g.get('estimated_purity', alone['purity']):7.4f} "
          f"{g['seconds']:8.1f} {g['peak_rss_mib']:6.0f}")
rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
print(f"{'variant':40} {'test':>7} {'+people':>7} {'change':>7} {'OOF est.':>8} {'applied':>7}")
for r in rows:
    change = r["test_f1_with_people"] - r["test_f1_without_people"]
    est = r["people_cv"]["f1_people"] - r["people_cv"]["f1"]
    print(f"{r['variant']:40} {r['test_f1_without_people']:7.4f} {r['test_f1_with_people']:7.4f} {change:+7.4f} "
          f"{est:+8.4f} {str(r['people_applied']):>7}")
(out / "scores.json").write_text(json.dumps({"groupings": groupings, "train_alone": alone, "variants": rows}, indent=1))
PYEOF
