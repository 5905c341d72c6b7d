# The README's two commands: `make demo` and `make test`. Each installs what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint soak bench clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(PY) -m mqfleet demo

test: setup lint
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check mqfleet tests bench scripts
	$(VENV)/bin/mypy --strict mqfleet tests bench scripts

soak: setup
	$(PY) -m mqfleet.soak --duration $${DURATION:-600} --agents $${AGENTS:-20} --jobs $${JOBS:-500} --seed $${SEED:-1}

bench: setup
	$(PY) -m bench

clean:
	rm -rf .demo .soak .bench
