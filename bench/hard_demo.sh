#!/usr/bin/env bash
# The whole pipeline on the harder demo at a chosen size, with and without each option that claims to help
# (--old-age 58 in training; --bias and --people in the blend), scored against the demo's hidden truth.
#
#   bash bench/hard_demo.sh                                    # 600 train and 1,800 eval people, 12 epochs
#   PEOPLE=2700 EVAL_PEOPLE=1800 EPOCHS=10 bash bench/hard_demo.sh   # the real data's size (hours on 2 cores)
#
# Writes $WORK/scores.json (one object per variant) and prints a table; bench/README.md keeps the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PEOPLE=${PEOPLE:-600}
EVAL_PEOPLE=${EVAL_PEOPLE:-1800}
EPOCHS=${EPOCHS:-12}
FOLDS=${FOLDS:-3}
SEED=${SEED:-0}
DATA=${DATA:-bench/out/hard_data}
WORK=${WORK:-bench/out/hard_work}
MODEL=mobilenetv3_small_100
TRAIN=(--model $MODEL --no-pretrained --epochs "$EPOCHS" --img-size 96 72 --batch-size 32 --lr 3e-3 --head multi
       --loss weighted_ce --out "$WORK/runs")
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

log "demo: $PEOPLE train and $EVAL_PEOPLE eval people"
$PY demo.py "$DATA" --train-people "$PEOPLE" --eval-people "$EVAL_PEOPLE" --seed "$SEED" --overwrite > /dev/null
log "crop"
$PY crop.py "$DATA/train/images" "$WORK/crops/train" --overwrite > /dev/null
$PY crop.py "$DATA/eval/images" "$WORK/crops/eval" --overwrite > /dev/null
log "people"
$PY people.py "$DATA/eval/images" -o "$WORK/people.csv" --info "$DATA/eval/info.csv" \
    --truth "$DATA/eval/people_truth.csv" --overwrite > "$WORK/people.json"
$PY people.py "$DATA/train/images" --flatten -o "$WORK/people_train.csv" --overwrite > "$WORK/people_train.json"
$PY split.py "$DATA/train/train.csv" "$WORK/crops/train" -o "$WORK/folds.csv" --folds "$FOLDS" --overwrite > /dev/null
for run in base old58; do
  extra=(); [ "$run" = old58 ] && extra=(--old-age 58)
  for k in $(seq 0 $((FOLDS - 1))); do
    log "train $run fold $k"
    $PY train.py "$WORK/folds.csv" "${TRAIN[@]}" --run-name "$run" --fold "$k" "${extra[@]}" --skip-done > /dev/null
  done
  log "predict $run"
  $PY predict.py "$WORK/runs/$run" --images "$WORK/crops/eval" --info "$DATA/eval/info.csv" \
      -o "$WORK/probs_$run.csv" --overwrite > /dev/null
done
: > "$WORK/scores.jsonl"
for variant in "base" "base --bias" "base --people" "base --bias --people" "old58" "old58 --people"; do
  set -- $variant
  run=$1; shift
  people=(); for a in "$@"; do [ "$a" = --people ] && people=(--people "$WORK/people.csv" --oof-people "$WORK/people_train.csv"); done
  bias=(); for a in "$@"; do [ "$a" = --bias ] && bias=(--bias); done
  log "ensemble $variant"
  $PY ensemble.py "$WORK/probs_$run.csv" --info "$DATA/eval/info.csv" -o "$WORK/sub.csv" --truth "$DATA/eval/truth.csv" \
      "${bias[@]}" "${people[@]}" --overwrite 2> "$WORK/ensemble.log" | tail -1 \
    | $PY -c "import json, sys; s = json.loads(sys.stdin.read()); s['variant'] = '$variant'; print(json.dumps(s))" \
    >> "$WORK/scores.jsonl"
done
$PY - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
rows = [json.loads(line) for line in (work / "scores.jsonl").read_text().splitlines()]
people = json.loads((work / "people.json").read_text().strip().splitlines()[-1])
print(f"{'variant':22} {'CV':>6} {'mask':>6} {'gender':>6} {'age':>6} {'test':>6} {'mask':>6} {'gender':>6} "
      f"{'age':>6}  applied")
for r in rows:
    applied = ",".join(k.split("_")[0] for k in ("bias_applied", "people_applied") if r.get(k))
    cv, te = r["cv_f1_tasks"], r["test_f1_tasks"]
    print(f"{r['variant']:22} {r['cv_f1']:6.4f} {cv['mask']:6.4f} {cv['gender']:6.4f} {cv['age']:6.4f} "
          f"{r['test_f1']:6.4f} {te['mask']:6.4f} {te['gender']:6.4f} {te['age']:6.4f}  {applied}")
print(f"eval grouping: purity {people.get('purity')}, {people.get('purity_sure')} among the "
      f"{people.get('share_sure')} in sure groups; {people['photos']} photos in {people['seconds']} s")
(work / "scores.json").write_text(json.dumps({"variants": rows, "people": people}, indent=1))
EOF
