# kanade-watchdog: every target does its own set-up on a fresh Debian machine.
#   make run    the daemon in the foreground against a local broker it starts
#   make test   lint (ruff), types (mypy --strict) and the whole test suite
#   make bench  the benchmark tables recorded in docs/BENCHMARKS.md

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages: libsystemd-dev/pkg-config/gcc/python3-dev build systemd-python;
# systemd-container gives systemd-nspawn for the end-to-end tests under a real systemd.
DEBS   := libsystemd-dev pkg-config gcc python3-dev python3-venv systemd-container

.PHONY: setup system-packages run test lint typecheck pytest bench soak chaos clean

setup: $(STAMP)

system-packages:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing (run: sudo apt-get install -y$$missing)"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml | system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

run: setup
	@scripts/run-local

lint: setup
	$(BIN)/ruff check kanade_watchdog tests bench
	$(BIN)/ruff format --check kanade_watchdog tests bench

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: setup
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache
