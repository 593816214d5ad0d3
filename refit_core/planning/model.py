"""What model is refit: its hyper-parameters (the seed's Megatron flags) and every parameter it has.

`ModelSpec` is the user-facing description, built from the same flags a Megatron-Core training
script takes. `inventory(spec)` lists every parameter with its global shape, dtype and how tensor
parallelism splits it, named as in Megatron-Core's state dict (experts by their global index, as
dist_checkpointing names them). Two attention kinds share one inventory: standard GQA attention
(fused QKV) and Multi-head Latent Attention (Kimi K2 / DeepSeek-V3).
"""

from __future__ import annotations

import functools

import math
from dataclasses import dataclass
from functools import cached_property

from refit_core.errors import ConfigError

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float8_e4m3fn": 1}
MODEL_DTYPES = ("bfloat16", "float16", "float32")  # what a model is trained in; FP8 is a destination's (precision.py)

# Beyond these a config is a typo, not a model: refused before anything is built (the largest public MoE
# models have ~100 layers, a few hundred experts and ~25,000 expert instances; Kimi K2 plans in seconds).
MAX_DIM = 2 ** 31 - 1  # any one size (hidden, ffn, vocab, heads, sequence): Megatron's int32 shapes
MAX_LAYERS = 4096
MAX_EXPERT_INSTANCES = 1 << 17  # num_layers x num_experts: planning time grows with it
MAX_PARAMETERS = 10 ** 13  # Kimi K2 has 1.03e12
_AT_LEAST_1 = ("num_layers", "hidden_size", "num_attention_heads", "seq_length", "vocab_size", "moe_router_topk",
               "make_vocab_size_divisible_by", "kv_lora_rank", "qk_head_dim", "v_head_dim")
_OPTIONAL_AT_LEAST_1 = ("num_query_groups", "kv_channels", "ffn_hidden_size", "moe_ffn_hidden_size", "num_experts",
                        "max_position_embeddings", "padded_vocab_size")
_AT_LEAST_0 = ("first_dense_layers", "qk_pos_emb_head_dim")
_OPTIONAL_AT_LEAST_0 = ("q_lora_rank", "moe_shared_expert_intermediate_size")
_SWITCHES = ("disable_bias_linear", "swiglu", "untie_embeddings_and_output_weights", "multi_latent_attention")


@dataclass(frozen=True)
class ModelSpec:
    """A Megatron-Core-style GPT with optional MoE layers; field names follow Megatron's flags.

    Defaults are Megatron's own where it has one (tied embeddings, learned absolute positions,
    LayerNorm, MHA when --num-query-groups is absent, ffn = 4*hidden), so that a seed command
    that omits a flag describes the same model Megatron would build.
    """

    num_layers: int = 4
    hidden_size: int = 1024
    num_attention_heads: int = 8
    num_query_groups: int | None = None
    kv_channels: int | None = None
    ffn_hidden_size: int | None = None
    moe_ffn_hidden_size: int | None = None
    num_experts: int | None = None
    moe_router_topk: int = 2
    moe_shared_expert_intermediate_size: int | None = None
    moe_router_enable_expert_bias: bool = False
    """Megatron's `--moe-router-enable-expert-bias`: a per-expert fp32 score-correction bias in each
    router (`mlp.router.expert_bias`; `e_score_correction_bias` in DeepSeek-V3 and Kimi K2
    checkpoints). Inference routes with it, so a refit moves it."""
    first_dense_layers: int = 0
    seq_length: int = 512
    max_position_embeddings: int | None = None
    disable_bias_linear: bool = False
    swiglu: bool = False
    vocab_size: int = 32000
    padded_vocab_size: int | None = None
    make_vocab_size_divisible_by: int = 128
    untie_embeddings_and_output_weights: bool = False
    position_embedding_type: str = "learned_absolute"
    normalization: str = "LayerNorm"
    multi_latent_attention: bool = False
    q_lora_rank: int | None = None
    kv_lora_rank: int = 512
    qk_head_dim: int = 128
    qk_pos_emb_head_dim: int = 64
    v_head_dim: int = 128
    dtype: str = "bfloat16"
    name: str = "moe-gpt"

    def __post_init__(self) -> None:
        self._check_sizes()
        if self.dtype not in MODEL_DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}: use one of {', '.join(MODEL_DTYPES)}")
        if self.position_embedding_type not in ("learned_absolute", "rope", "none"):
            raise ConfigError(
                f"--position-embedding-type {self.position_embedding_type!r} is not one of learned_absolute, rope, none"
            )
        if self.normalization not in ("LayerNorm", "RMSNorm"):
            raise ConfigError(f"--normalization {self.normalization!r} is not one of LayerNorm, RMSNorm")
        if self.num_experts is not None and self.num_experts < 1:
            raise ConfigError(f"--num-experts must be >= 1, got {self.num_experts}")
        if not self.multi_latent_attention and self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"--hidden-size {self.hidden_size} is not divisible by --num-attention-heads "
                f"{self.num_attention_heads}: pick sizes that divide or give --kv-channels"
            )
        if self.num_attention_heads % self.query_groups:
            raise ConfigError(
                f"--num-attention-heads {self.num_attention_heads} is not divisible by --num-query-groups "
                f"{self.query_groups}"
            )
        if not 0 <= self.first_dense_layers <= self.num_layers:
            raise ConfigError(f"--first-dense-layers must be in 0..{self.num_layers}, got {self.first_dense_layers}")

    def _check_sizes(self) -> None:
        """Every size an integer in range, every switch a bool: one line naming the flag, before any use."""
        for f in _AT_LEAST_1 + _OPTIONAL_AT_LEAST_1 + _AT_LEAST_0 + _OPTIONAL_AT_LEAST_0:
            v = getattr(self, f)
            if v is None and f in _OPTIONAL_AT_LEAST_1 + _OPTIONAL_AT_LEAST_0:
                continue
            low = 1 if f in _AT_LEAST_1 + _OPTIONAL_AT_LEAST_1 else 0
            flag = f"--{f.replace('_', '-')}"
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"{flag} must be an integer, got {v!r}")
            if not low <= v <= MAX_DIM:
                raise ConfigError(f"{flag} must be {low}..{MAX_DIM}, got {v}")
        for f in _SWITCHES:
            if not isinstance(getattr(self, f), bool):
                raise ConfigError(f"--{f.replace('_', '-')} is a switch: true or false, got {getattr(self, f)!r}")
        for f in ("position_embedding_type", "normalization", "dtype", "name"):
            if not isinstance(getattr(self, f), str):
                raise ConfigError(f"--{f.replace('_', '-')} must be a string, got {getattr(self, f)!r}")
        if self.num_layers > MAX_LAYERS:
            raise ConfigError(f"--num-layers {self.num_layers} is more than {MAX_LAYERS}: check the value")
        if self.num_experts is not None and self.num_layers * self.num_experts > MAX_EXPERT_INSTANCES:
            raise ConfigError(
                f"--num-layers {self.num_layers} x --num-experts {self.num_experts} = "
                f"{self.num_layers * self.num_experts:,} expert instances, more than refitctl plans "
                f"({MAX_EXPERT_INSTANCES:,}; Kimi K2 has 23,424): check the values")
        if self.num_experts is not None and self.moe_router_topk > self.num_experts:
            raise ConfigError(f"--moe-router-topk {self.moe_router_topk} is more than --num-experts "
                              f"{self.num_experts}: a token cannot pick more experts than exist")

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def ffn(self) -> int:
        return self.ffn_hidden_size or 4 * self.hidden_size

    @property
    def moe_ffn(self) -> int:
        return self.moe_ffn_hidden_size or self.ffn

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings or self.seq_length

    @property
    def itemsize(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def padded_vocab(self, tp_sizes: tuple[int, ...] = (1,)) -> int:
        """Vocabulary padded as Megatron does, to a multiple of divisible_by * TP.

        Both layouts must agree on the global shape, so the multiple uses the least common
        multiple of every TP size involved.
        """
        if self.padded_vocab_size is not None:
            return self.padded_vocab_size
        multiple = self.make_vocab_size_divisible_by * math.lcm(*tp_sizes)
        return -(-self.vocab_size // multiple) * multiple

    def is_moe_layer(self, layer: int) -> bool:
        return self.is_moe and layer >= self.first_dense_layers


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its global shape and how the layouts split it.

    `tp_dim` is the dimension tensor parallelism splits (None: replicated over TP). With
    `tp_blocks` = 2 the dimension holds two stacked halves (SwiGLU gate and up) that are split
    separately, so each TP rank holds its part of both. `expert` marks a routed expert's weight
    (whole on the expert-parallel rank that owns it, ETP=1). `layer` is the global layer index
    (pipeline stages split layers); `stage` places non-layer parameters on the first or last stage.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "bfloat16"
    tp_dim: int | None = None
    tp_blocks: int = 1
    layer: int | None = None
    stage: str | None = None
    expert: int | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]

    @property
    def split_dim(self) -> int:
        """The dimension slices are cut along: the TP dimension, else dimension 0."""
        return self.tp_dim if self.tp_dim is not None else 0

    @property
    def index_bytes(self) -> int:
        """Bytes of one index of the split dimension: what one unit of a slice's `length` weighs. The one
        place bytes per index is computed (the plan's byte counts, the memory fit's shard sizes)."""
        return self.nbytes // self.shape[self.split_dim]


@dataclass(frozen=True)
class Inventory:
    """Every parameter of a model, in a fixed order (the order of Megatron's state dict)."""

    spec: ModelSpec
    params: tuple[ParamSpec, ...]
    vocab: int

    @cached_property
    def index(self) -> dict[str, int]:
        return {p.name: i for i, p in enumerate(self.params)}

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.params)

    @property
    def expert_nbytes(self) -> int:
        return sum(p.nbytes for p in self.params if p.expert is not None)


class _Params:
    """Megatron-Core's parameters of one model, appended in its state dict's order (the inventory's builder)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec, self.h, self.bias = spec, spec.hidden_size, not spec.disable_bias_linear
        self.params: list[ParamSpec] = []

    def add(self, name: str, shape: tuple[int, ...], dtype: str | None = None, **kw: object) -> None:
        self.params.append(ParamSpec(name, tuple(int(s) for s in shape), dtype or self.spec.dtype, **kw))  # type: ignore[arg-type]

    def norm(self, prefix: str, layer: int | None, stage: str | None = None) -> None:
        self.add(f"{prefix}weight", (self.h,), layer=layer, stage=stage)
        if self.spec.normalization == "LayerNorm":
            self.add(f"{prefix}bias", (self.h,), layer=layer, stage=stage)

    def fused_norm(self, prefix: str, layer: int, width: int) -> None:
        self.add(f"{prefix}layer_norm_weight", (width,), layer=layer)
        if self.spec.normalization == "LayerNorm":
            self.add(f"{prefix}layer_norm_bias", (width,), layer=layer)

    def mlp(self, prefix: str, layer: int, width: int, expert: int | None = None, fused_ln: bool = False) -> None:
        h, gate = self.h, 2 if self.spec.swiglu else 1
        split = {} if expert is not None else {"tp_dim": 0, "tp_blocks": gate}
        if fused_ln:
            self.fused_norm(f"{prefix}linear_fc1.", layer, h)
        self.add(f"{prefix}linear_fc1.weight", (gate * width, h), layer=layer, expert=expert, **split)
        if self.bias:
            self.add(f"{prefix}linear_fc1.bias", (gate * width,), layer=layer, expert=expert, **split)
        self.add(f"{prefix}linear_fc2.weight", (h, width), layer=layer, expert=expert,
                 **({} if expert is not None else {"tp_dim": 1}))
        if self.bias:
            self.add(f"{prefix}linear_fc2.bias", (h,), layer=layer, expert=expert)

    def mla(self, p: str, a: str, i: int) -> None:
        """Multi-latent attention (Kimi K2, DeepSeek-V3)."""
        spec, h, n = self.spec, self.h, self.spec.num_attention_heads
        qk = n * (spec.qk_head_dim + spec.qk_pos_emb_head_dim)
        self.norm(f"{p}input_layernorm.", i)
        if spec.q_lora_rank:
            self.add(f"{a}linear_q_down_proj.weight", (spec.q_lora_rank, h), layer=i)
            self.fused_norm(f"{a}linear_q_up_proj.", i, spec.q_lora_rank)
            self.add(f"{a}linear_q_up_proj.weight", (qk, spec.q_lora_rank), layer=i, tp_dim=0)
        else:
            self.add(f"{a}linear_q_proj.weight", (qk, h), layer=i, tp_dim=0)
        self.add(f"{a}linear_kv_down_proj.weight", (spec.kv_lora_rank + spec.qk_pos_emb_head_dim, h), layer=i)
        self.fused_norm(f"{a}linear_kv_up_proj.", i, spec.kv_lora_rank)
        self.add(f"{a}linear_kv_up_proj.weight", (n * (spec.qk_head_dim + spec.v_head_dim), spec.kv_lora_rank),
                 layer=i, tp_dim=0)
        self.add(f"{a}linear_proj.weight", (h, n * spec.v_head_dim), layer=i, tp_dim=1)

    def gqa(self, a: str, i: int) -> None:
        """Fused QKV attention, query groups whole per TP rank (MHA when there is one group per head)."""
        spec = self.spec
        qkv = (spec.num_attention_heads + 2 * spec.query_groups) * spec.head_dim
        self.fused_norm(f"{a}linear_qkv.", i, self.h)
        self.add(f"{a}linear_qkv.weight", (qkv, self.h), layer=i, tp_dim=0)
        if self.bias:
            self.add(f"{a}linear_qkv.bias", (qkv,), layer=i, tp_dim=0)
        self.add(f"{a}linear_proj.weight", (self.h, spec.num_attention_heads * spec.head_dim), layer=i, tp_dim=1)

    def layer(self, i: int) -> None:
        spec, p = self.spec, f"decoder.layers.{i}."
        a = f"{p}self_attention."
        self.mla(p, a, i) if spec.multi_latent_attention else self.gqa(a, i)
        if self.bias:
            self.add(f"{a}linear_proj.bias", (self.h,), layer=i)
        if spec.is_moe_layer(i):
            self.norm(f"{p}pre_mlp_layernorm.", i)
            self.add(f"{p}mlp.router.weight", (spec.num_experts, self.h), layer=i)
            if spec.moe_router_enable_expert_bias:
                self.add(f"{p}mlp.router.expert_bias", (spec.num_experts,), dtype="float32", layer=i)
            for e in range(spec.num_experts or 0):
                self.mlp(f"{p}mlp.experts.local_experts.{e}.", i, spec.moe_ffn, expert=e)
            if spec.moe_shared_expert_intermediate_size:
                self.mlp(f"{p}mlp.shared_experts.", i, spec.moe_shared_expert_intermediate_size)
        else:
            # Dense layers fuse the pre-MLP norm into linear_fc1 in both attention kinds: Megatron's
            # MLA layer spec has pre_mlp_layernorm=IdentityOp without experts, like the GQA one.
            self.mlp(f"{p}mlp.", i, spec.ffn, fused_ln=True)


@functools.lru_cache(maxsize=8)
def inventory(spec: ModelSpec, tp_sizes: tuple[int, ...] = (1,)) -> Inventory:
    """List every parameter of `spec` (global shapes), for layouts with the given TP sizes. A pure function of
    frozen values, kept for the last few models: validating, fitting and planning one run build it once."""
    vocab = spec.padded_vocab(tp_sizes)
    b = _Params(spec)
    b.add("embedding.word_embeddings.weight", (vocab, spec.hidden_size), tp_dim=0, stage="first")
    if spec.position_embedding_type == "learned_absolute":
        b.add("embedding.position_embeddings.weight", (spec.max_positions, spec.hidden_size), stage="first")
    for i in range(spec.num_layers):
        b.layer(i)
    b.norm("decoder.final_layernorm.", None, stage="last")
    if spec.untie_embeddings_and_output_weights:
        b.add("output_layer.weight", (vocab, spec.hidden_size), tp_dim=0, stage="last")
    return Inventory(spec, tuple(b.params), vocab)
