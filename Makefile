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
# Test workers (pytest-xdist): tests in one xdist_group (the SLURM ones, the fault ones: tests/conftest.py) take
# turns on one worker; PYTEST_JOBS=0 runs everything in this process
PYTEST_JOBS ?= 2
XDIST = $(if $(filter 0,$(PYTEST_JOBS)),,-n $(PYTEST_JOBS) --dist loadgroup)
SLURM_STILL_UP = echo "The local SLURM test cluster (partition debug, node1+node2) is still up; stop it with: make slurm-down"
# SLURM settings for `make kimi-k2`, e.g. PARTITION=gpu ACCOUNT=myproj TIME=60
PARTITION ?=
ACCOUNT ?=
TIME ?= 60
KIMI_ARGS ?=
SLURM_OPTS = $(if $(PARTITION),--partition $(PARTITION)) $(if $(ACCOUNT),--account $(ACCOUNT)) --time $(TIME)

.PHONY: help run venv test test-fast test-local test-slurm slurm-up slurm-down sweep-8gpu submit-config-1 templates \
	kimi-k2 kimi-k2-collocated kimi-k2-plan kimi-k2-small

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install "$(TORCH)"
	$(VENV)/bin/pip install -e '.[test,megatron]'
	touch $@

venv: $(VENV)/.installed  ## create .venv: torch first (TORCH=...), then refitctl with its test and megatron extras

run: venv  ## set up, then run the embedded default: refitctl submit config-1 (local processes)
	$(REFITCTL) submit config-1 --cluster local

test: venv slurm-up  ## set up (venv + local SLURM cluster), then run the whole test suite (2 workers)
	@$(PY) -m pytest -q $(XDIST) --durations=15 $(PYTEST_ARGS); rc=$$?; $(SLURM_STILL_UP); exit $$rc

test-fast: venv  ## the test suite without starting SLURM (its tests skip)
	$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-local: venv  ## the orchestrator's tests without SLURM
	$(PY) -m pytest -q -m 'not slurm' tests/e2e/local/test_orchestrator_local.py $(PYTEST_ARGS)

test-slurm: venv slurm-up  ## bring the local SLURM cluster up, then run the SLURM tests
	@$(PY) -m pytest -q -m slurm tests/e2e/slurm/ $(PYTEST_ARGS); rc=$$?; $(SLURM_STILL_UP); exit $$rc

slurm-up:  ## start the local SLURM test cluster (partition debug, node1+node2, 8 fake GPUs each)
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

kimi-k2: venv  ## submit Kimi K2 (non-collocated) on SLURM: 16 nodes x 8 GPUs (PARTITION=, ACCOUNT=, TIME=)
	$(REFITCTL) submit kimi-k2 --cluster slurm --gpus-per-node 8 --exclusive $(SLURM_OPTS) $(KIMI_ARGS)

kimi-k2-collocated: venv  ## submit Kimi K2 collocated (NCCL) on SLURM: 16 nodes x 8 GPUs
	$(REFITCTL) submit kimi-k2-collocated --cluster slurm --gpus-per-node 8 --exclusive $(SLURM_OPTS) $(KIMI_ARGS)

kimi-k2-plan: venv  ## Kimi K2 plans, memory fit and predicted times (any machine, no GPU)
	$(REFITCTL) plan kimi-k2
	$(REFITCTL) plan kimi-k2-collocated
	$(REFITCTL) plan kimi-k2-pp4

kimi-k2-small: venv slurm-up  ## Kimi K2's layouts scaled down, on the local SLURM cluster (2 nodes x 4), verified
	$(REFITCTL) submit kimi-k2-small --cluster slurm --gpus-per-node 4 --refit-method gloo --time 10
