# dogbreed: `make demo` and `make test` work on a fresh machine (they create .venv first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench install system-deps clean

# Debian packages the tests use: PostgreSQL (distributed tuning), Chromium and its driver (the web
# page). Installed when missing and root.
APT_PACKAGES := postgresql chromium chromium-driver

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test,ray,explain,mlflow]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dogbreed demo --out demo

test: lint system-deps
	$(BIN)/python -m pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks sagemaker

system-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	else echo "note: missing Debian packages; their tests will be skipped (apt-get install $(APT_PACKAGES))"; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/train_bench.py
	$(BIN)/python benchmarks/tune_bench.py
	$(BIN)/python benchmarks/serve_bench.py
	$(BIN)/python benchmarks/profile_bench.py

clean:
	rm -rf $(VENV) demo runs .pytest_cache
