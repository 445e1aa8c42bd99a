# Quantization Workbench. `make demo` and `make test` work on a fresh clone.
PY ?= python3
VENV := .venv
# Everything the workbench caches (backend environments, converted models, baseline outputs)
# stays inside the checkout, in .workbench/, and results in results/: the package finds both on
# its own when it runs from this checkout (workbench/paths.py), so the CLI, a kernel started in
# notebooks/ and the app agree with no variable set. WORKBENCH_HOME, when set, wins everywhere.
WORKBENCH_HOME ?= $(CURDIR)/.workbench
export HF_HUB_OFFLINE ?= 1
WB := $(VENV)/bin/workbench
TORCH_ENV := $(WORKBENCH_HOME)/envs/torch
TORCH_PY := $(TORCH_ENV)/bin/python
# The backend environment families (workbench/envs/NAME.txt): `make setup` creates them all.
ENVS := torch openvino onnx gptq llmcompressor
PYTEST_ARGS ?=
# The integration tests mostly wait on worker processes (imports, exports, single-threaded
# tracing): two pytest workers, each file kept on one (module fixtures, tests that read the
# store an earlier test wrote), take 15 minutes instead of 22+ on 2 cores.
INTEGRATION_WORKERS ?= 2
APP_PORT ?= 8866
LAB_PORT ?= 8888

.PHONY: setup demo test test-unit test-torch test-integration bench app lab clean

# Plug-in packages (their own pyproject.toml; found only through the `workbench.methods` entry point).
EXTENSIONS := $(wildcard extensions/*/pyproject.toml)

$(VENV)/.installed: pyproject.toml $(EXTENSIONS)
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[ui,test,dask]'
	$(foreach x,$(EXTENSIONS),$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e $(dir $(x)) &&) true
	touch $@

# A plug-in's worker imports it in the backend environment its method runs in (torch for gguf).
$(TORCH_ENV)/.extensions: $(TORCH_ENV)/workbench-env.json $(EXTENSIONS)
	$(foreach x,$(EXTENSIONS),$(TORCH_PY) -m pip install -q --disable-pip-version-check --no-deps -e $(dir $(x)) &&) true
	touch $@

$(WORKBENCH_HOME)/envs/%/workbench-env.json: $(VENV)/.installed workbench/envs/%.txt workbench/envs/%-nodeps.txt
	@mkdir -p $(WORKBENCH_HOME)
	$(WB) env create $*

$(TORCH_ENV)/.test-deps: $(TORCH_ENV)/workbench-env.json
	$(TORCH_PY) -m pip install -q --disable-pip-version-check pytest pytest-timeout
	touch $@

# The backend environments are independent: pip installs them side by side (about 3.5 min for all).
setup: $(VENV)/.installed
	$(MAKE) --no-print-directory -j$(words $(ENVS)) $(foreach e,$(ENVS),$(WORKBENCH_HOME)/envs/$(e)/workbench-env.json)
	$(MAKE) --no-print-directory $(TORCH_ENV)/.extensions

demo: setup
	$(WB) compare --model smollm2-135m --report results/report.html

test: setup $(TORCH_ENV)/.test-deps
	$(VENV)/bin/python -m pytest tests/unit extensions -q $(PYTEST_ARGS)
	PYTHONPATH=$(CURDIR) $(TORCH_PY) -m pytest tests/torch -q -m "not slow" $(PYTEST_ARGS)
	$(VENV)/bin/python -m pytest tests/integration -q -m "not slow" -n $(INTEGRATION_WORKERS) --dist loadfile --durations=12 $(PYTEST_ARGS)
	$(VENV)/bin/python -m pytest tests/browser -q $(PYTEST_ARGS)
	$(VENV)/bin/python -m pytest tests/notebooks -q -s $(PYTEST_ARGS)

# The quickstart notebook as a standalone app (code hidden) on http://127.0.0.1:$(APP_PORT)/.
# The preheated kernel has run the notebook before the page asks: widgets in ~5 s instead of ~13.
# The `workbench` template (share/jupyter) is Voila's lab template without its CDN stylesheet.
app: setup
	JUPYTER_PATH=$(CURDIR)/share/jupyter$(if $(JUPYTER_PATH),:$(JUPYTER_PATH)) $(VENV)/bin/voila notebooks/00-quickstart.ipynb --no-browser \
	    --Voila.ip=127.0.0.1 --port=$(APP_PORT) --preheat_kernel=True --template=workbench

# JupyterLab on the notebooks; prints the URL with its token.
lab: setup
	$(VENV)/bin/jupyter lab --no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) \
	    --ServerApp.root_dir=$(CURDIR)/notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

bench: setup
	$(VENV)/bin/python benchmarks/worker_overhead.py

clean:
	rm -rf $(VENV) .workbench results .pytest_cache
