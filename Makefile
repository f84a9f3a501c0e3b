# sr_ablate — `make help` lists the targets.
PYTHON ?= python
HOST ?= 127.0.0.1
PORT ?= 5000
ARGS ?=

.PHONY: help install lint test test-all train sweep report ui bench gpu-check

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install:  ## install the project (+ CPU torch here / CUDA torch on GPU machines when torch is missing)
	@# torch==2.13.0 resolves to the local CPU wheel on this machine and to PyPI's CUDA build
	@# elsewhere; an existing torch (e.g. a CUDA build) is left alone.
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e '.[dev]'

lint:  ## ruff (rules in pyproject.toml)
	$(PYTHON) -m ruff check .

test:  ## run the tests (slow ones excluded)
	$(PYTHON) -m pytest -m "not slow" -q

test-all:  ## run every test, slow ones included
	$(PYTHON) -m pytest -q

train:  ## one run with the defaults (SRResNet x2, built-in photos); ARGS="model.blocks=8" to override
	$(PYTHON) -m sr_ablate $(ARGS)

sweep:  ## the block-count sweep: 4 runs under one parent run
	$(PYTHON) -m sr_ablate -m model.blocks=8,12,16,24 $(ARGS)

report:  ## write reports/<experiment>/results.{md,csv} from the MLflow store
	$(PYTHON) -m sr_ablate report $(ARGS)

bench:  ## speed: sr_ablate vs a bare loop and Lightning, fixed costs, evaluation, live model -> BENCHMARKS.md
	$(PYTHON) -m sr_ablate bench --md BENCHMARKS.md $(ARGS)

gpu-check:  ## the GPU check into OUT=dir (ARGS="--device cpu --quick": the CPU dry run)
	@test -n "$(OUT)" || { echo "say where: make gpu-check OUT=gpu-check"; exit 2; }
	PYTHON=$(PYTHON) scripts/gpu_check.sh $(OUT) $(ARGS)

ui:  ## MLflow UI on http://$(HOST):$(PORT) (local only unless HOST is changed)
	$(PYTHON) -m mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host $(HOST) --port $(PORT)
