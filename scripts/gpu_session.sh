#!/usr/bin/env bash
# One lent-GPU machine, one call, at most BUDGET_S seconds (default 570: the device tool's 10-minute limit less
# start-up), whatever its GPU count: the GPU tests, a rank held before NVSHMEM init, the ceilings and every seed
# row that fits (benchmarks/gpu_bench.py: one rank per GPU for NCCL, even PEs for NVSHMEM), the FP8 rows beside
# BF16 (benchmarks/fp8_bench.py) and the Megatron-Core peer over NCCL. Every step is bounded by what is left of the
# budget (and its own cap); the benchmarks keep their JSON current row by row, so a step cut short keeps what it
# measured. Everything lands in $OUT; commit benchmarks/results/*.json from there.
#   device run: bash scripts/gpu_session.sh [full|quick|fp8|lib]      (carry .whl: nvshmem4py-cu13, submitit, megatron-core)
#   quick: seed sizes, a few rows;  fp8: the GPU tests, the FP8-vs-BF16 benchmark, the NVSHMEM flags only;
#   lib: the GPU tests and the library's (Megatron-Core swap, nvshmem on the caller's tensors, its cost) only
set -u
MODE=${1:-full}
BUDGET_S=${BUDGET_S:-570}
DEADLINE=$(( $(date +%s) + BUDGET_S ))
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
RUNS=/tmp/runs; export REFITCTL_RUNS_DIR=$RUNS
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
step() { echo; echo "=== $* ($(date +%T), $(( DEADLINE - $(date +%s) )) s left)"; }
# bounded CAP CMD...: run CMD for at most CAP seconds and never past the deadline (less 5 s to save files)
bounded() {
  local cap=$1; shift
  local left=$(( DEADLINE - $(date +%s) - 5 ))
  (( left < cap )) && cap=$left
  if (( cap < 10 )); then echo "skipped: the budget is spent"; return 124; fi
  timeout "$cap" "$@"
}
touch /tmp/session-start
save() { find benchmarks/results -name '*.json' -newer /tmp/session-start -exec cp {} "$OUT/" \; 2>/dev/null; true; }
trap save EXIT

step "devices: $GPUS GPU(s)"; nvidia-smi -L; nvidia-smi topo -m 2>/dev/null | head -5
step "GPU tests"
bounded 240 python3 -m pytest -q -x -p no:cacheprovider tests/e2e/gpu/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu-tests.txt"
step "refit_core.megatron.swap_model_weights on the GPU, bitwise against the oracle (needs the megatron-core wheel in .whl)"
bounded 150 python3 -m pytest -q -p no:cacheprovider -rs tests/e2e/gpu/test_megatron_swap_gpu.py 2>&1 | tail -15 \
    | tee "$OUT/megatron-gpu-tests.txt"
step "refit_core.library with nvshmem on the caller's GPU tensors (bounded heap staging), PEs on one GPU"
bounded 150 python3 -m pytest -q -p no:cacheprovider -rs tests/e2e/gpu/test_library_nvshmem_gpu.py 2>&1 | tail -15 \
    | tee "$OUT/library-nvshmem-gpu-tests.txt"
step "what NVSHMEM staging costs the library (benchmarks/library_nvshmem.py)"
bounded 120 python3 benchmarks/library_nvshmem.py 2>&1 | tail -8
save

if [ "$MODE" = lib ]; then step done; exit 0; fi
step "FP8 quantiser: compiled Triton kernels against the torch reference, bitwise"
bounded 120 python3 -m pytest -q -p no:cacheprovider tests/e2e/gpu/test_fp8_gpu.py 2>&1 | tail -15 | tee "$OUT/fp8-gpu-tests.txt"

if [ "$MODE" = fp8 ]; then
  step "FP8 destinations beside BF16 (benchmarks/fp8_bench.py)"
  bounded 420 python3 benchmarks/fp8_bench.py 2>&1 | tail -25
  step "config-1 with --nvshmem-placement push --nvshmem-sync host; start-up phases"
  bounded 120 python3 -m orchestrator submit config-1 --cluster local --nvshmem-placement push --nvshmem-sync host \
      --poll 1 2>&1 | tail -6
  run=$(ls -td $RUNS/config-1-* | head -1)
  python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['transport']; print('transport:', {k: t.get(k) for k in ('placement','sync')})" "$run/results.json"
  python3 benchmarks/startup_phases.py "$run" 2>&1 | tail -15
  step done; exit 0
fi

step "rank 1 held before NVSHMEM init, --refit-timeout 20"
t0=$(date +%s)
bounded 90 python3 -m orchestrator submit config-4 --cluster local --refit-method nvshmem --refit-timeout 20 \
    --env REFITCTL_FAULT=hang:rank=1:phase=setup --poll 1 > "$OUT/held-init.txt" 2>&1; rc=$?
echo "rc=$rc after $(( $(date +%s) - t0 )) s" | tee -a "$OUT/held-init.txt"; tail -6 "$OUT/held-init.txt"
run=$(ls -td $RUNS/config-4-* | head -1)
python3 -m orchestrator status "$run" 2>&1 | tail -8
echo "left behind:"; pgrep -af refit_job || echo none

step "ceilings and every seed row that fits on $GPUS GPU(s) (benchmarks/gpu_bench.py, $MODE)"
if [ "$MODE" = quick ]; then
  bounded 200 python3 benchmarks/gpu_bench.py --quick 2>&1 | tail -30
else
  bounded 300 python3 benchmarks/gpu_bench.py 2>&1 | tail -40
fi
save
step "FP8 rows beside BF16 (benchmarks/fp8_bench.py)"
bounded 150 python3 benchmarks/fp8_bench.py 2>&1 | tail -20
save
if (( GPUS >= 2 )); then
  step "Megatron-Core peer over NCCL, the rows that fit on $GPUS GPUs"
  bounded 120 python3 benchmarks/megatron_peer.py --backend nccl 2>&1 | tail -20
fi
step done
