# kanade-watchdog: every target does its own set-up on a fresh Debian machine.
#   make run    the daemon in the foreground against a local broker it starts
#   make test   lint (ruff), types (mypy --strict) and the whole test suite
#   make bench  the benchmark tables recorded in docs/BENCHMARKS.md

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages (README.md lists the same ones; tests/test_operator_commands.py
# checks): libsystemd-dev/pkg-config/gcc/python3-dev build systemd-python;
# python3-venv makes .venv; systemd-container gives systemd-nspawn and systemd
# the init it boots for the end-to-end tests; procps has the /bin/kill of the
# unit's ExecReload; openssl makes the test CA and certificates for the TLS tests;
# prometheus brings promtool and the server the metrics tests scrape with.
DEBS   := libsystemd-dev pkg-config gcc python3-dev python3-venv systemd-container systemd procps openssl prometheus

.PHONY: setup system-packages run test lint typecheck pytest bench soak chaos clean

setup: $(STAMP)

system-packages:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing (run: sudo apt-get install -y$$missing)"; exit 1; \
	  fi; \
	fi

# --- packages ----------------------------------------------------------------------
#   make deb    dist/kanade-watchdog_<version>_<arch>.deb, built by Debian's tooling
#               (dh-virtualenv) in a temporary copy of the tree; needs PyPI
#   make dist   the wheel and sdist in dist/ (`pipx install` on a workstation)
# Build packages for `make deb`: debian/control's Build-Depends, plus gcc (for
# systemd-python) and lintian (checks the result).
DEB_BUILD_DEBS := debhelper dh-virtualenv dpkg-dev gcc libsystemd-dev pkg-config \
                  python3 python3-dev python3-venv lintian
# Where the .deb goes; KANADE_DEB_VERSION in the environment overrides
# pyproject.toml's version (packaging/deb/build).
DEB_OUT ?= dist

.PHONY: deb deb-build-packages dist

deb: deb-build-packages
	packaging/deb/build $(DEB_OUT)

deb-build-packages:
	@missing=""; for p in $(DEB_BUILD_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing (run: sudo apt-get install -y$$missing)"; exit 1; \
	  fi; \
	fi

dist: setup
	$(BIN)/python -m build --outdir dist .

$(STAMP): pyproject.toml | system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

# The checkout's package with this venv's Python; Ctrl-C exits 0 (see the script).
run: setup
	@KANADE_VENV=$(VENV) scripts/run-local

lint: setup
	$(BIN)/ruff check kanade_watchdog tests bench scripts/portcheck.py
	$(BIN)/ruff format --check kanade_watchdog tests bench scripts/portcheck.py
	$(BIN)/lint-imports --no-cache

typecheck: setup
	$(BIN)/mypy
	$(BIN)/mypy scripts/portcheck.py

pytest: setup
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: setup
	$(BIN)/python -m bench.run

# The fault suite at full size (>= 50 kill -9 cycles, a minute-long delete
# storm, minutes of broker downtime); its figures go to .run/chaos-figures.md.
chaos: setup
	@mkdir -p .run
	KANADE_CHAOS_FULL=1 KANADE_CHAOS_REPORT=.run/chaos-figures.md $(BIN)/pytest -q tests/chaos -m "slow or not slow" --timeout 1200
	@cat .run/chaos-figures.md

# Ten minutes of the daemon under a random fault every few seconds.
soak: setup
	$(BIN)/python -m bench.soak --minutes 10

# /opt/kanade-watchdog-e2e: the end-to-end venv cache older versions kept
# (the tests now remove their runtime directory themselves).
clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache
	@if [ -d /opt/kanade-watchdog-e2e ]; then rm -rf /opt/kanade-watchdog-e2e; fi

# Issue 13's scale and tail tables, each against a nats-py floor in the same run
# (docs/BENCHMARKS.md, "Scale and tails"). QUICK=1: small sizes, a few rounds.
.PHONY: bench-scale
bench-scale: setup
	$(BIN)/python -m bench.issue13 $(if $(QUICK),--quick,)
