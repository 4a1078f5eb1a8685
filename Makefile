# Two commands set up and run everything on a fresh machine:
#   make demo   - install, then prepare -> offline model -> fine-tune (Ray Train, 2 workers) -> batch-score
#   make test   - install, then run the test suite
#   make bench  - install, then benchmark against the alternatives -> BENCHMARKS.md (~70 min on 2 cores)
#   make docs   - regenerate docs/configuration.md from the typed configs (a unit test checks it)
#   make gpu-kit, make gpu-dry-run - the GPU checks' offline kit, and its proof on CPU (docs/cluster.md, "Run the GPU checks")
#   make cluster - a Ray cluster of several nodes on this machine, until Ctrl-C (docs/cluster.md, "Run on many nodes")
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `pip install torch==2.13.0` takes the CPU wheel here; clusters install the CUDA build of the same
# version (docs/cluster.md, "Install on a GPU cluster").
TORCH_SPEC ?= torch==2.13.0
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false
export RAY_DATA_DISABLE_PROGRESS_BARS ?= 0

.PHONY: install demo test bench bench-quick cluster docs mlflow-ui mlflow-server gpu-kit gpu-dry-run clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	# bert-base-chinese's vocab.txt ships inside cn-clip; --no-deps skips its heavy, unused deps.
	$(PY) -m pip install -q --no-deps cn-clip==1.6.0
	touch $@

demo: install
	$(PY) -m jobs.prepare_corpus --config configs/prepare_corpus.yaml
	$(PY) -m jobs.init_offline_model --config configs/init_offline_model.yaml
	$(PY) -m jobs.finetune_classifier --config configs/finetune_classifier.local-cpu.yaml
	$(PY) -m jobs.batch_infer --config configs/batch_infer.local-cpu.yaml
	@echo
	@echo "MLflow UI on these runs: make mlflow-ui   (then open http://127.0.0.1:5000)"

test: install
	$(PY) -m pytest -q

# Builds its own inputs under runs/bench; run it on an otherwise idle machine.
bench: install
	$(PY) -m bench.run_all

bench-quick: install  # smoke sizes, written to runs/bench/BENCHMARKS-quick.md
	$(PY) -m bench.run_all --quick

# A head without CPUs and CLUSTER_WORKERS worker nodes (127.0.0.2, ...) with token authentication;
# it prints the RAY_ADDRESS, the `ray job submit` line and the token's variables. Ctrl-C stops every node.
CLUSTER_WORKERS ?= 2
CLUSTER_CPUS ?= 1
cluster: install
	$(PY) -m tools.local_cluster --workers $(CLUSTER_WORKERS) --cpus-per-worker $(CLUSTER_CPUS) --auth token

docs: install
	$(PY) -m tools.config_reference

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

# Tracking server for jobs on other processes and nodes (MLFLOW_TRACKING_URI=http://HOST:PORT):
# sqlite store + proxied artifacts under MLFLOW_ROOT, bound to 127.0.0.1 unless MLFLOW_HOST says
# otherwise; a non-local Host header also needs MLFLOW_ALLOWED_HOSTS (docs/cluster.md, "Deploy on a cluster").
MLFLOW_ROOT ?= $(CURDIR)
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_ALLOWED_HOSTS ?=
mlflow-server: install
	$(PY) -m tools.mlflow_server --root $(MLFLOW_ROOT) --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) \
		$(if $(MLFLOW_ALLOWED_HOSTS),--allowed-hosts $(MLFLOW_ALLOWED_HOSTS))

# Neither uses $(VENV): the kit is built for the GPU machine's Python 3.12, the dry run in a stand-in for it.
gpu-kit:
	tools/gpu_kit.sh build

gpu-dry-run:  # starts Ray: run it alone on a shared machine
	tools/gpu_kit.sh dry-run

clean:
	rm -rf data artifacts runs mlruns mlartifacts mlflow.db
