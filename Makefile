# Fresh machine: `make demo` (install + data + short IFND run + export), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# Debian packages: the demo's data, and tcmalloc, which every entry point preloads (ifnd_tf/runtime.py)
DEBIAN_PACKAGES := dataset-fashion-mnist libtcmalloc-minimal4
UV := uv==0.13.9
TCMALLOC := $(firstword $(wildcard /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4))

.PHONY: demo test install data

demo: install data
	$(PY) -m ifnd_tf.train --flagfile=flags/fashion_mnist.cfg

# Two workers, one per core: most e2e tests wait on a subprocess's start-up (docs/design.md, "Tests").
# Whole modules per worker, longest first (tests/conftest.py, LONGEST_MODULES).
test: install data
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

install: $(VENV)/.installed

# uv installs the same pinned wheels 1.7-1.9x faster than pip
# (docs/results.md, "How long do the demo and the tests take"); bytecode compiled at install,
# as pip does. pip stays the fallback (e.g. an index only pip.conf knows).
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	($(VENV)/bin/pip install -q $(UV) && $(VENV)/bin/uv pip install -q --compile-bytecode \
	  --python $(VENV)/bin/python -r requirements.txt) || (echo "uv failed: installing with pip" && \
	  $(VENV)/bin/pip install -q --upgrade pip && $(VENV)/bin/pip install -q -r requirements.txt)
	touch $@

data:
	@if [ ! -f $(FASHION_MNIST) ] || [ -z "$(TCMALLOC)" ]; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(DEBIAN_PACKAGES); fi
