# The README's two commands: `make demo` and `make test`. Each installs what is missing first.
# `make check` is the edit loop: ruff, mypy and the unit tests, in under a minute on two cores.
VENV ?= .venv
PY := $(VENV)/bin/python
# Parallel test workers (pytest-xdist); each has its own mosquitto, SeaweedFS and PostgreSQL, on ports of its
# own. The whole suite mostly waits (brokers, trainers, timers), so it gets more workers than cores; the unit
# tests mostly compute, so they get one worker per core. Idle workers take tests queued for busy ones
# (worksteal), so a long test queued late does not hold up the end.
WORKERS ?= 4
UNIT_WORKERS ?= auto

.PHONY: setup demo test check unit lint soak bench arm64-check clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(PY) -m mqfleet demo

test: setup lint
	$(PY) -m pytest -q -n $(WORKERS) --dist worksteal

# lint and the unit tests side by side: a cold mypy (tens of seconds) runs beside the tests, not before them
check: setup
	@$(MAKE) --no-print-directory -j2 lint unit

unit:
	$(PY) -m pytest -q -n $(UNIT_WORKERS) --dist worksteal tests/unit

# mypy keeps its cache in .mypy_cache, so a second run checks only what changed
lint:
	$(VENV)/bin/ruff check mqfleet tests bench scripts
	$(VENV)/bin/mypy --strict mqfleet tests bench scripts

soak: setup
	$(PY) -m mqfleet.soak --duration $${DURATION:-600} --agents $${AGENTS:-20} --jobs $${JOBS:-500} --seed $${SEED:-1}

bench: setup
	$(PY) -m bench

# Not part of `make test` (tens of minutes under emulation): run for releases (docs/OPERATIONS.md, "The arm64 check").
arm64-check: setup
	bash scripts/arm64-check.sh

clean:
	rm -rf .demo .soak .bench
