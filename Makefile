# refitctl: common tasks. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
REFITCTL := $(VENV)/bin/refitctl
# Extra arguments for `make sweep-8gpu`, e.g. SWEEP_ARGS="--cluster slurm --gpus-per-node 4 --refit-method gloo"
SWEEP_ARGS ?=
# Extra arguments for pytest, e.g. PYTEST_ARGS="-m 'not slurm'"
PYTEST_ARGS ?=

.PHONY: help venv test test-local test-slurm slurm-up slurm-down sweep-8gpu submit-config-1 templates

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install "$(TORCH)"
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

venv: $(VENV)/.installed  ## create .venv: torch first (TORCH=...), then refitctl with its test extras

test: venv  ## run the whole test suite (SLURM tests skip unless the cluster is up: make slurm-up)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-local: venv  ## the orchestrator's tests without SLURM
	$(PY) -m pytest -q -m 'not slurm' tests/test_orchestrator_local.py $(PYTEST_ARGS)

test-slurm: venv slurm-up  ## bring the local SLURM cluster up, then run the SLURM tests
	$(PY) -m pytest -q -m slurm tests/test_slurm.py $(PYTEST_ARGS)

slurm-up:  ## start the local SLURM test cluster (partition debug, node1+node2, 4 fake GPUs each)
	bash scripts/slurm/up.sh

slurm-down:  ## stop the local SLURM test cluster
	bash scripts/slurm/down.sh

submit-config-1: venv  ## the embedded default: config-1 as local processes (gloo without a GPU)
	$(REFITCTL) submit config-1 --cluster local

sweep-8gpu: venv  ## every config of one 8-GPU node as one job array (SWEEP_ARGS=... for options)
	$(REFITCTL) sweep 8gpu $(SWEEP_ARGS)

templates: venv  ## re-render the example sbatch scripts in templates/examples/
	mkdir -p templates/examples
	env -i PATH="$$PATH" HOME="$$HOME" $(REFITCTL) render config-1 --python python3 --exclusive -o templates/examples/config-1.sbatch
	env -i PATH="$$PATH" HOME="$$HOME" $(REFITCTL) render collocated-1 --python python3 --exclusive -o templates/examples/collocated-1.sbatch
	env -i PATH="$$PATH" HOME="$$HOME" $(REFITCTL) render kimi-k2 --python python3 --exclusive --time 1:00:00 -o templates/examples/kimi-k2.sbatch
