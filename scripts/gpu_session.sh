#!/usr/bin/env bash
# One lent-GPU session in one call: install the carried wheels, run the GPU tests, check that a rank
# held before NVSHMEM init ends the run within --refit-timeout, run the seed configs through the CLI,
# the between-GPUs benchmark and the Megatron-Core peer. Everything it measures lands in $OUT.
#   device run: bash scripts/gpu_session.sh [quick|full|fp8]      (carry .whl)
#   fp8: the GPU tests, the FP8-vs-BF16 benchmark, the NVSHMEM flags and start-up phases only
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
step "FP8 quantiser: compiled Triton kernels against the torch reference, bitwise"
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/e2e/gpu/test_fp8_gpu.py 2>&1 | tail -15 | tee "$OUT/fp8-gpu-tests.txt"

if [ "$MODE" = fp8 ]; then
  step "FP8 destinations beside BF16 (benchmarks/fp8_bench.py)"
  # issue 22's record: benchmarks/results/DATE-GPU-fp8.json (commit it), with the quantiser's ceilings of the same run
  timeout 420 python3 benchmarks/fp8_bench.py 2>&1 | tail -25
  cp benchmarks/results/*-fp8.json "$OUT/" 2>/dev/null
  step "config-1 with --nvshmem-placement push --nvshmem-sync host; start-up phases"
  timeout 120 python3 -m orchestrator submit config-1 --cluster local --nvshmem-placement push --nvshmem-sync host \
      --poll 1 2>&1 | tail -6
  run=$(ls -td $RUNS/config-1-* | head -1)
  python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['transport']; print('transport:', {k: t.get(k) for k in ('placement','sync')})" "$run/results.json"
  python3 benchmarks/startup_phases.py "$run" 2>&1 | tail -15
  step done; exit 0
fi

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
