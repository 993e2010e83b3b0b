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

.PHONY: setup tools run test lint crd docs bench clean

setup: $(STAMP)

# CPU machines get the pinned CPU wheel first (a looser pin pulls a multi-GB CUDA build);
# machines with a GPU keep the torch their image provides.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "==> no CUDA device: installing the CPU torch wheel"; \
	  $(PY) -m pip install -q torch==2.13.0; fi
	@echo "==> pip install -e '.[dev]'"
	@$(PY) -m pip install -q -e '.[dev]'
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
	@$(VENV)/bin/flywheel docs api > docs/api.md

bench: setup
	@for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .tools .pytest_cache .hypothesis
