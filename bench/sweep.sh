#!/usr/bin/env bash
# A sweep as a team runs it, on the harder demo: two workers on one SQLite study (one core each), a fine-tuned
# tf_efficientnet_lite0 from ImageNet weights, TRIALS trials of the learning rate, loss, CutMix and
# augmentation, the median pruner; then the best trial's CV and test F1 against the default recipe's, and the
# time the pruner saved.
#
#   bash bench/sweep.sh            # 200 train and 300 eval people, 12 trials of 3 folds x 3 epochs at 96x72
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PEOPLE=${PEOPLE:-200}
EVAL_PEOPLE=${EVAL_PEOPLE:-300}
EPOCHS=${EPOCHS:-3}
FOLDS=${FOLDS:-3}
TRIALS=${TRIALS:-12}
OUT=${OUT:-bench/out/sweep}
WEIGHTS=${WEIGHTS:-work/weights/tf_efficientnet_lite0.pth}
[ -f "$WEIGHTS" ] || $PY bench/lite_weights.py lite0 -o "$(dirname "$WEIGHTS")" > /dev/null
# shellcheck source=bench/common.sh
source bench/common.sh
cat > "$OUT/space.yaml" <<YAML
models: [tf_efficientnet_lite0]
fixed: {pretrained_file: $WEIGHTS, epochs: $EPOCHS, img_size: [96, 72], batch_size: 32, head: multi,
        workers: 0, threads: 1}
space:
  lr: [3.0e-4, 1.0e-2, log]
  loss: [ce, weighted_ce, focal]
  cutmix: [0.0, 0.5]
  aug: [light, randaugment]
YAML
SWEEP=("$OUT/space.yaml" "$OUT/folds.csv" --study bench --storage "sqlite:///$OUT/sweep.db" --out "$OUT/runs"
       --trials "$TRIALS")
log "two workers, $TRIALS trials"
t0=$(date +%s)
$PY sweep.py "${SWEEP[@]}" --seed 1 > "$OUT/worker1.json" 2> "$OUT/worker1.log" &
$PY sweep.py "${SWEEP[@]}" --seed 2 > "$OUT/worker2.json" 2> "$OUT/worker2.log"
wait
echo "sweep seconds: $(( $(date +%s) - t0 ))" | tee "$OUT/seconds.txt"
$PY sweep.py "${SWEEP[@]}" --show > "$OUT/show.json" 2> "$OUT/table.txt"
best=$(tail -1 "$OUT/show.json" | $PY -c "import json,sys,re; print(re.search(r'--run-name (\S+)', json.loads(sys.stdin.read())['best_command']).group(1))")
log "the default recipe ($EPOCHS epochs, train.py's default lr, weighted_ce, light) on the same folds, and the best trial"
TRAIN=(--model tf_efficientnet_lite0 --pretrained-file "$WEIGHTS" --epochs "$EPOCHS" --img-size 96 72 --batch-size 32
       --head multi --loss weighted_ce --workers 0 --out "$OUT/runs")
train_run default
$PY predict.py "$OUT/runs/default" "$OUT/runs/$best" --images "$OUT/crops/eval" --info "$D/eval/info.csv" \
    --per-run "$OUT/probs" --overwrite > /dev/null
: > "$OUT/scores.jsonl"
score default_s0 "$OUT/runs/default" "$OUT/probs/default.csv"
score best_s0 "$OUT/runs/$best" "$OUT/probs/$best.csv"
$PY bench/levers_table.py "$OUT" --base default | tee "$OUT/levers.txt"
cat "$OUT/table.txt"
