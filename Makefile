# Two commands do all the set-up on a fresh machine with Python 3.11+ and Java 17+:
#   make run    -> the main job (cluster_eval) on the built-in default dataset
#   make test   -> the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Spark's Python workers (and spark-submit's driver) must run the venv's interpreter,
# otherwise they fail with "No module named 'pyarrow'".
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: run test lint java venv clean

java:
	@scripts/check_java.sh

# The venv is rebuilt when the dependency pins change.
$(VENV)/.installed: pyproject.toml constraints.txt
	@scripts/check_java.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[local,dev,bench,mlflow]'
	@touch $@

venv: $(VENV)/.installed

run: java $(VENV)/.installed
	$(VENV)/bin/spark-submit --driver-memory 4g jobs/cluster_eval.py $(ARGS)

test: java $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check pipelines jobs tests benchmarks notebooks

clean:
	rm -rf $(VENV) output .pytest_cache
