# Everyday targets. Each creates .venv on first use; only python3, pip, make and a
# C compiler are needed on the machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NATIVE := $(wildcard _native/*.pyx _native/*.pxd _native/*.pxi _native/*.h)
PYTEST_ARGS ?=
# Test workers (pytest-xdist): most tests wait on servers, not on the CPU, so three
# workers finish in about half the time on two cores. WORKERS=0 runs in one process.
WORKERS ?= 3

.PHONY: install build test test-py bench lint demo image soak corpus clean

## install: create .venv and install bt-agent (editable, compiled) with test and lint tools
install: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "setuptools>=77" "Cython==3.3.1" wheel
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test,lint]"
	touch $(STAMP)

## build: (re)compile the Cython extensions in place after editing _native/
build: $(STAMP) $(NATIVE)
	$(PY) setup.py --quiet build_ext --inplace

## test: the whole suite, with the compiled extensions
test: build
	$(PY) -m pytest -n $(WORKERS) $(PYTEST_ARGS)

## test-py: the whole suite again with the pure-Python twins forced
test-py: build
	BT_AGENT_NO_EXTENSIONS=1 $(PY) -m pytest -n $(WORKERS) $(PYTEST_ARGS)

E2E_ARGS ?=

## bench: splitter throughput, then the agent end to end against the ideal pipeline
bench: build
	$(PY) -m bench.split
	$(PY) -m bench.e2e $(E2E_ARGS)

## lint: ruff (style, imports, bugbear), mypy --strict on agent/, and the import contracts
lint: $(STAMP)
	$(VENV)/bin/ruff check agent tests bench examples
	$(VENV)/bin/ruff format --check agent tests bench examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## demo: a real job: SeaweedFS, generated CSV and gzip inputs, the example model server
demo: build
	$(VENV)/bin/bt-agent validate --job examples/demo/job.json
	$(PY) examples/demo/run.py

## image: the container image with podman and no registry, on a debootstrap base (deploy/image/README.md)
IMAGE ?= localhost/bt-agent:latest
image: $(STAMP)
	$(PY) deploy/image/build.py --tag $(IMAGE)

## soak: the seeded chaos soak, every fault at once (SEED=N, SOAK_ARGS='--minutes 60 --corpus')
SOAK_ARGS ?=
soak: build
	$(PY) -m bench.soak $(if $(SEED),--seed $(SEED)) $(SOAK_ARGS)

## corpus: replay the hostile-input corpus (bench/corpus/): each case must end in its clear error
corpus: build
	$(PY) -m bench.corpus_replay

## clean: remove the venv and every build output
clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .benchmarks
	rm -f _native/*.c agent/*.so agent/*/*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
