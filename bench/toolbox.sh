#!/usr/bin/env bash
# The training toolbox on the harder demo: each augmentation preset against `seed` (the team baseline), over
# seeds, same folds; each TTA on every run's CV and test F1; fitted blend weights against equal weights.
#
#   bash bench/toolbox.sh          # 200 train and 300 eval people, 12 epochs; about 40 minutes on 2 cores
#
# Writes $OUT/*.json and prints tables; bench/README.md keeps the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PEOPLE=${PEOPLE:-200}
EVAL_PEOPLE=${EVAL_PEOPLE:-300}
EPOCHS=${EPOCHS:-12}
FOLDS=${FOLDS:-3}
OUT=${OUT:-bench/out/toolbox}
# preset:seed pairs: the single-family presets and light once, seed and strong twice
RUNS=${RUNS:-"seed:42 seed:1 light:42 strong:42 strong:1 ssr:42 dropout:42 noise:42 colour:42"}
MODEL=mobilenetv3_small_100
TRAIN=(--model $MODEL --no-pretrained --epochs "$EPOCHS" --img-size 96 72 --batch-size 32 --lr 3e-3 --head multi
       --loss weighted_ce --out "$OUT/runs")
# shellcheck source=bench/common.sh
source bench/common.sh
names=()
for pair in $RUNS; do
  aug=${pair%:*} seed=${pair#*:} name=${pair%:*}_s${pair#*:}
  names+=("$OUT/runs/$name")
  for k in $(seq 0 $((FOLDS - 1))); do
    log "train $name fold $k"
    $PY train.py "$OUT/folds.csv" "${TRAIN[@]}" --aug "$aug" --seed "$seed" --run-name "$name" --fold "$k" \
        --skip-done > /dev/null
  done
  [ -f "$OUT/probs_$name.csv" ] || $PY predict.py "$OUT/runs/$name" --images "$OUT/crops/eval" \
      --info "$D/eval/info.csv" -o "$OUT/probs_$name.csv" > /dev/null
done
log "TTA"
$PY bench/tta_aug.py "${names[@]}" --folds "$OUT/folds.csv" --images "$OUT/crops/eval" --info "$D/eval/info.csv" \
    --truth "$D/eval/truth.csv" --tta none --tta flip --tta flip,shift --tta flip,scale \
    | tee "$OUT/tta.txt" | tail -1 > "$OUT/tta.json"
log "fitted weights"
: > "$OUT/blends.jsonl"
for trio in "seed_s42 light_s42 strong_s42" "ssr_s42 dropout_s42 noise_s42 colour_s42" "light_s42 strong_s42"; do
  inputs=(); for n in $trio; do inputs+=("$OUT/probs_$n.csv"); done
  for how in none blend task; do
    $PY ensemble.py "${inputs[@]}" --info "$D/eval/info.csv" -o "$OUT/sub.csv" --truth "$D/eval/truth.csv" \
        --fit-weights "$how" --overwrite 2> /dev/null | tail -1 \
      | $PY -c "import json, sys; s = json.loads(sys.stdin.read()); s.update(inputs='$trio', how='$how'); \
print(json.dumps(s))" >> "$OUT/blends.jsonl"
  done
done
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for line in (out / "blends.jsonl").read_text().splitlines():
    r = json.loads(line)
    fw = r.get("fit_weights", {})
    print(f"{r['inputs']:40} {r['how']:6} CV {r['cv_f1']:.4f} test {r['test_f1']:.4f} inputs' CV {r['cv_inputs']} "
          f"held-out {fw.get('held_out_f1')} vs equal {fw.get('equal_f1')} applied {fw.get('applied')} "
          f"weights {r['recipe']}")
PYEOF
