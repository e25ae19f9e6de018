#!/usr/bin/env bash
# One model per task and the final model on every person, on the harder demo, against make demo's 18-class
# training (base), same folds, two seeds:
#   base+age     base, its age answer from an age-only model (train.py --task age) on the same crops
#   base+age_photo  the same from an age-only model on the whole photos at 128x96 (the winner's age input)
#   three        mask, gender and age each from a model of its own on the crops (no 18-class model)
#   final        the final model alone (train.py --fold all --epochs 12; its CV is the K folds')
#   folds+final  the K fold models and the final model averaged in one predict.py call
#
#   bash bench/tasks.sh            # 200 train and 300 eval people, 12 epochs, 3 folds: about 40 minutes on 2 cores
#
# Prints one table (CV and test macro F1, per task, minutes per fold of all the runs a submission takes) and
# writes $OUT/levers.json; bench/README.md keeps the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PEOPLE=${PEOPLE:-200}
EVAL_PEOPLE=${EVAL_PEOPLE:-300}
EPOCHS=${EPOCHS:-12}
FOLDS=${FOLDS:-3}
SEEDS=${SEEDS:-"42 1"}
OUT=${OUT:-bench/out/tasks}
MODEL=mobilenetv3_small_100
TRAIN=(--model $MODEL --no-pretrained --epochs "$EPOCHS" --img-size 96 72 --batch-size 32 --lr 3e-3
       --loss weighted_ce --out "$OUT/runs")
# shellcheck source=bench/common.sh
source bench/common.sh
if [ ! -f "$OUT/folds_photos.csv" ]; then  # the same people in the same folds, on the whole photos
  $PY split.py "$D/train/train.csv" "$D/train/images" -o "$OUT/folds_photos.csv" --folds "$FOLDS" > /dev/null
  $PY -c "import pandas as pd, sys; a, b = (pd.read_csv(f).drop_duplicates('person').set_index('person')['fold'] \
for f in sys.argv[1:]); assert a.sort_index().equals(b.sort_index()), 'the two splits differ'" \
      "$OUT/folds.csv" "$OUT/folds_photos.csv"
fi
: > "$OUT/scores.jsonl"
for s in $SEEDS; do
  train_run "base_s$s" --head multi --seed "$s"
  for t in mask gender age; do train_run "${t}_s$s" --task "$t" --seed "$s"; done
  FOLDS_CSV=$OUT/folds_photos.csv train_run "age_photo_s$s" --task age --img-size 128 96 --seed "$s"
  log "train base_s$s fold all"
  $PY train.py "$OUT/folds.csv" "${TRAIN[@]}" --head multi --seed "$s" --run-name "base_s$s" --fold all \
      --skip-done > /dev/null
  R=$OUT/runs
  log "predict seed $s"
  $PY predict.py "$R/base_s$s" "$R/mask_s$s" "$R/gender_s$s" "$R/age_s$s" --images "$OUT/crops/eval" \
      --info "$D/eval/info.csv" --per-run "$OUT/probs" --overwrite > /dev/null
  $PY predict.py "$R/age_photo_s$s" --images "$D/eval/images" --info "$D/eval/info.csv" --per-run "$OUT/probs" \
      --overwrite > /dev/null
  $PY predict.py "$R/base_s$s/fold_all/best.pt" --images "$OUT/crops/eval" --info "$D/eval/info.csv" \
      -o "$OUT/probs/final_s$s.csv" --overwrite > /dev/null 2>&1
  $PY predict.py "$R/base_s$s" "$R/base_s$s/fold_all/best.pt" --images "$OUT/crops/eval" --info "$D/eval/info.csv" \
      -o "$OUT/probs/folds_final_s$s.csv" --overwrite > /dev/null 2>&1
  P=$OUT/probs
  score "base_s$s" "$R/base_s$s" "$P/base_s$s.csv"
  score "base+age_s$s" "$R/base_s$s,$R/age_s$s" "$P/base_s$s.csv" "$P/age_s$s.csv" --age-from 2
  score "base+age_photo_s$s" "$R/base_s$s,$R/age_photo_s$s" "$P/base_s$s.csv" "$P/age_photo_s$s.csv" --age-from 2
  score "three_s$s" "$R/mask_s$s,$R/gender_s$s,$R/age_s$s" "$P/mask_s$s.csv" "$P/gender_s$s.csv" "$P/age_s$s.csv" \
      --mask-from 1 --gender-from 2 --age-from 3
  score "final_s$s" "$R/base_s$s" "$P/final_s$s.csv"
  score "folds+final_s$s" "$R/base_s$s" "$P/folds_final_s$s.csv"
done
$PY bench/levers_table.py "$OUT" | tee "$OUT/tasks.txt"
