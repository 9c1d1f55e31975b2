# The two commands the README promises on a fresh machine:
#   make run   - set up .venv (once) with what running needs, and run the main job on the default scenario
#   make test  - set up .venv (once) with the test tools too, and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# One stamp per install: `make run` installs mpsim and its runtime dependencies only; `make test`
# adds the test extra (pytest, hypothesis, the notebook tooling). Each is redone when the
# project metadata changes.
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

# Opt-in, never needed: `make fast` compiles the hot modules with mypyc into build/fast (a copy of
# the package beside the pure-Python one; docs/sim.md "Performance"). Use it with
# `PYTHONPATH=build/fast mpsim ...`; tests/test_fast_build.py runs tests/golden against it.
FAST_STAMP := $(VENV)/.installed-fast
FAST_DIR := build/fast
FAST_MODULES := mpsim/wire/segment.py mpsim/proto/seqnum.py mpsim/proto/tcp.py mpsim/proto/host.py \
	mpsim/proto/mptcp.py mpsim/proto/relay.py mpsim/proto/client.py mpsim/proto/server.py mpsim/proto/convert.py \
	mpsim/live/sockets.py mpsim/live/relay.py mpsim/live/converter.py

.PHONY: run test venv clean fast

venv: $(RUN_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/mpsim run

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

$(FAST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[fast]'
	touch $(FAST_STAMP)

fast: $(FAST_STAMP)
	rm -rf $(FAST_DIR)
	mkdir -p $(FAST_DIR)
	cp -r mpsim $(FAST_DIR)/
	find $(FAST_DIR) -name __pycache__ -prune -exec rm -rf {} +
	ln -s ../../models $(FAST_DIR)/models  # scenarios are found next to the package
	cd $(FAST_DIR) && $(abspath $(BIN))/mypyc $(FAST_MODULES)

clean:
	rm -rf $(VENV) build *.egg-info
