"""GPU paths: the batched copy kernel, NVSHMEM PEs sharing one GPU, NCCL at world size 1.

Skipped without CUDA (CI has none); run on the lent GPU machine (docs/benchmarks.md says how).
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch

from conftest import SMALL_FLAGS
from jobs.local import run_locally
from orchestrator.configs import resolve
from orchestrator.configs.flags import apply_overrides
from refit_core.planning.blocks import Block
from refit_core.execution.transports.copy import CudaBlockCopy, absolute, copy_blocks_torch, cuda_copy_available

needs_cuda = pytest.mark.skipif(not cuda_copy_available(), reason="needs a CUDA GPU and cupy")
needs_nvshmem = pytest.mark.skipif(importlib.util.find_spec("nvshmem") is None or not torch.cuda.is_available(),
                                   reason="needs a CUDA GPU and nvshmem4py")
pytestmark = pytest.mark.gpu


@needs_cuda
@pytest.mark.parametrize("seed", range(5))
def test_kernel_copies_exactly_what_torch_copies(seed: int) -> None:
    rng = random.Random(seed)
    n = 1 << 22
    src = torch.randint(0, 256, (n,), dtype=torch.uint8)
    blocks, used = [], 0
    for _ in range(200):
        rows = rng.choice([1, 3, 17, 256])
        rb = rng.choice([1, 2, 6, 16, 48, 256, 4096, 300000])
        ss = rb + rng.choice([0, 0, 2, 16, 1024])
        if rows * ss > n // 2 or used + rows * rb > n // 2:
            continue
        s_off = rng.randrange(0, n - rows * ss)
        blocks.append(Block(s_off, ss, used, rb, rows, rb))
        used += rows * rb + rng.choice([0, 1, 16])
    want = torch.zeros(n, dtype=torch.uint8)
    copy_blocks_torch(blocks, src, want)
    gsrc, gdst = src.cuda(), torch.zeros(n, dtype=torch.uint8, device="cuda")
    CudaBlockCopy(absolute(blocks, gsrc.data_ptr(), gdst.data_ptr()), gsrc.device)()
    torch.cuda.synchronize()
    assert torch.equal(gdst.cpu(), want)


@needs_nvshmem
@pytest.mark.parametrize("name", ["config-4", "config-1", "collocated-4"])
def test_nvshmem_pes_on_one_gpu_verify(name: str, tmp_path: Path) -> None:
    cfg = apply_overrides(resolve(name), {**SMALL_FLAGS, "refit_method": "nvshmem"})
    cfg = cfg.with_changes(gpus=cfg.world().gpus_used)
    codes, res = run_locally(cfg, tmp_path, timeout_s=300)
    assert codes == [0] * cfg.hardware.gpus, (tmp_path / "logs" / "rank-00000.log").read_text()[-3000:]
    assert res["verified"]


@needs_nvshmem
def test_naive_baseline_verifies(tmp_path: Path) -> None:
    cfg = apply_overrides(resolve("config-1"), {**SMALL_FLAGS, "refit_method": "naive"})
    cfg = cfg.with_changes(gpus=cfg.world().gpus_used)
    codes, res = run_locally(cfg, tmp_path, timeout_s=300)
    assert codes == [0] * cfg.hardware.gpus, (tmp_path / "logs" / "rank-00000.log").read_text()[-3000:]
    assert res["verified"]


@needs_nvshmem
@pytest.mark.parametrize("placement", ["push", "pull", "all"])
@pytest.mark.parametrize("name", ["config-1", "collocated-3"])
def test_nvshmem_every_placement_verifies_and_measures_its_memory(name: str, placement: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFITCTL_NVSHMEM_PLACEMENT", placement)
    cfg = apply_overrides(resolve(name), {**SMALL_FLAGS, "refit_method": "nvshmem"})
    cfg = cfg.with_changes(gpus=cfg.world().gpus_used)
    codes, res = run_locally(cfg, tmp_path, timeout_s=300)
    assert codes == [0] * cfg.hardware.gpus, (tmp_path / "logs" / "rank-00000.log").read_text()[-3000:]
    assert res["verified"]
    assert res["extra_bytes_measured_max"] is not None


@needs_cuda
def test_nccl_world_size_one_verifies(tmp_path: Path) -> None:
    cfg = apply_overrides(resolve("collocated-4"), {
        **SMALL_FLAGS, "refit_method": "nccl", "tensor_model_parallel_size": 1, "expert_model_parallel_size": 1,
        "rl_inference_tensor_model_parallel_size": 1, "rl_inference_expert_model_parallel_size": 1, "gpus": 1})
    codes, res = run_locally(cfg, tmp_path, timeout_s=300)
    assert codes == [0], (tmp_path / "logs" / "rank-00000.log").read_text()[-3000:]
    assert res["verified"] and res["iterations"][-1]["launches"] == 1
