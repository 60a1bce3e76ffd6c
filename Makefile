# Two commands from a clean clone, with only python3 (and its venv module) installed:
#   make run    the service on http://127.0.0.1:8080 with a local SQLite database
#   make demo   a few bounties played through the service, then its pages (PORT=8080)
#   make test   ruff and mypy, then the whole test suite
# The virtualenv lives in .venv; the package is reinstalled only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run demo test lint clean browser mutate bench

run: $(VENV)/.installed
	$(BIN)/bountybot db upgrade
	$(BIN)/bountybot serve

PORT ?= 8080

demo: $(VENV)/.installed
	$(BIN)/bountybot demo --port $(PORT)

# The suite runs on two workers (pytest-xdist): about 4 minutes on 2 cores, 9 on one.
test: $(VENV)/.installed-test browser
	$(BIN)/ruff check
	$(BIN)/mypy bountybot tests
	$(BIN)/lint-imports
	$(BIN)/pytest -n 2

lint: $(VENV)/.installed-test
	$(BIN)/ruff check
	$(BIN)/mypy bountybot tests
	$(BIN)/lint-imports

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

# The test extras include the package itself, so they also satisfy `run`.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test]'
	touch $@ $(VENV)/.installed

# Mutation testing of the money core (money, ledger, rules) against the pure core's tests, on
# two workers; the run prints the mutants that no test killed (docs/testing.md, tests/MUTANTS.md).
# mutants/ keeps the results: a second run retries only what changed (rm -rf mutants for a fresh one).
MUTATE_JOBS ?= 2
mutate: $(VENV)/.installed-test
	$(BIN)/mutmut run --max-children $(MUTATE_JOBS)
	@echo "mutants no test killed (tests/MUTANTS.md says why each listed one is left):"
	@$(BIN)/mutmut results

# The benchmark (bench/README.md): ingest, commands end to end, a burst against GitHub's write
# limits, and the public pages on large books, each target of issue #16 printed beside its figure.
# PostgreSQL at BOUNTYBOT_TEST_PG_URL (default postgres@127.0.0.1:5432/test).
bench: $(VENV)/.installed-test
	$(BIN)/python bench/webhook_ingest.py
	$(BIN)/python bench/pages.py --requests 50 --steady 10
	$(BIN)/python bench/reads.py --sizes 1000,10000,100000 --requests 20
	$(BIN)/python bench/profile_worker.py --pledges 1000 --top 15
	$(BIN)/python bench/large_task.py --runs 20

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info

# tests/test_browser.py drives Debian's Chromium through its chromedriver: installed here when
# missing (as root, or with sudo that asks no password), else make test stops and says how.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	    if [ "$$(id -u)" -eq 0 ]; then sudo=""; \
	    elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	    else echo "make test needs Debian's Chromium for tests/test_browser.py:" \
	        "run sudo apt-get install chromium chromium-driver, then make test again" >&2; \
	        exit 1; fi; \
	    echo "installing Debian's chromium and chromium-driver for the browser test"; \
	    $$sudo apt-get update -qq && \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        chromium chromium-driver >/dev/null; \
	fi
