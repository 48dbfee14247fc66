# captioner: one entry point per task. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,train,dev,ray
DATA_DIR ?= ../shared/data/flickr8k
RUN_DIR ?= runs/default
BUNDLE_DIR ?= models/default
PYTEST_ARGS ?=

.PHONY: help install install-serve serve test test-deps check lint typecheck features train export model model-ensemble model-merge bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(VENV)/bin/python ## install everything (serving, training, dev tools) into .venv
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'

install-serve: $(VENV)/bin/python ## install only what serving needs (no TensorFlow)
	$(PY) -m pip install -q -e '.[cpu]'

serve: install-serve ## install and start the service on models/default (http://127.0.0.1:8000)
	$(PY) -m service

test-deps: ## system packages the tests drive (Java, Chromium, promtool, playwright-core)
	scripts/test-deps.sh

test: install test-deps ## install and run the test suite
	$(PY) -m pytest $(PYTEST_ARGS)

check: install ## ruff + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

features: install ## encode every Flickr8k image once into cache/ (EfficientNet-Lite0, pooled)
	$(PY) -m training.features --data-dir $(DATA_DIR)

train: install ## train a caption model into $(RUN_DIR)
	$(PY) -m training train --data-dir $(DATA_DIR) --run-dir $(RUN_DIR)

export: install ## turn $(RUN_DIR) into a bundle in $(BUNDLE_DIR)
	$(PY) -m export --run-dir $(RUN_DIR) --out $(BUNDLE_DIR)

# models/default 3.0.0 (docs/model-card.md): one attention LSTM decoder (Bahdanau attention over
# the 7x7 EfficientNet-Lite0 grid) distilled from models/ensemble (word-level top-8 soft targets
# plus the ensemble's beam caption of each train image; 11 epochs), then fine-tuned for CIDEr-D
# with self-critical sequence training (325 steps; the weights of the best validation point
# that did not start ending captions on "with a" are kept); exported with float16 decoder
# weights and an int8 encoder, then scored (test beam 3 and greedy, validation, int8).
# models/ensemble: the 2.1.0 default and the teacher, two attention decoders (seeds 42 and 7)
# averaged in one step decoder (serve it with CAPTION_BUNDLE_DIR=models/ensemble).
# models/merge: the 1.0.0 default, three merge decoders on the pooled vector.
# --resume makes each training step idempotent (a finished run is kept, an interrupted one
# continues).
MODEL_RUNS ?= runs/model
TEACHER ?= models/ensemble
MEMBERS := $(MODEL_RUNS)/add $(MODEL_RUNS)/add-ls $(MODEL_RUNS)/concat-ls
ATTENTION_MEMBERS := $(MODEL_RUNS)/attention $(MODEL_RUNS)/attention-s7
TRAIN_MODEL := $(PY) -m training train --data-dir $(DATA_DIR) --resume
TRAIN_ATTENTION := $(TRAIN_MODEL) --decoder attention --epochs 14 --patience 2 --label-smoothing 0.1

model: install ## reproduce models/default: distil models/ensemble into one decoder, SCST, export, score
	$(TRAIN_ATTENTION) --run-dir $(MODEL_RUNS)/distilled --epochs 11 --teacher $(TEACHER) \
		--teacher-captions
	$(PY) -m training scst --resume --from $(MODEL_RUNS)/distilled --run-dir $(MODEL_RUNS)/scst \
		--data-dir $(DATA_DIR) --lr 1.5e-4 --max-steps 325 --eval-every 25
	$(PY) -m export --run-dir $(MODEL_RUNS)/scst --out $(BUNDLE_DIR) --name default \
		--version 3.0.0 --force --no-keras-weights --decoder-weights float16 --quantize int8 \
		--data-dir $(DATA_DIR) --evaluate --eval-out $(MODEL_RUNS)/test-eval
	$(PY) -m training.attention_report figures --bundle $(BUNDLE_DIR) --out docs

model-ensemble: install ## reproduce models/ensemble (the teacher): train 2 attention decoders, export the ensemble
	$(TRAIN_ATTENTION) --run-dir $(MODEL_RUNS)/attention
	$(TRAIN_ATTENTION) --run-dir $(MODEL_RUNS)/attention-s7 --seed 7
	$(PY) -m export --run-dir $(ATTENTION_MEMBERS) --out models/ensemble --name ensemble \
		--version 2.1.0 --force --no-keras-weights --decoder-weights float16 --quantize int8 \
		--data-dir $(DATA_DIR) --evaluate --eval-out $(MODEL_RUNS)/attention-test-eval

model-merge: install ## reproduce models/merge: train 3 merge decoders, export the ensemble, score
	$(TRAIN_MODEL) --run-dir $(MODEL_RUNS)/add
	$(TRAIN_MODEL) --run-dir $(MODEL_RUNS)/add-ls --label-smoothing 0.1 --epochs 13 --patience 2
	$(TRAIN_MODEL) --run-dir $(MODEL_RUNS)/concat-ls --merge concat --label-smoothing 0.1 \
		--seed 7 --epochs 12 --patience 2
	$(PY) -m export --run-dir $(MEMBERS) --out models/merge --name merge --force \
		--data-dir $(DATA_DIR) --evaluate --eval-out $(MODEL_RUNS)/test-eval

bench: install ## benchmark: ceiling, service, no batching, naive baseline, int8, roofline
	$(PY) -m loadtest bench

clean: ## remove caches and build outputs (keeps .venv and models/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info
