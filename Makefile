# The README's two commands: `make demo` and `make test`. Each installs what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint soak bench arm64-check clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(PY) -m mqfleet demo

test: setup lint
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check mqfleet tests bench scripts
	$(VENV)/bin/mypy --strict mqfleet

soak: setup
	$(PY) -m mqfleet.soak --duration $${DURATION:-600} --agents $${AGENTS:-20} --jobs $${JOBS:-500} --seed $${SEED:-1}

bench: setup
	$(PY) -m bench

# Not part of `make test` (tens of minutes under emulation): run for releases (docs/OPERATIONS.md, "The arm64 check").
arm64-check: setup
	bash scripts/arm64-check.sh

clean:
	rm -rf .demo .soak .bench
