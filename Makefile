# Two user-facing commands on a fresh machine:
#   make demo   set up .venv, run every analysis on the embedded models into runs/, serve the
#               dashboard (make demo SERVE=0: analyses only; PORT=8050 to choose the port)
#   make test   set up .venv, then run the whole test suite
# and one for the repository's documentation:
#   make notebooks  set up .venv with the docs extra, then execute notebooks/*.ipynb in place
#               (python notebooks/execute.py): outputs saved, figures as static PNGs
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A CPU build of torch; pyproject keeps a wide range for users with GPUs.
TORCH_PIN ?= torch==2.13.0
RUNS ?= runs
SERVE ?= 1
PORT ?= 8050

.PHONY: demo test setup clean chromium notebooks

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/headlab demo --out $(RUNS) --port $(PORT) $(if $(filter 0,$(SERVE)),--no-serve,)

test: setup chromium
	$(PY) -m pytest -q

# kaleido renders the notebooks' plotly figures in Debian's chromium (it never downloads one).
$(VENV)/.docs: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

notebooks: $(VENV)/.docs chromium
	$(PY) notebooks/execute.py

# The dashboard's browser tests and the notebooks' figures use Debian's chromium (never
# `playwright install`, which downloads a browser). Installed here when missing and we are root;
# otherwise the browser tests skip and `make notebooks` stops.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && apt-get install -y -q chromium; \
	  else echo "chromium is missing and we are not root: the dashboard's browser tests will skip"; fi; }

clean:
	rm -rf $(VENV) $(RUNS)
