# Two commands do all the set-up on a fresh machine with Python 3.11+ and Java 17+:
#   make run    -> the main job (cluster_eval) on the built-in default dataset
#   make test   -> the whole test suite, one pytest process per tier (see TIERS below)
# Both fetch Spark's Delta jars with the machine's Maven first (scripts/fetch_delta_jars.sh);
# where Maven cannot reach them, they say so in one line and run on delta-rs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Spark's Python workers (and spark-submit's driver) must run the venv's interpreter,
# otherwise they fail with "No module named 'pyarrow'".
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: run test test-native test-connect test-faults lint java venv jars clean

java:
	@scripts/check_java.sh

# The venv is rebuilt when the dependency pins change.
$(VENV)/.installed: pyproject.toml constraints.txt
	@scripts/check_java.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[local,connect,dev,bench,mlflow]'
	@touch $@

venv: $(VENV)/.installed

jars: $(VENV)/.installed
	@PY=$(PY) scripts/fetch_delta_jars.sh

# spark-submit starts the JVM before Python, so the jars go on its command line
# (pipelines.spark adds the Delta extension and catalog when it sees them there).
DELTA_JARS = $(subst $(eval) ,$(comma),$(wildcard .jars/delta/*.jar))
comma := ,

run: java jars
	$(VENV)/bin/spark-submit --driver-memory 4g $(if $(DELTA_JARS),--jars $(DELTA_JARS)) jobs/cluster_eval.py $(ARGS)

# Test tiers, one pytest process each (one JVM cannot host a classic and a Connect
# session). A tier is one line: its environment, then the tests it runs. With
# PYTEST_ARGS only the first tier runs, with those arguments.
#   1. the whole suite on delta-rs (a session without the Delta jars);
#   2. native Delta (the fetched jars): the Delta layer, every job on both backends
#      (tests/test_backends.py compares their tables), the spark-submit sessions and the
#      notebooks top to bottom;
#   3. Spark Connect (remote("local[2]") with the jars, its server on a free port, see
#      tests/conftest.py): every job on both backends, the Delta layer, the cross-engine tests;
#   4. the fault suite (tests/faults, marker cluster): spark-submit runs on local-cluster
#      and local[2], executor and driver kills, concurrent runs, the bad-input sweep.
# Time on the 2-core machine: see README (Tests). Run by hand: make test-native (the whole
# suite on native Delta).
test: java jars
	PIPELINES_DELTA_JARS=none $(PY) -m pytest -m "not cluster" $(PYTEST_ARGS)
	$(if $(PYTEST_ARGS),,$(PY) -m pytest $(NATIVE_TESTS))
	$(if $(PYTEST_ARGS),,PIPELINES_SPARK_CONNECT=1 $(PY) -m pytest $(CONNECT_TESTS))
	$(if $(PYTEST_ARGS),,$(PY) -m pytest -m cluster tests/faults)

NATIVE_TESTS = tests/test_delta.py tests/test_delta_engines.py tests/test_backends.py tests/test_spark_submit.py \
               tests/test_pipeline.py::test_notebooks_run_top_to_bottom
CONNECT_TESTS = tests/test_backends.py tests/test_delta.py tests/test_delta_engines.py

test-native: java jars
	$(PY) -m pytest -m "not cluster" $(PYTEST_ARGS)

test-connect: java jars
	PIPELINES_SPARK_CONNECT=1 $(PY) -m pytest $(CONNECT_TESTS) $(PYTEST_ARGS)

test-faults: java jars
	$(PY) -m pytest -m cluster tests/faults $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check pipelines jobs tests benchmarks notebooks

clean:
	rm -rf $(VENV) output .pytest_cache
