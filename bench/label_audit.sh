#!/usr/bin/env bash
# Label noise, the audit and its fixes, measured: for each noise rate the harder demo is drawn with the same
# seed (the same people and eval folder; only which labels are wrong differs), trained three times on the
# same folds (as labelled; after the audit's surest person-level rows are applied with split.py --fixes; on
# the true labels) and each run scored out of fold and on the hidden truth.
#
#   bash bench/label_audit.sh                               # 300 train and 300 eval people, noise 1.4% and 5%
#   PEOPLE=200 EVAL_PEOPLE=50 NOISES="0.014 0.05" bash bench/label_audit.sh   # make demo's size
#
# Writes $OUT/scores.json and prints a table; bench/README.md keeps the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PEOPLE=${PEOPLE:-300}
EVAL_PEOPLE=${EVAL_PEOPLE:-300}
NOISES=${NOISES:-0.014 0.05}
EPOCHS=${EPOCHS:-12}
FOLDS=${FOLDS:-3}
SEED=${SEED:-0}
ACCEPT=${ACCEPT:-0.9}
OUT=${OUT:-bench/out/label_audit_${PEOPLE}}
MODEL=mobilenetv3_small_100
TRAIN=(--model $MODEL --no-pretrained --epochs "$EPOCHS" --img-size 96 72 --batch-size 32 --lr 3e-3 --head multi
       --loss weighted_ce)
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
mkdir -p "$OUT"
: > "$OUT/scores.jsonl"
for noise in $NOISES; do
  data=$OUT/data_$noise work=$OUT/work_$noise
  log "noise $noise: demo, crops, folds"
  $PY demo.py "$data" --train-people "$PEOPLE" --eval-people "$EVAL_PEOPLE" --seed "$SEED" --label-noise "$noise" \
      --overwrite > /dev/null
  $PY crop.py "$data/train/images" "$work/crops/train" --overwrite > /dev/null
  $PY crop.py "$data/eval/images" "$work/crops/eval" --overwrite > /dev/null
  $PY split.py "$data/train/train.csv" "$work/crops/train" -o "$work/folds_noisy.csv" --folds "$FOLDS" \
      --seed "$SEED" --overwrite > /dev/null
  # the true labels, as fixes: the injected errors undone
  $PY - "$data/train" "$work/fixes_truth.csv" <<'PYEOF'
import sys
from pathlib import Path
import pandas as pd
train = Path(sys.argv[1])
folder = dict(zip(*pd.read_csv(train / "train.csv", dtype=str)[["id", "path"]].T.values))
rows = []
for r in pd.read_csv(train / "label_noise.csv", dtype=str).itertuples():
    rows.append({"person": folder[r.id], "path": "", "field": r.kind,
                 "label": "incorrect_mask/normal as named" if r.kind == "swap" else r.recorded,
                 "suggested": "swapped" if r.kind == "swap" else r.true})
pd.DataFrame(rows, columns=["person", "path", "field", "label", "suggested"]).to_csv(sys.argv[2], index=False)
PYEOF
  $PY split.py "$data/train/train.csv" "$work/crops/train" -o "$work/folds_clean.csv" --folds "$FOLDS" \
      --seed "$SEED" --fixes "$work/fixes_truth.csv" --overwrite > /dev/null
  for labels in noisy fixed clean; do
    if [ "$labels" = fixed ]; then
      log "noise $noise: audit"
      $PY audit.py "$work/runs/noisy" --folds-csv "$work/folds_noisy.csv" -o "$work/label_issues.csv" \
          --truth "$data/train/label_noise.csv" --accepted "$work/fixes_accepted.csv" --accept "$ACCEPT" \
          --overwrite > "$work/audit.json"
      $PY split.py "$data/train/train.csv" "$work/crops/train" -o "$work/folds_fixed.csv" --folds "$FOLDS" \
          --seed "$SEED" --fixes "$work/fixes_accepted.csv" --overwrite > /dev/null
    fi
    rm -rf "$work/runs/$labels"
    for k in $(seq 0 $((FOLDS - 1))); do
      log "noise $noise: train $labels fold $k"
      $PY train.py "$work/folds_$labels.csv" "${TRAIN[@]}" --out "$work/runs" --run-name "$labels" --fold "$k" \
          > /dev/null
    done
    $PY predict.py "$work/runs/$labels" --images "$work/crops/eval" --info "$data/eval/info.csv" \
        -o "$work/probs_$labels.csv" --overwrite > /dev/null
    $PY ensemble.py "$work/probs_$labels.csv" --info "$data/eval/info.csv" -o "$work/sub_$labels.csv" \
        --truth "$data/eval/truth.csv" --overwrite 2> /dev/null | tail -1 \
      | $PY -c "import json, sys; s = json.loads(sys.stdin.read()); s.update(noise=$noise, labels='$labels'); \
print(json.dumps(s))" >> "$OUT/scores.jsonl"
  done
done
$PY - "$OUT" $NOISES <<'EOF2'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
audits = {n: json.loads((out / f"work_{n}" / "audit.json").read_text().strip().splitlines()[-1])
          for n in sys.argv[2:]}
print(f"{'noise':>6} {'labels':7} {'CV':>7} {'test':>7} {'mask':>7} {'gender':>7} {'age':>7}")
for r in rows:
    t = r["test_f1_tasks"]
    print(f"{r['noise']:6} {r['labels']:7} {r['cv_f1']:7.4f} {r['test_f1']:7.4f} {t['mask']:7.4f} "
          f"{t['gender']:7.4f} {t['age']:7.4f}")
for n, a in audits.items():
    print(f"noise {n}: audit {json.dumps(a.get('against_truth'))}")
(out / "scores.json").write_text(json.dumps({"runs": rows, "audits": audits}, indent=1))
EOF2
