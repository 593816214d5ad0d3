"""Refit from an RL loop on CPU: Megatron-Core models, refitctl's swap_model_weights (docs/library.md).

    .venv/bin/python examples/rl_loop_refit.py

Two processes (gloo). Rank 0 and 1 train a TP2 model and serve an EP2 model (collocated). Each
"training step" changes every training weight; `swap_model_weights` then copies them into the
inference model, resharded, and checks every moved byte (on by default). The first call plans and
binds; the later ones only move bytes. Needs megatron-core (`pip install 'refitctl[megatron]'`).
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from refit_core.config import RunConfig  # noqa: E402
from refit_core.library.local import run_local  # noqa: E402
from refit_core.megatron import swap_model_weights  # noqa: E402  # was: from megatron.core.resharding import ...
from refit_core.peers import megatron_build as mb  # noqa: E402
from refit_core.planning.layout import ParallelLayout, RefitMode  # noqa: E402
from refit_core.planning.model import ModelSpec  # noqa: E402

MODEL = ModelSpec(num_layers=2, hidden_size=128, num_attention_heads=8, num_query_groups=4, ffn_hidden_size=256,
                  num_experts=4, seq_length=64, vocab_size=1000, disable_bias_linear=True, swiglu=True,
                  untie_embeddings_and_output_weights=True)


def rl_loop(cfg: RunConfig) -> list[str]:
    models = mb.build_models(cfg)  # your training model (TP2) and inference model (EP2), as you build them
    train, serve = models.source_arg, models.destination_arg
    lines = []
    for step in range(3):
        with torch.no_grad():  # stands in for an optimizer step
            for p in train.parameters():
                p.add_(1.0)
        t0 = time.perf_counter()
        stats = swap_model_weights(train, serve, "gloo")  # verify=False in production
        wall = (time.perf_counter() - t0) * 1e3
        w_train = dict(train.named_parameters())["decoder.final_layernorm.weight"]
        w_serve = dict(serve.named_parameters())["decoder.final_layernorm.weight"]
        assert torch.equal(w_train, w_serve)
        lines.append(f"step {step}: refit {wall:.1f} ms (moving {stats.time_ms:.1f} ms, checking "
                     f"{stats.verify_ms:.1f} ms, {stats.transfers_checked} transfers), served weight "
                     f"{w_serve.detach()[0].item():.0f}")
    return lines


if __name__ == "__main__":
    cfg = RunConfig.of("rl-loop", MODEL, ParallelLayout(tp=2), ParallelLayout(ep=2), RefitMode.COLLOCATED,
                    method="gloo", gpus=2)
    for line in run_local(2, rl_loop, cfg)[0]:
        print(line)
