# The README's two commands: `make demo` and `make test`. Both create .venv and install on first use.
PY      := .venv/bin/python
STAMP   := .venv/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1

DEMO    := demo_data
WORK    := work
MODEL   ?= resnet18
FOLDS   ?= 5

.PHONY: demo test clean

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) demo.py $(DEMO) --overwrite
	$(PY) crop.py $(DEMO)/train/images $(WORK)/crops/train --overwrite
	$(PY) crop.py $(DEMO)/eval/images $(WORK)/crops/eval --overwrite
	$(PY) split.py $(DEMO)/train/train.csv $(WORK)/crops/train -o $(WORK)/folds.csv --folds $(FOLDS) --overwrite

clean:
	rm -rf $(DEMO) $(WORK) runs
