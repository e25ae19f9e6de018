#!/usr/bin/env bash
# Pseudo-labels measured: for each training seed, round one (folds.csv alone), its eval predictions, people.py
# on the eval photos, pseudo.py (each fold's labels from that fold's models), round two (train.py --extra), and
# both rounds and their blend scored out of fold (CV) and on the hidden truth, each with and without one answer
# per person. Same data, same folds, same seeds for every variant.
#
#   bash bench/pseudo.sh                                         # 300 train, 300 eval people, seeds 42 and 1
#   PEOPLE=200 EVAL_PEOPLE=50 bash bench/pseudo.sh               # make demo's size
#   VARIANTS="people soft photo leak" bash bench/pseudo.sh       # also soft, photo-by-photo labels, the leaky way
#
# Variants of round two: people (pseudo.py --people, the default), soft (the same with train.py --extra-soft),
# photo (without --people: photo by photo), leak (the same rows, every fold's label taken from all folds' average: what a hand-written pipeline does; its
# record is rewritten so train.py takes it: a demonstration, never a recipe). DATA/WORK reuse a demo and its
# crops and folds.csv when they exist. Writes $WORK/scores.jsonl; bench/README.md keeps the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PEOPLE=${PEOPLE:-300}
EVAL_PEOPLE=${EVAL_PEOPLE:-300}
SEEDS=${SEEDS:-42 1}
VARIANTS=${VARIANTS:-people}
MIN_CONF=${MIN_CONF:-0.7}
EPOCHS=${EPOCHS:-12}
FOLDS=${FOLDS:-3}
WORK=${WORK:-bench/out/pseudo_${PEOPLE}_${EVAL_PEOPLE}}
DATA=${DATA:-$WORK/data}
MODEL=mobilenetv3_small_100
TRAIN=(--model $MODEL --no-pretrained --epochs "$EPOCHS" --img-size 96 72 --batch-size 32 --lr 3e-3 --head multi
       --loss weighted_ce)
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
mkdir -p "$WORK"
if [ ! -f "$WORK/folds.csv" ]; then
  log "demo ($PEOPLE train, $EVAL_PEOPLE eval people), crops, folds"
  $PY demo.py "$DATA" --train-people "$PEOPLE" --eval-people "$EVAL_PEOPLE" --seed 0 --overwrite > /dev/null
  $PY crop.py "$DATA/train/images" "$WORK/crops/train" --overwrite > /dev/null
  $PY crop.py "$DATA/eval/images" "$WORK/crops/eval" --overwrite > /dev/null
  $PY split.py "$DATA/train/train.csv" "$WORK/crops/train" -o "$WORK/folds.csv" --folds "$FOLDS" --overwrite > /dev/null
fi
EV=(--info "$DATA/eval/info.csv")
train_run() {  # run-name seed [train.py options]; a run already predicted is left as it is
  local run=$1 seed=$2; shift 2
  [ -f "$WORK/probs_$run.csv" ] && return
  for k in $(seq 0 $((FOLDS - 1))); do
    log "train $run fold $k"
    $PY train.py "$WORK/folds.csv" --run-name "$run" --fold "$k" --out "$WORK/runs" --seed "$seed" "${TRAIN[@]}" \
        --skip-done "$@" > "$WORK/train_${run}_$k.log" 2>&1
  done
  $PY predict.py "$WORK/runs/$run" --images "$WORK/crops/eval" "${EV[@]}" \
      -o "$WORK/probs_$run.csv" > /dev/null 2>&1
}
score() {  # name seed probability CSVs...
  local name=$1 seed=$2; shift 2
  $PY ensemble.py "$@" "${EV[@]}" -o "$WORK/sub_$name.csv" --people "$WORK/people_s$seed.csv" \
      --truth "$DATA/eval/truth.csv" --overwrite 2> "$WORK/ensemble_$name.log" | tail -1 \
    | $PY -c "import json, sys; s = json.loads(sys.stdin.read()); print(json.dumps({'variant': '$name', \
'seed': $seed, **{k: s.get(k) for k in ('cv_f1', 'test_f1_without_people', 'test_f1_with_people')}}))" \
    >> "$WORK/scores.jsonl"
}
for seed in $SEEDS; do
  train_run "r1_s$seed" "$seed"
  [ -f "$WORK/people_s$seed.csv" ] || $PY people.py "$DATA/eval/images" "${EV[@]}" -o "$WORK/people_s$seed.csv" \
      --probs "$WORK/probs_r1_s$seed.csv" > /dev/null 2>&1
  score "r1_s$seed" "$seed" "$WORK/probs_r1_s$seed.csv"
  for v in $VARIANTS; do
    pseudo=$WORK/pseudo_${v}_s$seed.csv
    if [ ! -f "$pseudo" ]; then
      log "pseudo-labels $v seed $seed"
      if [ "$v" = photo ]; then P=(); else P=(--people "$WORK/people_s$seed.csv"); fi
      $PY pseudo.py "$WORK/probs_r1_s$seed.csv" "${EV[@]}" --images "$WORK/crops/eval" "${P[@]}" -o "$pseudo" \
          --min-conf "$MIN_CONF" --truth "$DATA/eval/truth.csv" > "$WORK/pseudo_${v}_s$seed.json"
      if [ "$v" = leak ]; then  # every fold's label from the average of all folds, on the same rows
        $PY - "$pseudo" <<'PYEOF'
import json, sys
import pandas as pd
from maskfold.probs import sha256
path = sys.argv[1]
df = pd.read_csv(path, dtype={"id": str})
for c in [c for c in df.columns if c.startswith("label_fold")]:
    df[c] = df[c].where(df[c] < 0, df["label"])
df.to_csv(path, index=False, float_format="%.6g")
rec = json.load(open(path + ".json"))
rec["sha256"] = sha256(path)
json.dump(rec, open(path + ".json", "w"))
PYEOF
      fi
    fi
    if [ "$v" = soft ]; then S=(--extra-soft); else S=(); fi
    train_run "r2${v}_s$seed" "$seed" --extra "$pseudo" "${S[@]}"
    score "r2${v}_s$seed" "$seed" "$WORK/probs_r2${v}_s$seed.csv"
    score "r1+r2${v}_s$seed" "$seed" "$WORK/probs_r1_s$seed.csv" "$WORK/probs_r2${v}_s$seed.csv" \
      || log "blend of both rounds not scored: see $WORK/ensemble_r1+r2${v}_s$seed.log"
  done
done
$PY - "$WORK" <<'PYEOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
print(f"{'variant':<22}{'seed':>5}{'CV':>8}{'test':>8}{'+people':>9}{'test-CV':>9}")
rows = {}
for line in (work / "scores.jsonl").read_text().splitlines():
    s = json.loads(line)
    rows[s["variant"]] = s  # the last score of each
for s in rows.values():
    print(f"{s['variant']:<22}{s['seed']:>5}{s['cv_f1']:>8.4f}{s['test_f1_without_people']:>8.4f}"
          f"{s['test_f1_with_people']:>9.4f}{s['test_f1_without_people'] - s['cv_f1']:>+9.4f}")
for f in sorted(work.glob("pseudo_*_s*.json")):
    lines = f.read_text().strip().splitlines()
    s = json.loads(lines[-1]) if lines else {}
    if "share_per_fold" not in s:
        continue  # a pseudo.py that did not finish
    print(f.stem, "share", s["share_per_fold"], "right", {k: v["right"] for k, v in s["right_per_fold"].items()})
PYEOF
