#!/usr/bin/env bash
# One lent-GPU session in one call: install the carried wheels, run the GPU tests, check that a rank
# held before NVSHMEM init ends the run within --refit-timeout, run the seed configs through the CLI,
# the between-GPUs benchmark and the Megatron-Core peer. Everything it measures lands in $OUT.
#   device run: bash scripts/gpu_session.sh [quick|full]      (carry .whl)
set -u
MODE=${1:-quick}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
RUNS=/tmp/runs; export REFITCTL_RUNS_DIR=$RUNS
refitctl() { python3 -m orchestrator "$@"; }
step() { echo; echo "=== $* ($(date +%T))"; }

step devices; nvidia-smi -L; nvidia-smi topo -m 2>/dev/null | head -5
step "GPU tests"
timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/e2e/gpu/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu-tests.txt"

step "rank 1 held before NVSHMEM init, --refit-timeout 20"
t0=$(date +%s)
timeout 150 python3 -m orchestrator submit config-4 --cluster local --refit-method nvshmem --refit-timeout 20 \
    --env REFITCTL_FAULT=hang:rank=1:phase=setup --poll 1 > "$OUT/held-init.txt" 2>&1; rc=$?
echo "rc=$rc after $(( $(date +%s) - t0 )) s" | tee -a "$OUT/held-init.txt"; tail -6 "$OUT/held-init.txt"
run=$(ls -td $RUNS/config-4-* | head -1)
refitctl status "$run" 2>&1 | tail -8
grep -h "fault\|did not finish\|Timeout" "$run"/logs/*.log | head -8
echo "left behind:"; pgrep -af refit_job || echo none

step "config-4 nvshmem through the CLI"
timeout 150 python3 -m orchestrator submit config-4 --cluster local --poll 1 2>&1 | tail -8
step "collocated-4 (NCCL, 4 ranks) on the GPUs here: refused or verified"
timeout 150 python3 -m orchestrator submit collocated-4 --cluster local --poll 1 2>&1 | tail -4

step "gpu_bench ($MODE)"
if [ "$MODE" = quick ]; then
  timeout 400 python3 benchmarks/gpu_bench.py --quick --out "$OUT/gpu-bench.json" 2>&1 | tail -30
else
  timeout 560 python3 benchmarks/gpu_bench.py --out "$OUT/gpu-bench.json" 2>&1 | tail -40
fi
cp benchmarks/results/*ceilings*.json "$OUT/" 2>/dev/null
step "Megatron-Core peer over NCCL"
timeout 150 python3 benchmarks/megatron_peer.py --backend nccl --out "$OUT/megatron-nccl.json" 2>&1 | tail -20
step done
