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
SPLIT ?=
BEAM ?=
NPROC ?= 1
ARGS ?=
RUNS ?=
PORT ?= 6006
GPU_PYTHON ?= 3.12

.PHONY: install test demo extract train evaluate caption tensorboard bench bench-backbones bench-gpu bench-scale gpu-bundle quality lint clean

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
	$(CAPTIONER) evaluate $(RUN) $(if $(SPLIT),--split $(SPLIT)) $(if $(BEAM),--beam-size $(BEAM)) $(ARGS)

caption: install
	@test -n "$(IMAGES)" -a -n "$(CHECKPOINT)" || (echo "usage: make caption IMAGES='a.jpg b.jpg' CHECKPOINT=runs/NAME/best.pt" && exit 2)
	$(CAPTIONER) caption $(IMAGES) --checkpoint $(CHECKPOINT) $(if $(BEAM),--beam-size $(BEAM)) $(ARGS)

# TensorBoard on localhost: RUN=runs/NAME for one run, RUNS=runs for every run under a folder.
tensorboard: install
	@test -n "$(RUN)$(RUNS)" || (echo "usage: make tensorboard RUN=runs/NAME | RUNS=runs [PORT=6006]" && exit 2)
	$(if $(RUN),$(if $(wildcard $(RUN)/tensorboard),,$(error no $(RUN)/tensorboard: RUN names a run folder trained with tensorboard installed)))
	$(if $(RUNS),$(if $(wildcard $(RUNS)),,$(error no folder $(RUNS): RUNS names the folder holding the runs)))
	$(BIN)/tensorboard --logdir $(if $(RUN),$(RUN)/tensorboard,$(RUNS)) --host 127.0.0.1 --port $(PORT)

bench: install
	$(BIN)/python -m benchmarks.extract
	$(BIN)/python -m benchmarks.train
	$(BIN)/python -m benchmarks.step
	$(BIN)/python -m benchmarks.decode
	$(BIN)/python -m benchmarks.scst
	$(BIN)/python -m benchmarks.caption

# Every backbone's extraction images/s and bytes per image, as ratios to resnet50 (random init).
bench-backbones: install
	$(BIN)/python -m benchmarks.backbones $(ARGS)

# Every CUDA path in one command (< 8 minutes on one GPU); --device cpu --tiny checks it here.
# On a GPU machine with this .venv; on a bare one (no venv, no registry): make gpu-bundle here,
# carry gpu-bundle/ with the repository, run `sh benchmarks/gpu_run.sh` there (docs/benchmarks.md).
bench-gpu: install
	$(BIN)/python -m benchmarks.gpu_check $(ARGS)

# Stage two at Flickr30k and COCO size on this CPU: writes ~25 GB under build/ (deleted
# after), about 20 minutes; ARGS="--images 3000" for a small run (docs/benchmarks.md).
bench-scale: install
	$(BIN)/python -m benchmarks.scale $(ARGS)

# gpu-bundle/: the packages a bare GPU machine's python3 (version GPU_PYTHON) lacks, from .venv.
gpu-bundle: install
	$(BIN)/python -m benchmarks.gpu_bundle --python $(GPU_PYTHON)

# SCST on both testbeds, 3 seeds (README, "Measuring quality"; docs/benchmarks.md).
quality: install
	$(BIN)/python -m benchmarks.quality $(ARGS)

lint: install
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/ruff format --check pipeline tests benchmarks

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache
