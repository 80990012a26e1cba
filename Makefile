# vmspop: set-up and checks.  Only python3 (3.11+) is needed; everything else is
# installed into .venv from PyPI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := vmspop-data
STAMP := $(VENV)/.installed

.PHONY: run test interop bench load fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Non-editable on purpose: twistd discovers plugins by scanning sys.path for
# twisted/plugins/, which a default (PEP 660) editable install hides.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml $(shell find vmspop twisted -name '*.py')
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet '.[test]'
	touch $@

## run: install, create a demo user with a demo message if $(DATA) is empty, serve on 127.0.0.1:1110
run: $(STAMP)
	@$(BIN)/python -m vmspop.demo --data $(DATA)
	cd $(CURDIR) && exec $(BIN)/twistd -n --pidfile= vmspop

## test: the whole test suite (what CI runs)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## interop: checks against real third-party clients and Dovecot (needs Debian packages; see docs/testing.md)
interop: $(STAMP)
	$(BIN)/python -m pytest -q -m interop

## bench: compare vmspop with Dovecot, stock Twisted and the loopback ceiling (5-9 minutes;
## BENCH_ARGS=--quick for a short run); prints a table, writes docs/performance.png
bench: $(STAMP)
	$(BIN)/pip install --quiet matplotlib || echo "matplotlib could not be installed: no chart"
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

## load: 1,000 concurrent connections (900 idle, 100 in whole sessions plus SMTP) against a real
## twistd vmspop for LOAD_SECONDS (default 60); prints sessions, errors, server RSS and log errors
LOAD_SECONDS ?= 60
load: $(STAMP)
	$(BIN)/python benchmarks/load.py --seconds $(LOAD_SECONDS)

## fuzz: coverage-guided fuzzing (atheris) of the command parser and the MAIL-11 importer,
## FUZZ_SECONDS each (default 60); new corpus entries land in fuzz/corpus/ (commit them)
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/pip install --quiet atheris
	$(BIN)/python fuzz/fuzz_commands.py fuzz/corpus/commands -max_total_time=$(FUZZ_SECONDS)
	$(BIN)/python fuzz/fuzz_mail11.py fuzz/corpus/mail11 -max_total_time=$(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) build *.egg-info
