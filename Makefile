# Two user-facing commands on a fresh machine:
#   make demo   set up .venv, then run the main job on the embedded default model
#   make test   set up .venv, then run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A CPU build of torch; pyproject keeps a wide range for users with GPUs.
TORCH_PIN ?= torch==2.13.0
MODEL ?= zoo/ioi-small
RUNS ?= runs

.PHONY: demo test setup clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/headlab heads $(MODEL) --out $(RUNS)

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(RUNS)
