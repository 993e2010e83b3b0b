# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TOOLS  := .tools/.installed
export HF_HUB_OFFLINE := 1
export TRL_EXPERIMENTAL_SILENCE := 1
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: setup tools run test lint crd docs bench mutation clean

setup: $(STAMP)

# torch is pinned for every install into the venv by a constraints file, so no dependency can pull another
# build (pyproject.toml leaves torch unversioned because GPU images bring their own):
# - no CUDA device: the CPU wheel torch==$(TORCH_PIN) (a looser pin pulls a multi-GB CUDA build);
# - a CUDA device and a system torch (a CUDA base image): the venv sees the system packages
#   (--system-site-packages) and keeps that torch, pinned at its version;
# - a CUDA device and no system torch: torch==$(TORCH_PIN) from PyPI (its Linux wheel is the CUDA build).
TORCH_PIN   := 2.13.0
CONSTRAINTS := $(VENV)/constraints.txt

$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if command -v nvidia-smi >/dev/null 2>&1 && python3 -c 'import torch' >/dev/null 2>&1; then \
	    echo "==> CUDA device and a system torch: the venv reuses it (--system-site-packages)"; \
	    python3 -m venv --system-site-packages $(VENV); \
	  else python3 -m venv $(VENV); fi; fi
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@version=$$($(PY) -c 'import torch; print(torch.__version__)' 2>/dev/null); \
	if [ -z "$$version" ]; then \
	  echo "==> installing torch==$(TORCH_PIN)"; \
	  $(PY) -m pip install -q torch==$(TORCH_PIN) || exit 1; \
	  version=$(TORCH_PIN); fi; \
	echo "torch==$$version" > $(CONSTRAINTS)
	@echo "==> pip install -e '.[dev]' (torch pinned by $(CONSTRAINTS))"
	@PIP_CONSTRAINT=$(CONSTRAINTS) $(PY) -m pip install -q -e '.[dev]'
	@touch $@

tools: $(TOOLS)
$(TOOLS): scripts/install-test-tools.sh
	@PYTHON=$(PY) scripts/install-test-tools.sh
	@touch $@

run: setup
	@$(VENV)/bin/flywheel run examples/local/gen1.yaml

# PYTHONNODEBUGRANGES: no column ranges, so tracebacks formatted in the operator's test threads do not call
# ast.parse for their ^^^ markers; Python 3.11 shares the AST builder's recursion counter between threads and
# can raise "SystemError: AST constructor recursion depth mismatch" in a concurrent ast.parse
# (cpython gh-106905, pytest-dev/pytest#10763): seen once in a run of tests/operator.
test: setup tools
	@PYTHONNODEBUGRANGES=1 $(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	@$(VENV)/bin/ruff check .

crd: setup
	@$(VENV)/bin/flywheel crd > crds/flywheelgenerations.yaml
	@cp crds/flywheelgenerations.yaml charts/characterflywheel/crds/flywheelgenerations.yaml
	@$(VENV)/bin/flywheel crd flywheel > crds/flywheels.yaml
	@cp crds/flywheels.yaml charts/characterflywheel/crds/flywheels.yaml
	@$(VENV)/bin/flywheel docs api > docs/api.md

# Every bench (bench/provenance.py BENCHES: each after the ones it reads, the GPU bench skipped without a GPU), then
# which results are current; BENCH_ARGS="--stale" re-measures only the stale ones, BENCH_ARGS="gate sim" those two.
BENCH_ARGS ?=
bench: setup
	@$(PY) -m bench.provenance run $(BENCH_ARGS)

# Mutation testing of the modules that decide what users get (bench/mutation.py: mutmut, each module against its own
# test folder) → bench/results/mutation.json; not part of `make test` or `make bench`. By default a stable 5 % sample
# of each module (at least 80 mutants; under an hour on 2 cores); MUTATION_ARGS= tests every mutant (~5,900, many
# hours), "--only gate/stats.py" one module, "--sample 0.05 --rerun-survivors" the survivors again after new tests.
MUTATION_ARGS ?= --sample 0.05
mutation: setup
	@nice -n 10 $(PY) bench/mutation.py $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) .tools .pytest_cache .hypothesis
