#!/usr/bin/env bash
# The fine-tuning regime: a tf_efficientnet_lite0 started from real ImageNet weights (bench/lite_weights.py), each
# lever against the same baseline, same folds, two seeds, on the harder demo; CV and test macro F1.
#
#   bash bench/finetune.sh        # 200 train and 300 eval people, 4 epochs at 96x72, 3 folds: about 60 min on 2 cores
#
# VARIANTS (name|flags lines) chooses the levers; the table is bench/levers_table.py's, in $OUT/levers.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/finetune_base.sh
source bench/finetune_base.sh
VARIANTS=${VARIANTS:-"base|
lr3e-4|--lr 3e-4
lr3e-3|--lr 3e-3
frozen1|--freeze-epochs 1
ema|--ema 0.99
randaug|--aug randaugment
layerdecay|--layer-decay 0.7"}
# shellcheck source=bench/common.sh
source bench/common.sh
runs=()
train_variants
log "predict every run, one decode (--per-run)"
$PY predict.py "${runs[@]}" --images "$OUT/crops/eval" --info "$D/eval/info.csv" --per-run "$OUT/probs" \
    --overwrite > "$OUT/predict.json"
score_runs
$PY bench/levers_table.py "$OUT" | tee "$OUT/levers.txt"
