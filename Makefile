# pcclog — the two set-up commands are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run dev test lint format typecheck pytest bench soak clean screenshot

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Start the server with safe defaults: loopback only, a generated token.
run: $(STAMP)
	HOST=$(HOST) PORT=$(PORT) $(BIN)/pcclog serve

# Serve, restarting whenever the code changes.
dev: $(STAMP)
	HOST=$(HOST) PORT=$(PORT) LOG_LEVEL=debug $(BIN)/watchfiles --filter python '$(BIN)/pcclog serve' src

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks examples
	$(BIN)/ruff check --fix src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

# The browser and proxy tests use Debian's chromium and nginx; install them
# when missing (skipped with a warning where that is impossible).
pytest: $(STAMP)
	bash tests/browser_setup.sh
	bash tests/nginx_setup.sh || test -z "$$PCCLOG_REQUIRE_NGINX"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything CI runs: lint, types, every test.
test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m benchmarks.run

soak: $(STAMP)
	PCCLOG_FULL_SIZE=1 $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

screenshot: $(STAMP)
	bash tests/browser_setup.sh
	$(BIN)/python tests/make_screenshot.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
