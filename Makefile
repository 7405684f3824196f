# The two commands of the README. Each creates .venv and installs what it needs.
# torch==2.13.0 is pinned here (the set-up step) so these machines take the CPU build on disk;
# the package itself asks only torch>=2.4.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-oldest-torch clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,export]'
	@# the headless Chromium of the browser tests (tests/test_explore.py): apt-get as root, else
	@# unpacked into .cache/browser; bounded, and it never fails the set-up (those tests then skip)
	bash scripts/install_browser.sh
	touch $(STAMP)

# The main job, shortened to a few minutes: the default character model of Shakespeare (the full
# default, `rnnlab train`, runs up to 10 minutes; docs/RESULTS.md), then a sample of its writing.
# One thread: torch's default (one per core) collapses when another program keeps a core busy. The
# C++ loops are built first (once, cached; `make test` does the same), so the build, which can take
# minutes on a loaded machine, does not eat the training's 5-minute cap.
run: $(STAMP)
	@$(BIN)/python -c "from rnnlab.kernels import compiled; print('C++ loops: building once (about a minute; cached)...', flush=True) if not all(map(compiled.built, compiled.MODULES)) else None; print('C++ loops:', 'ready' if compiled.build_all() else 'unavailable, Python loops')"
	$(BIN)/rnnlab train --steps 500 --max-minutes 5 --threads 1

test: $(STAMP)
	@# build the optional C++ loops first (about a minute, once; cached), so the suite tests them
	@# against the Python loops; where no compiler is found this prints so and the suite tests the fallback
	$(BIN)/python -c "from rnnlab.kernels import compiled; print('compiled loops:', 'built' if compiled.build_all() else 'unavailable, Python loops')"
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The oldest torch rnnlab supports (pyproject: torch>=2.4): the same suite on torch 2.4.1, in a venv of
# its own. Not part of `make test`: PyPI's torch 2.4.1 is its CUDA build, about 3 GB with its libraries.
OLDEST := .venv-torch2.4
$(OLDEST)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install -q --upgrade pip
	$(OLDEST)/bin/pip install -q torch==2.4.1
	$(OLDEST)/bin/pip install -q -e '.[test,export]'
	bash scripts/install_browser.sh
	touch $@

test-oldest-torch: $(OLDEST)/.installed
	$(OLDEST)/bin/python -c "import torch; from rnnlab.kernels import compiled; print('torch', torch.__version__, '- compiled loops:', 'built' if compiled.build_all() else 'unavailable, Python loops')"
	$(OLDEST)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) $(OLDEST)
