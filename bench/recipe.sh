#!/usr/bin/env bash
# The README's real-data recipe, run as written on demo data: only its three variables are set (a small
# harder demo, two small models, 3 folds) and the round-1 training line gets the options a CPU without
# internet needs (no pretrained weights, 2 epochs at 64x48). Its work/ lies in bench/out/recipe/.
#   bash bench/recipe.sh                # PEOPLE=40 EVAL_PEOPLE=15 MODELS="mobilenetv3_small_100 resnet18"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$root/.venv/bin:$PATH" NO_ALBUMENTATIONS_UPDATE=1
people=${PEOPLE:-40}; eval_people=${EVAL_PEOPLE:-15}; models=${MODELS:-"mobilenetv3_small_100 resnet18"}
scratch="$root/bench/out/recipe"
rm -rf "$scratch" && mkdir -p "$scratch"
for f in "$root"/*.py "$root/maskfold"; do ln -s "$f" "$scratch/"; done
cd "$scratch"
python demo.py demo --train-people "$people" --eval-people "$eval_people" --seed 0 > /dev/null

# the README's bash block that sets the three variables
recipe=$(awk '/^```bash$/ {inside = 1; block = ""; next}
              /^```$/ {if (inside && block ~ /^data=/) {printf "%s", block; exit} inside = 0; next}
              inside {block = block $0 "\n"}' "$root/README.md")
[ -n "$recipe" ] || { echo "bench/recipe.sh: no recipe block (data=...) in README.md" >&2; exit 2; }
variables="data=demo; models=\"$models\"; folds=3"
cpu="--no-pretrained --epochs 2 --img-size 64 48 --batch-size 32 --workers 1"
edited=$(printf '%s' "$recipe" | sed -E "1s/^data=.*/$variables/" |
         sed -E "s|--model \\\$m --fold \\\$k --out work/runs|& $cpu|")
for needle in "$variables" "--out work/runs $cpu"; do
  grep -qF -- "$needle" <<< "$edited" || { echo "bench/recipe.sh: the README's recipe changed; update me" >&2; exit 2; }
done
start=$(date +%s)
status=0
bash -e -c "$edited" > recipe.log 2>&1 || status=$?
pkill -f "tensorboard --logdir work/runs" 2>/dev/null || true
echo "{\"recipe_exit\": $status, \"seconds\": $(( $(date +%s) - start )), \"log\": \"$scratch/recipe.log\"}"
[ "$status" = 0 ] && grep '"kind": "submission"' -l work/submission.csv.json > /dev/null
exit "$status"
