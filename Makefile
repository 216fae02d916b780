# captioner: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CAPTIONER := $(BIN)/captioner
STAMP := $(VENV)/.installed

CONFIG ?= configs/demo.toml
RUN ?=
IMAGES ?=
CHECKPOINT ?=
SPLIT ?= test
BEAM ?= 3
NPROC ?= 1
ARGS ?=
RUNS ?=
PORT ?= 6006

.PHONY: install test demo extract train evaluate caption tensorboard bench bench-gpu quality lint clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet "pip>=23.1" "setuptools>=64" wheel
	$(BIN)/python -m pip install --quiet -e ".[dev,tensorboard]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q tests

demo: install
	$(BIN)/python -m pipeline demo $(ARGS)

extract: install
	$(CAPTIONER) extract --config $(CONFIG) $(ARGS)

ifeq ($(NPROC),1)
train: install
	$(CAPTIONER) train --config $(CONFIG) $(ARGS)
else
train: install
	$(BIN)/torchrun --standalone --nproc_per_node $(NPROC) -m pipeline train --config $(CONFIG) $(ARGS)
endif

evaluate: install
	@test -n "$(RUN)" || (echo "usage: make evaluate RUN='runs/NAME [runs/OTHER ...]' [SPLIT=test] [BEAM=3]" && exit 2)
	$(CAPTIONER) evaluate $(RUN) --split $(SPLIT) --beam-size $(BEAM) $(ARGS)

caption: install
	@test -n "$(IMAGES)" -a -n "$(CHECKPOINT)" || (echo "usage: make caption IMAGES='a.jpg b.jpg' CHECKPOINT=runs/NAME/best.pt" && exit 2)
	$(CAPTIONER) caption $(IMAGES) --checkpoint $(CHECKPOINT) --beam-size $(BEAM) $(ARGS)

# TensorBoard on localhost: RUN=runs/NAME for one run, RUNS=runs for every run under a folder.
tensorboard: install
	@test -n "$(RUN)$(RUNS)" || (echo "usage: make tensorboard RUN=runs/NAME | RUNS=runs [PORT=6006]" && exit 2)
	$(BIN)/tensorboard --logdir $(if $(RUN),$(RUN)/tensorboard,$(RUNS)) --host 127.0.0.1 --port $(PORT)

bench: install
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/step.py
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/scst.py
	$(BIN)/python benchmarks/caption.py

# Every CUDA path in one command (< 8 minutes on one GPU); --device cpu --tiny checks it here.
bench-gpu: install
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

# The caption-quality ablation on the demo cache (README, "Caption quality").
quality: install
	$(BIN)/python benchmarks/quality.py $(ARGS)

lint: install
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/ruff format --check pipeline tests benchmarks

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache
