"""The fused FP8 quantiser on a GPU (issue 22): the compiled Triton kernels write the torch
reference's bytes and scales, bitwise, on many shapes, and an FP8 NCCL refit quantising bucket by
bucket verifies. Skipped without CUDA and triton (CI runs the same kernels under Triton's
interpreter: tests/unit/execution/test_fp8_kernel.py); scripts/gpu_session.sh runs it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import SMALL_FLAGS
from jobs.local import run_locally
from orchestrator.configs import resolve
from orchestrator.configs.flags import apply_overrides
from refit_core.execution import weights
from refit_core.execution.fp8_kernel import TensorQuantiser, triton_available
from refit_core.execution.fp8_source import Fp8Source
from refit_core.execution.quantize import quantise

needs_triton = pytest.mark.skipif(not triton_available(), reason="needs a CUDA GPU and triton")
pytestmark = pytest.mark.gpu
SHAPES = [(1, 1), (1, 7168), (127, 129), (128, 128), (130, 260), (257, 4095), (2048, 7168), (7168, 2048),
          (4096, 1408), (3, 100_000)]


@needs_triton
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_quantiser_is_bitwise_the_reference(shape: tuple[int, int]) -> None:
    g = torch.Generator(device="cuda").manual_seed(shape[0] * 7919 + shape[1])
    w = torch.randn(shape, generator=g, device="cuda") * 20
    w[: min(128, shape[0]), : min(128, shape[1])] *= 1e-6  # tiny values: subnormal e4m3 results
    if shape[0] > 128 and shape[1] > 128:
        w[128: 256, 128: 256] = 0  # an all-zero block: scale 1.0
    w = w.bfloat16()
    w.view(-1)[-1] = 3.0e38  # near BF16's largest: saturates its neighbours
    q, s = TensorQuantiser(*shape, w.device)(w)
    want_q, want_s = quantise(w)
    assert torch.equal(s.view(torch.int32), want_s.view(torch.int32))
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8))


@needs_triton
@pytest.mark.parametrize("name", ["config-4", "collocated-4"])
def test_triton_send_image_is_the_torch_paths(name: str) -> None:
    """A plan's whole wire source (SwiGLU halves, row-parallel weights, experts; no cut blocks)."""
    cfg = apply_overrides(resolve(name), {**SMALL_FLAGS, "rl_inference_precision": "fp8", "refit_method": "nccl"})
    plan = cfg.plan()
    assert not plan.gathers
    images = []
    for use_triton in (False, True):
        src = Fp8Source(plan, plan.world.source.ranks[-1], torch.device("cuda"), None, use_triton=use_triton)
        weights.fill(src.train_buf, src.train, plan.inventory)
        src.poison()
        src.scales()
        image = torch.full((src.wire.nbytes,), 0xAA, dtype=torch.uint8, device="cuda")
        src.step(src.image_blocks(src.wire), image)()
        images.append((src.scale_buf.clone(), image))
    assert torch.equal(images[0][0], images[1][0]) and torch.equal(images[0][1], images[1][1])


@needs_triton
@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="needs cupy")
def test_nccl_world_1_fp8_quantises_inside_the_local_copy_and_verifies(tmp_path: Path) -> None:
    cfg = apply_overrides(resolve("config-1"), {**SMALL_FLAGS, "rl_inference_precision": "fp8", "refit_method": "nccl",
                                                "tensor_model_parallel_size": 1, "expert_model_parallel_size": 1,
                                                "rl_inference_tensor_model_parallel_size": 1,
                                                "rl_inference_expert_model_parallel_size": 1,
                                                "refit_mode": "collocated", "num_benchmark_iterations": 2})
    cfg = cfg.with_changes(gpus=1)
    cfg.validate()
    codes, res = run_locally(cfg, tmp_path, timeout_s=240)
    assert codes == [0] and res["verified"], (tmp_path / "logs" / "rank-0.log").read_text()[-3000:]
    assert res["transport"]["quantiser"] == "triton" and res["transport"]["send_image_bytes"] == 0
