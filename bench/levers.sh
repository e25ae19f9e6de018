#!/usr/bin/env bash
# The winners' levers on the harder demo, each against the same baseline, same folds, two seeds: the samplers,
# a fraction of the set per epoch, timm's optimizers, layer-wise lr decay, drop-path, averaged checkpoints; then
# one pseudo-label round with one --min-conf against per-task thresholds.
#
#   bash bench/levers.sh           # 200 train and 300 eval people, 12 epochs, 3 folds: about 50 minutes on 2 cores
#
# Every run's eval photos are predicted in one predict.py --per-run call. Prints one table (CV and test macro F1,
# per task, minutes per fold; each variant's mean over the seeds and its gain over the baseline's) and writes
# $OUT/levers.json; bench/README.md keeps the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PEOPLE=${PEOPLE:-200}
EVAL_PEOPLE=${EVAL_PEOPLE:-300}
EPOCHS=${EPOCHS:-12}
FOLDS=${FOLDS:-3}
SEEDS=${SEEDS:-"42 1"}
PSEUDO=${PSEUDO:-1}
OUT=${OUT:-bench/out/levers}
MODEL=mobilenetv3_small_100
TRAIN=(--model $MODEL --no-pretrained --epochs "$EPOCHS" --img-size 96 72 --batch-size 32 --lr 3e-3 --head multi
       --loss weighted_ce --out "$OUT/runs")
# name|flags: each variant changes one thing of the baseline (make demo's training)
VARIANTS=${VARIANTS:-"base|
balanced|--sampler balanced
sqrt|--sampler sqrt
fraction|--sampler sqrt --epoch-fraction 0.5 --epochs $((EPOCHS * 2))
lion|--opt lion --lr 3e-4
adamp|--opt adamp
layerdecay|--layer-decay 0.8
droppath|--drop-path 0.1
avgbest|--avg-best 3"}
# shellcheck source=bench/common.sh
source bench/common.sh
runs=()
train_variants
log "predict every run, one decode (--per-run)"
$PY predict.py "${runs[@]}" --images "$OUT/crops/eval" --info "$D/eval/info.csv" --per-run "$OUT/probs" \
    --overwrite > "$OUT/predict.json"
if [ "$PSEUDO" = 1 ]; then
  # one pseudo-label round from each seed's baseline: one threshold for every task against the winner's per task
  $PY people.py "$D/eval/images" -o "$OUT/people_looks.csv" --info "$D/eval/info.csv" --overwrite > /dev/null
  for seed in $SEEDS; do
    for conf in "0.7" "mask=0.9,gender=0.9,age=0.8"; do
      tag=$([ "$conf" = 0.7 ] && echo one || echo pertask)
      [ -f "$OUT/pseudo_${tag}_s$seed.csv" ] || $PY pseudo.py "$OUT/probs/base_s$seed.csv" --info "$D/eval/info.csv" \
          --images "$OUT/crops/eval" --people "$OUT/people_looks.csv" --min-conf "$conf" --truth "$D/eval/truth.csv" \
          -o "$OUT/pseudo_${tag}_s$seed.csv" > "$OUT/pseudo_${tag}_s$seed.json"
      train_run "pseudo_${tag}_s$seed" --seed "$seed" --extra "$OUT/pseudo_${tag}_s$seed.csv"
      runs+=("$OUT/runs/pseudo_${tag}_s$seed")
    done
  done
  pseudo_runs=(); for r in "${runs[@]}"; do case $r in */pseudo_*) pseudo_runs+=("$r");; esac; done
  $PY predict.py "${pseudo_runs[@]}" --images "$OUT/crops/eval" --info "$D/eval/info.csv" --per-run "$OUT/probs" \
      --overwrite > /dev/null
fi
score_runs
$PY bench/levers_table.py "$OUT" | tee "$OUT/levers.txt"
