# The two commands a newcomer runs (see README): `make demo` and `make test`.
# Both create the virtual environment on first use; nothing else needs installing by hand.
# `make demo` installs only what the package needs; `make test` adds the test extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-test demo lint test bench clean

setup: $(VENV)/.installed

setup-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU wheel; installing it first keeps pip from resolving a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(PY) -m elastic_nb demo

lint: setup-test
	$(PY) -m ruff check elastic_nb
	$(PY) -m mypy

test: lint
	# The browser test drives Debian's Chromium; ELASTIC_NB_SKIP_BROWSER=1 skips it locally.
	if [ "$$ELASTIC_NB_SKIP_BROWSER" != 1 ]; then scripts/install-browser; fi
	# The two-host tests build network namespaces with iproute2's ip (as root).
	scripts/install-iproute2
	# The cluster tests run Slurm, MUNGE and sshd in network namespaces (tests/cluster.py).
	scripts/install-cluster-tools
	$(PY) -m pytest

bench: setup-test
	$(PY) benchmarks/bench_launch.py

clean:
	rm -rf $(VENV) .pytest_cache
