# Daily commands. PY points at the project's virtual environment (made by `make install`).
PY ?= .venv/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
DEMO_OUT ?= runs/demo

.PHONY: install demo test test-slow lint bench clean

install:  ## virtualenv + the package with dev and generation extras (torch from local disk)
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,gen]"

demo:  ## simulate the demo twin, preprocess it on Ray, write the epoch store and latents
	$(PY) -m megdecode.cli demo --out $(DEMO_OUT)

test:  ## the default suite (excludes -m slow)
	$(PY) -m pytest -q

test-slow:  ## the slow suites only
	$(PY) -m pytest -q -m slow

lint:
	$(PY) -m ruff check platform tests jobs benchmarks
	$(PY) -m mypy

bench:
	$(PY) benchmarks/twin_build.py
	$(PY) benchmarks/preprocess_throughput.py
	$(PY) benchmarks/store_read.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
