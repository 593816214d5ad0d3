"""Kimi K2 (Moonshot AI, 1T-parameter MoE) as a model preset and two 128-GPU refit configs.

Dimensions are those of moonshotai/Kimi-K2-Instruct's config.json (model_type kimi_k2, the
DeepSeek-V3 architecture), in Megatron's flag names as Megatron-LM/slime's Kimi K2 model arguments
spell them; docs/kimi-k2.md cites each number and explains the layouts, the memory fit and the
predicted times.

config.json -> ModelSpec: num_hidden_layers 61 -> num_layers; first_k_dense_replace 1 ->
first_dense_layers; hidden_size 7168; intermediate_size 18432 -> ffn_hidden_size;
moe_intermediate_size 2048 -> moe_ffn_hidden_size; n_routed_experts 384 -> num_experts;
num_experts_per_tok 8 -> moe_router_topk; n_shared_experts 1 x 2048 ->
moe_shared_expert_intermediate_size; num_attention_heads 64; q_lora_rank 1536; kv_lora_rank 512;
qk_nope_head_dim 128 -> qk_head_dim; qk_rope_head_dim 64 -> qk_pos_emb_head_dim; v_head_dim 128;
vocab_size 163840 (already a multiple of Megatron-Bridge's 1280, so no padding);
tie_word_embeddings false; RMSNorm, RoPE, SiLU-gated MLP (swiglu), attention_bias false and no
MLP biases (--disable-bias-linear); q/kv LoRA norms (--qk-layernorm). The released checkpoint has
no MTP layer (num_nextn_predict_layers 0), so the 61 layers are all of it.
"""

from __future__ import annotations

import dataclasses

from refit_core.config import RunConfig
from refit_core.planning.layout import ParallelLayout, RefitMode
from refit_core.planning.model import ModelSpec

KIMI_K2_MODEL = ModelSpec(
    name="kimi-k2",
    num_layers=61,
    first_dense_layers=1,
    hidden_size=7168,
    ffn_hidden_size=18432,
    moe_ffn_hidden_size=2048,
    num_experts=384,
    moe_router_topk=8,
    moe_shared_expert_intermediate_size=1 * 2048,
    moe_router_enable_expert_bias=True,  # e_score_correction_bias: inference routes with it
    num_attention_heads=64,
    multi_latent_attention=True,
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_head_dim=128,
    qk_pos_emb_head_dim=64,
    v_head_dim=128,
    vocab_size=163840,
    padded_vocab_size=163840,
    untie_embeddings_and_output_weights=True,
    normalization="RMSNorm",
    position_embedding_type="rope",
    swiglu=True,
    disable_bias_linear=True,
    seq_length=4096,
    max_position_embeddings=131072,
    dtype="bfloat16",
)

# Published totals the inventory is checked against (docs/kimi-k2.md, "Parameter count").
# Hugging Face's safetensors count for moonshotai/Kimi-K2-Instruct, to 0.1B; it also counts the
# FP8 checkpoint's weight_scale_inv tensors (~62.5M) and router e_score_correction_bias (23,040).
PUBLISHED_SAFETENSORS_PARAMS = 1_026_500_000_000
PUBLISHED_MODEL_CARD_PARAMS = 1_000_000_000_000  # model card: "Total Parameters 1T"
PUBLISHED_TECH_REPORT_PARAMS = 1_040_000_000_000  # arXiv 2507.20534: "1.04 trillion"

_NODES = "16 nodes x 8 GPUs"

KIMI_K2_CONFIGS: tuple[RunConfig, ...] = (
    RunConfig.of(
        name="kimi-k2",
        model=KIMI_K2_MODEL,
        # Training: Megatron-Bridge's Kimi K2 recipe runs TP=2 and EP=32; weights alone fit at
        # EP=32 (71 GiB per GPU) without the recipe's PP, which 61 layers cannot split evenly
        # under the even-split rule (docs/kimi-k2.md, "Pipeline parallelism").
        source=ParallelLayout(tp=2, ep=32),
        # Inference: data-parallel attention (TP=1) with each expert on exactly one of 64 GPUs.
        destination=ParallelLayout(tp=1, ep=64),
        mode=RefitMode.NON_COLLOCATED,
        method="nvshmem",
        gpus=128,
        use_case="Kimi K2 multi-node, training -> inference GPUs",
        description=f"Kimi K2 1T refit across {_NODES}: training TP=2, EP=32 on GPUs 0-63 to "
                    "inference TP=1, EP=64 on GPUs 64-127 (all traffic inter-node)",
    ),
    RunConfig.of(
        name="kimi-k2-collocated",
        model=KIMI_K2_MODEL,
        source=ParallelLayout(tp=2, ep=64),
        destination=ParallelLayout(tp=1, ep=128),
        mode=RefitMode.COLLOCATED,
        method="nccl",
        gpus=128,
        # Both copies share each GPU (41.5 + 36.6 GiB); 256 MiB of staging leaves 1.7 GiB of 80.
        bucket_bytes=256 << 20,
        use_case="Kimi K2 multi-node, TP<->EP swap on shared GPUs",
        description=f"Kimi K2 1T refit on {_NODES}, both models on every GPU: training TP=2, EP=64 "
                    "to inference TP=1, EP=128",
    ),
    RunConfig.of(
        name="kimi-k2-pp4",
        model=KIMI_K2_MODEL,
        # Training as Megatron splits a 61-layer DeepSeek-V3-class model: PP=4 with stages of
        # 16+16+16+13 layers (--decoder-last-pipeline-num-layers 13), TP=2, EP=8 per stage. The
        # 16-layer stages hold 23 % more than the 13-layer one, so the busiest source sends 14 % over
        # the mean by construction (docs/kimi-k2.md).
        source=ParallelLayout(tp=2, ep=8, pp=4, last_stage_layers=13),
        destination=ParallelLayout(tp=1, ep=64),
        mode=RefitMode.NON_COLLOCATED,
        method="nvshmem",
        gpus=128,
        use_case="Kimi K2 with source PP (uneven stages)",
        description=f"Kimi K2 1T refit across {_NODES}: training TP=2, EP=8, PP=4 (16+16+16+13 layers) "
                    "on GPUs 0-63 to inference TP=1, EP=64 on GPUs 64-127",
    ),
    RunConfig.of(
        name="kimi-k2-record",
        model=KIMI_K2_MODEL,
        # The record's shape (Perplexity, 2025-09: 256 training -> 128 inference GPUs, BF16 -> FP8).
        # Training: TP=2, EP=32 as Megatron-Bridge's Kimi K2 recipe, with PP=4 in stages of
        # 16+16+16+13 layers so that 256 GPUs hold it at 18.4 GiB of BF16 weights each
        # (docs/kimi-k2.md, "The record's setup").
        source=ParallelLayout(tp=2, ep=32, pp=4, last_stage_layers=13),
        # Inference: data-parallel attention (TP=1), each expert on exactly one of 128 GPUs, FP8.
        destination=ParallelLayout(tp=1, ep=128),
        mode=RefitMode.NON_COLLOCATED,
        method="nccl",
        gpus=384,
        inference_precision="fp8",
        use_case="Kimi K2 at the published record's shape",
        description="Kimi K2 1T, BF16 training TP=2, EP=32, PP=4 on 256 GPUs (32 nodes) to FP8 inference TP=1, "
                    "EP=128 on 128 GPUs (16 nodes)",
    ),
    RunConfig.of(
        name="kimi-k2-small",
        # Kimi K2's architecture (MLA, dense first layer, SwiGLU, shared expert, untied, RMSNorm)
        # at toy widths, and kimi-k2's layout shapes scaled to the 2x4-GPU local test cluster:
        # training TP=2 with EP across the rest, inference TP=1 with every expert on one GPU.
        model=dataclasses.replace(
            KIMI_K2_MODEL, name="kimi-k2-small", num_layers=3, hidden_size=256, ffn_hidden_size=512,
            moe_ffn_hidden_size=64, num_experts=16, num_attention_heads=8, q_lora_rank=96, kv_lora_rank=64,
            qk_head_dim=32, qk_pos_emb_head_dim=16, v_head_dim=32, vocab_size=1024, padded_vocab_size=1024,
            seq_length=256, max_position_embeddings=256),
        source=ParallelLayout(tp=2, ep=2),
        destination=ParallelLayout(tp=1, ep=4),
        mode=RefitMode.NON_COLLOCATED,
        method="nvshmem",
        gpus=8,
        gpus_per_node=4,
        iterations=3,
        use_case="Kimi K2 layouts scaled down (local cluster)",
        description="kimi-k2's architecture and layout shapes on 2 nodes x 4 GPUs: training TP=2, EP=2 "
                    "on ranks 0-3 (node 1), inference TP=1, EP=4 on ranks 4-7 (node 2)",
    ),
)

_SMALL = KIMI_K2_CONFIGS[-1]
KIMI_K2_CONFIGS += (
    _SMALL.with_changes(
        name="kimi-k2-small-fp8", inference_precision="fp8",
        use_case="Kimi K2 layouts scaled down, FP8 inference (local cluster)",
        description=_SMALL.description + "; the destination in FP8 (128x128 blocks, quantised by the sender)"),
)
