# Two commands do everything on a fresh machine (Python 3.11):
#   make demo   -- set up, then pretrain on the bundled corpus, validate, fine-tune and score
#   make test   -- set up, then run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Install the local CPU build of torch only when no torch is present.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The main job on the bundled data: pretrain a small crammed BERT for ~1.5 minutes of wall
# clock, score it on held-out text, fine-tune it on the bundled
# GLUE/SuperGLUE sample and print the score table.
DEMO := name=demo base_dir=outputs impl=cpu
demo: setup
	$(PY) pretrain_bert.py $(DEMO) arch=bert-small data=demo budget=0.025 \
		train.batch_size=32 impl.microbatch_size=16 train.checkpoint_every_minutes=1
	$(PY) validate_bert.py $(DEMO)
	$(PY) eval.py $(DEMO) eval=demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs multirun .pytest_cache
