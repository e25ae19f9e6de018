#!/usr/bin/env bash
# The steps after training, in the fine-tuning regime: bench/finetune.sh's base runs (a pretrained
# tf_efficientnet_lite0, two seeds) scored with each step the recipe may add, same folds, CV and test macro F1:
#   notta        the eval photos alone (predict.py --tta none; base is predict.py's default, the flip): test F1
#                only (bench/truth_f1.py), since the runs' oof.csv holds flipped answers, $OUT/steps/tta.jsonl
#   final        the final model alone (train.py --fold all, the run's epochs; its CV is the K folds')
#   folds+final  the K fold models and the final model averaged in one predict.py call
#   bias         ensemble.py --bias (class offsets fitted out of fold; kept only where they gain there)
#   person       one answer per person: people.py's groups of the eval photos (looks and answers), the train
#                photos grouped with them for the out-of-fold check that decides (ensemble.py --oof-people)
#
#   bash bench/finetune.sh && bash bench/finetune_steps.sh     # about 15 minutes on 2 cores after finetune.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/finetune_base.sh
source bench/finetune_base.sh
# shellcheck source=bench/common.sh
source bench/common.sh
R=$OUT/runs
P=$OUT/probs
EV=(--images "$OUT/crops/eval" --info "$D/eval/info.csv")
mkdir -p "$OUT/steps"
SCORES=$OUT/steps/scores.jsonl
: > "$SCORES"
for s in $SEEDS; do
  [ -f "$P/base_s$s.csv" ] || { echo "no $P/base_s$s.csv: run bench/finetune.sh first" >&2; exit 2; }
  log "seed $s: the eval photos without TTA; the final model"
  [ -f "$P/notta_s$s.csv" ] || $PY predict.py "$R/base_s$s" "${EV[@]}" --tta none -o "$P/notta_s$s.csv" > /dev/null
  $PY train.py "$OUT/folds.csv" "${TRAIN[@]}" --seed "$s" --run-name "base_s$s" --fold all --skip-done > /dev/null
  [ -f "$P/final_s$s.csv" ] || $PY predict.py "$R/base_s$s/fold_all/best.pt" "${EV[@]}" -o "$P/final_s$s.csv" \
      > /dev/null 2>&1
  [ -f "$P/folds_final_s$s.csv" ] || $PY predict.py "$R/base_s$s" "$R/base_s$s/fold_all/best.pt" "${EV[@]}" \
      -o "$P/folds_final_s$s.csv" > /dev/null 2>&1
  log "seed $s: people"
  $PY people.py "$D/eval/images" -o "$OUT/people_s$s.csv" --info "$D/eval/info.csv" --probs "$P/base_s$s.csv" \
      --also "$D/train/images" --also-out "$OUT/people_train_s$s.csv" --also-probs "$R/base_s$s" \
      --truth "$D/eval/people_truth.csv" --overwrite > "$OUT/people_s$s.json"
done
for s in $SEEDS; do
  score "base_s$s" "$R/base_s$s" "$P/base_s$s.csv"
  score "final_s$s" "$R/base_s$s" "$P/final_s$s.csv"
  score "folds+final_s$s" "$R/base_s$s" "$P/folds_final_s$s.csv"
  score "bias_s$s" "$R/base_s$s" "$P/base_s$s.csv" --bias
  score "person_s$s" "$R/base_s$s" "$P/base_s$s.csv" --people "$OUT/people_s$s.csv" \
      --oof-people "$OUT/people_train_s$s.csv"
done
for s in $SEEDS; do
  $PY bench/truth_f1.py "$D/eval/truth.csv" "$P/base_s$s.csv" "$P/notta_s$s.csv"
done > "$OUT/steps/tta.jsonl"
$PY bench/levers_table.py "$OUT/steps" | tee "$OUT/steps/steps.txt"
cat "$OUT/steps/tta.jsonl"
