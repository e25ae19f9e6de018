# Sourced by bench/finetune.sh and bench/finetune_steps.sh: the fine-tuning study's settings and its baseline's
# training flags, one copy, so that the steps' final models train exactly as the levers' base runs did.
PY=${PY:-.venv/bin/python}
PEOPLE=${PEOPLE:-200}
EVAL_PEOPLE=${EVAL_PEOPLE:-300}
EPOCHS=${EPOCHS:-4}
FOLDS=${FOLDS:-3}
SEEDS=${SEEDS:-"42 1"}
OUT=${OUT:-bench/out/finetune}
WEIGHTS=${WEIGHTS:-work/weights/tf_efficientnet_lite0.pth}
[ -f "$WEIGHTS" ] || $PY bench/lite_weights.py lite0 -o "$(dirname "$WEIGHTS")" > /dev/null
TRAIN=(--model tf_efficientnet_lite0 --pretrained-file "$WEIGHTS" --epochs "$EPOCHS" --img-size 96 72
       --batch-size 32 --lr 1e-3 --head multi --loss weighted_ce --workers 0 --out "$OUT/runs")
