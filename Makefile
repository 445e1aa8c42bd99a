# Quantization Workbench. `make demo` and `make test` work on a fresh clone.
PY ?= python3
VENV := .venv
# Everything the workbench caches (backend environments, converted models, baseline
# outputs) stays inside the checkout; `make clean` removes it.
export WORKBENCH_HOME ?= $(CURDIR)/.workbench
export HF_HUB_OFFLINE ?= 1
WB := $(VENV)/bin/workbench
TORCH_ENV := $(WORKBENCH_HOME)/envs/torch
TORCH_PY := $(TORCH_ENV)/bin/python
OV_ENV := $(WORKBENCH_HOME)/envs/openvino
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit test-torch test-integration bench clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[ui,test]'
	touch $@

$(TORCH_ENV)/workbench-env.json: $(VENV)/.installed workbench/envs/torch.txt workbench/envs/torch-nodeps.txt
	$(WB) env create torch

$(OV_ENV)/workbench-env.json: $(VENV)/.installed workbench/envs/openvino.txt workbench/envs/openvino-nodeps.txt
	$(WB) env create openvino

$(TORCH_ENV)/.test-deps: $(TORCH_ENV)/workbench-env.json
	$(TORCH_PY) -m pip install -q --disable-pip-version-check pytest pytest-timeout
	touch $@

setup: $(VENV)/.installed $(TORCH_ENV)/workbench-env.json $(OV_ENV)/workbench-env.json

demo: setup
	$(WB) compare --model smollm2-135m --report results/report.html

test: setup $(TORCH_ENV)/.test-deps
	$(VENV)/bin/python -m pytest tests/unit -q $(PYTEST_ARGS)
	PYTHONPATH=$(CURDIR) $(TORCH_PY) -m pytest tests/torch -q -m "not slow" $(PYTEST_ARGS)
	$(VENV)/bin/python -m pytest tests/integration -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/worker_overhead.py

clean:
	rm -rf $(VENV) .workbench results .pytest_cache
