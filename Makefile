# accel-cost-exporter. `make demo` and `make test` set up their own virtualenv in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO ?= p4d-idle-fleet
LISTEN ?= :11094

.PHONY: demo test test-fast lint docs golden dist bench reliability gpu-check clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## Run the exporter on built-in simulated hardware (scenario $(DEMO)); open http://localhost:11094/
demo: $(STAMP)
	$(PY) -m exporter --demo $(DEMO) --web.listen-address $(LISTEN) --collector.interval 1s

## All tests (needs prometheus, promtool, alertmanager, amtool, systemd-analyze, kubectl; stops at once naming any that is missing)
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile

## The inner loop: every test not marked slow
test-fast: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow"

## Build the sdist and the wheel into dist/ and check them
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

lint: $(STAMP)
	$(VENV)/bin/ruff check exporter tests bench grafana deploy
	$(VENV)/bin/ruff format --check exporter tests bench grafana deploy
	$(VENV)/bin/mypy exporter
	$(PY) grafana/generate.py --check
	$(PY) deploy/kubernetes/generate.py --check
	$(PY) tests/golden/generate.py --check

## Regenerate docs/metrics.md from the catalogue
docs: $(STAMP)
	$(PY) -m exporter.exposition.reference > docs/metrics.md

## Regenerate tests/golden/<scenario>.prom, the normalised /metrics of every built-in scenario
golden: $(STAMP)
	$(PY) tests/golden/generate.py

## Benchmarks; results go to docs/benchmarks.md by hand
bench: $(STAMP)
	$(PY) bench/scrape_cadence.py
	$(PY) bench/scrape_cadence.py render
	$(PY) bench/scrape_cadence.py serve
	$(PY) bench/scrape_cadence.py gzip
	$(PY) bench/scrape_cadence.py rss
	$(PY) bench/bench_scrape.py
	$(PY) bench/bench_accuracy.py

## Long reliability runs; figures go to docs/reliability.md by hand: a simulated day, then 200 scrapers x 60 s
reliability: $(STAMP)
	$(PY) bench/soak.py
	$(PY) bench/storm.py

## On a host with NVIDIA GPUs: run against the real NVML and prove busy time rises under load
gpu-check:
	$(PYTHON) bench/gpu_check.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache dist build
