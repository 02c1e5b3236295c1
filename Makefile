# Two entry points (see README): `make quickstart` and `make test`.
# Each creates the virtual environment on first use and installs ssl-bench into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test perf clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/ssl-bench run suites/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadgroup --durations=40

perf: $(STAMP)
	$(BIN)/ssl-bench perf --quick

clean:
	rm -rf $(VENV) results/runs results/cells results/logs results/optuna.db* results/mlflow.db results/mlartifacts results/perf/scratch
