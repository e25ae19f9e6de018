# Sourced by the bench scripts: the harder demo, its crops and folds.csv made once under $OUT, and one run's folds
# trained in turn. Set PY, OUT, PEOPLE, EVAL_PEOPLE and FOLDS before sourcing.
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
D=$OUT/data
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
mkdir -p "$OUT"
if [ ! -f "$OUT/folds.csv" ]; then
  log "demo, crops, folds"
  $PY demo.py "$D" --train-people "$PEOPLE" --eval-people "$EVAL_PEOPLE" --seed 0 --overwrite > /dev/null
  $PY crop.py "$D/train/images" "$OUT/crops/train" --overwrite > /dev/null
  $PY crop.py "$D/eval/images" "$OUT/crops/eval" --overwrite > /dev/null
  $PY split.py "$D/train/train.csv" "$OUT/crops/train" -o "$OUT/folds.csv" --folds "$FOLDS" --overwrite > /dev/null
fi
train_run() {  # name, then train.py's flags (TRAIN, the script's, first; FOLDS_CSV: another folds.csv)
  local name=$1; shift
  for k in $(seq 0 $((FOLDS - 1))); do
    log "train $name fold $k"
    $PY train.py "${FOLDS_CSV:-$OUT/folds.csv}" "${TRAIN[@]}" "$@" --run-name "$name" --fold "$k" --skip-done \
        > /dev/null
  done
}
score() {  # name, runs (comma-separated), then ensemble.py's inputs and flags: one line of $SCORES
  # ($OUT/scores.jsonl unless set)
  local name=$1 runs=$2; shift 2
  $PY ensemble.py "$@" --info "$D/eval/info.csv" -o "$OUT/sub.csv" --truth "$D/eval/truth.csv" --overwrite \
      2> /dev/null | tail -1 \
    | $PY -c "import json, sys; s = json.loads(sys.stdin.read()); s.update(name='$name', run='$runs'.split(',')); \
print(json.dumps(s))" >> "${SCORES:-$OUT/scores.jsonl}"
}
train_variants() {  # each line of $VARIANTS (name|flags) for each of $SEEDS: its run, added to the array runs
  local name flags seed
  while IFS='|' read -r name flags; do
    [ -n "$name" ] || continue
    for seed in $SEEDS; do
      # shellcheck disable=SC2086  # the flags are words
      train_run "${name}_s$seed" $flags --seed "$seed"
      runs+=("$OUT/runs/${name}_s$seed")
    done
  done <<< "$VARIANTS"
}
score_runs() {  # each run of the array runs, by its probabilities in $OUT/probs: $OUT/scores.jsonl afresh
  local r name
  : > "$OUT/scores.jsonl"
  for r in "${runs[@]}"; do
    name=$(basename "$r")
    score "$name" "$r" "$OUT/probs/$name.csv"
  done
}
