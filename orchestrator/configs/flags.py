"""The seed's command-line flags (Megatron's names), mapped onto RunConfig fields.

One table serves argparse (`refitctl plan/submit --tensor-model-parallel-size 2 ...`) and TOML
config files (`tensor_model_parallel_size = 2`), so a flag means the same thing everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from orchestrator import safety
from refit_core.config import RunConfig
from refit_core.errors import ConfigError
from refit_core.planning import methods
from refit_core.planning.layout import RefitMode


@dataclass(frozen=True)
class Flag:
    flag: str
    target: str  # "model", "source", "destination" (a layout's field) or "run" (a RunConfig setting, in its section:
    # refit_core/sections.py SECTION routes it, through RunConfig.with_changes)
    field: str
    kind: Callable[[str], Any] | None  # None: a switch (store_true)
    help: str = ""


def _size(text: str) -> int:
    """Bytes from '1GiB', '256MiB', '512M', '1G' or a plain integer."""
    t = str(text).strip().upper().replace("IB", "").replace("B", "")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


def _on_off(text: str) -> bool:
    """on/off (also 1/0, true/false, yes/no) as a bool."""
    value = {"on": True, "1": True, "true": True, "yes": True, "off": False, "0": False, "false": False,
             "no": False}.get(str(text).strip().lower())
    if value is None:
        raise ValueError(f"{text!r} is not on or off")
    return value


FLAGS: tuple[Flag, ...] = (
    Flag("--tensor-model-parallel-size", "source", "tp", int, "source (training) TP"),
    Flag("--expert-model-parallel-size", "source", "ep", int, "source EP"),
    Flag("--expert-tensor-parallel-size", "source", "etp", int, "source expert TP (must be 1 for MoE)"),
    Flag("--pipeline-model-parallel-size", "source", "pp", int, "source PP"),
    Flag("--decoder-first-pipeline-num-layers", "source", "first_stage_layers", int, "layers of the first source stage"),
    Flag("--decoder-last-pipeline-num-layers", "source", "last_stage_layers", int, "layers of the last source stage"),
    Flag("--rl-inference-tensor-model-parallel-size", "destination", "tp", int, "destination (inference) TP"),
    Flag("--rl-inference-expert-model-parallel-size", "destination", "ep", int, "destination EP"),
    Flag("--rl-inference-expert-tensor-model-parallel-size", "destination", "etp", int, "destination expert TP (1 for MoE)"),
    Flag("--rl-inference-pipeline-model-parallel-size", "destination", "pp", int, "destination PP"),
    Flag("--refit-mode", "run", "mode", RefitMode, "non-collocated or collocated"),
    Flag("--rl-inference-precision", "run", "inference_precision", str,
         "destination weights: bf16 (default) or fp8 (128x128 blocks, float32 scales, quantised by the sender)"),
    Flag("--refit-method", "run", "method", str, methods.method_help()),
    Flag("--payload", "run", "payload", str,
         "what is refit: synthetic (default: refitctl's deterministic shards) or megatron (Megatron-Core "
         "GPTModels of both layouts built on the ranks, refit in place through refit_core/library)"),
    Flag("--num-benchmark-iterations", "run", "iterations", int, "timed iterations"),
    Flag("--num-warmup-iterations", "run", "warmup", int, "untimed warm-up iterations (default 1)"),
    Flag("--refit-bucket-size", "run", "bucket_bytes", _size, "staging bucket per rank, e.g. 1GiB"),
    Flag("--gpus", "run", "gpus", int, "GPUs available (world size); default 8"),
    Flag("--refit-timeout", "run", "timeout_s", float, "seconds a rank waits on a peer before the run fails (default 60)"),
    Flag("--nvshmem-placement", "run", "nvshmem_placement", str,
         "NVSHMEM methods: which shards live in the symmetric heap: auto (default), push (destinations), pull "
         "(sources), all (both; across nodes auto is all); env REFITCTL_NVSHMEM_PLACEMENT overrides it"),
    Flag("--nvshmem-sync", "run", "nvshmem_sync", str,
         "NVSHMEM methods: how an iteration completes: auto (default: host when PEs share a GPU, else device), "
         "host, device; env REFITCTL_NVSHMEM_SYNC overrides it"),
    Flag("--staged-zero-copy", "run", "staged_zero_copy", _on_off,
         "nccl/gloo: on (default) sends long contiguous runs zero-copy; off stages every byte (before/after "
         "measurements); env REFITCTL_STAGED_ZERO_COPY overrides it"),
    Flag("--staged-direct-min-bytes", "run", "staged_direct_min_bytes", _size,
         "nccl/gloo: the shortest run sent zero-copy, e.g. 4MiB (default); env REFITCTL_STAGED_DIRECT_MIN_BYTES "
         "overrides it"),
    Flag("--gloo-shared-memory", "run", "gloo_shared_memory", str,
         "gloo ranks all on one host: read: each receiver reads its senders' shards directly (cross-memory attach; "
         "staged where the kernel refuses); staged: through /dev/shm; auto (default): read where a rank receives at "
         "least 4 MiB, else staged; off: every byte through gloo's loopback sockets"),
    Flag("--relay", "run", "relay", str,
         "auto (default): where the method can forward (nccl, gloo) and it is predicted faster, bytes several GPUs "
         "of a node share cross the node's NICs once and fan out over NVLink; off: every byte straight from a source"),
    Flag("--megatron-unpatched", "run", "megatron_unpatched", None,
         "megatron-* methods: run Megatron-Core's refit as shipped, without refitctl's fix "
         "(refit_core/peers/megatron_patch.py); env REFITCTL_MEGATRON_UNPATCHED=1 too"),
    Flag("--gpu-memory-gb", "run", "gpu_memory_gb", float, "memory per GPU in GiB (H100: 80, H200: 141); default 80"),
    Flag("--gpus-per-node", "run", "gpus_per_node", int, "GPUs per node (time model); default 8"),
    Flag("--intra-node-gbps", "run", "intra_node_gbps", float,
         "intra-node (NVLink) GB/s per GPU per direction, bytes not bits; default 450"),
    Flag("--inter-node-gbps", "run", "inter_node_gbps", float,
         "inter-node (network) GB/s per GPU per direction, bytes not bits; default 50 (one 400 Gb/s NIC)"),
    Flag("--intra-node-both-gbps", "run", "intra_node_both_gbps", float,
         "intra-node GB/s each way while a GPU sends and receives at once; default: the one-way figure"),
    Flag("--local-copy-gbps", "run", "local_copy_gbps", float,
         "device-to-device copy GB/s on one GPU (bytes delivered); default 1500"),
    Flag("--quantise-gbps", "run", "quantise_gbps", float,
         "FP8: the fused quantiser's quantise pass, GB/s of BF16 read (time model); default 2000, assumed, "
         "not measured (benchmarks/gpu_bench.py measures it)"),
    Flag("--amax-gbps", "run", "amax_gbps", float,
         "FP8: the quantiser's scale pass (block maxima), GB/s of BF16 read (time model); default 3000, assumed"),
    Flag("--num-layers", "model", "num_layers", int, "transformer layers"),
    Flag("--hidden-size", "model", "hidden_size", int, "hidden size"),
    Flag("--num-attention-heads", "model", "num_attention_heads", int, "attention heads"),
    Flag("--num-query-groups", "model", "num_query_groups", int, "query groups (GQA); none = one per head"),
    Flag("--kv-channels", "model", "kv_channels", int, "channels per head; none = hidden / heads"),
    Flag("--ffn-hidden-size", "model", "ffn_hidden_size", int, "dense MLP width"),
    Flag("--moe-ffn-hidden-size", "model", "moe_ffn_hidden_size", int, "expert MLP width; none = --ffn-hidden-size"),
    Flag("--num-experts", "model", "num_experts", int, "routed experts per MoE layer; none = a dense model"),
    Flag("--moe-router-topk", "model", "moe_router_topk", int, "experts per token (shapes do not depend on it)"),
    Flag("--moe-shared-expert-intermediate-size", "model", "moe_shared_expert_intermediate_size", int, "shared expert width; none = no shared expert"),
    Flag("--moe-router-enable-expert-bias", "model", "moe_router_enable_expert_bias", None,
         "a per-expert fp32 router bias (Kimi K2, DeepSeek-V3: e_score_correction_bias)"),
    Flag("--first-dense-layers", "model", "first_dense_layers", int, "leading dense (non-MoE) layers"),
    Flag("--seq-length", "model", "seq_length", int, "sequence length (shapes do not depend on it)"),
    Flag("--max-position-embeddings", "model", "max_position_embeddings", int, "learned position embeddings"),
    Flag("--vocab-size", "model", "vocab_size", int, "vocabulary before padding"),
    Flag("--padded-vocab-size", "model", "padded_vocab_size", int, "vocabulary after padding; none = padded to the divisor x TP"),
    Flag("--make-vocab-size-divisible-by", "model", "make_vocab_size_divisible_by", int, "vocabulary padding divisor"),
    Flag("--position-embedding-type", "model", "position_embedding_type", str, "learned_absolute, rope or none"),
    Flag("--normalization", "model", "normalization", str, "LayerNorm or RMSNorm"),
    Flag("--q-lora-rank", "model", "q_lora_rank", int, "MLA query LoRA rank"),
    Flag("--kv-lora-rank", "model", "kv_lora_rank", int, "MLA key/value LoRA rank"),
    Flag("--qk-head-dim", "model", "qk_head_dim", int, "MLA query/key head dim"),
    Flag("--qk-pos-emb-head-dim", "model", "qk_pos_emb_head_dim", int, "MLA rotary head dim"),
    Flag("--v-head-dim", "model", "v_head_dim", int, "MLA value head dim"),
    Flag("--disable-bias-linear", "model", "disable_bias_linear", None, "no linear biases (required for MoE)"),
    Flag("--swiglu", "model", "swiglu", None, "SwiGLU MLPs (fc1 holds gate and up)"),
    Flag("--untie-embeddings-and-output-weights", "model", "untie_embeddings_and_output_weights", None, "a separate output layer"),
    Flag("--multi-latent-attention", "model", "multi_latent_attention", None, "MLA attention (Kimi K2, DeepSeek-V3)"),
)
# Accepted for compatibility with the seed's commands; they do not change what is refit.
IGNORED = ("--micro-batch-size", "--global-batch-size")
IGNORED_KEYS = {n[2:].replace("-", "_") for n in IGNORED} | {"bf16"}
BY_KEY = {f.flag[2:].replace("-", "_"): f for f in FLAGS}
BY_KEY["add_bias_linear"] = Flag("--add-bias-linear", "model", "disable_bias_linear", None)


def _model_default(field: str) -> str:
    from refit_core.planning.model import ModelSpec

    value = {f.name: f.default for f in dataclasses.fields(ModelSpec)}[field]
    if field == "disable_bias_linear":
        return "on"  # a bare-flags config starts with biases off, as MoE needs
    return "off" if value is False else "on" if value is True else "none" if value is None else str(value)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Register every seed flag; unset flags stay None so they do not override a named config."""
    groups = {
        "model": parser.add_argument_group(
            "model (Megatron names; each overrides the named config; with no config the defaults shown apply)"),
        "source": parser.add_argument_group("source layout (training)"),
        "destination": parser.add_argument_group("destination layout (inference)"),
        "run": parser.add_argument_group("run"),
    }
    g = groups["run"]
    for f in FLAGS:
        g = groups[f.target]
        dest = "flag_" + f.flag[2:].replace("-", "_")
        if f.target == "model" and f.help:
            f = dataclasses.replace(f, help=f"{f.help} (default: {_model_default(f.field)})")
        if f.kind is None:
            g.add_argument(f.flag, dest=dest, action="store_true", default=None, help=f.help or argparse.SUPPRESS)
        else:
            g.add_argument(f.flag, dest=dest, type=str, default=None, metavar="V", help=f.help or argparse.SUPPRESS)
    g.add_argument("--add-bias-linear", dest="flag_add_bias_linear", action="store_true", default=None,
                   help="keep linear biases (not allowed for MoE)")
    g.add_argument("--bf16", dest="flag_bf16", action="store_true", default=None, help=argparse.SUPPRESS)
    for name in IGNORED:
        g.add_argument(name, dest="ignored_" + name[2:].replace("-", "_"), default=None, help=argparse.SUPPRESS)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith("flag_") and value is not None and key != "flag_bf16":
            out[key[5:]] = value
    return out


def _convert(f: Flag, key: str, value: Any, where: str) -> Any:
    if f.kind is None:
        if isinstance(value, bool):
            return (not value) if key == "add_bias_linear" else value
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise ConfigError(f"{where}: {f.flag} got {value!r}: give a single value")
    try:
        out = f.kind(value) if f.kind is not RefitMode else RefitMode(str(value))
    except (ValueError, TypeError, OverflowError):
        if f.kind is RefitMode:
            raise ConfigError(f"{where}: {f.flag} {value!r} is not one of non-collocated, collocated") from None
        want = ("an integer" if f.kind in (int, _size) else "a number" if f.kind is float
                else "on or off" if f.kind is _on_off else "a value")
        raise ConfigError(f"{where}: {f.flag} {value!r} is not {want}") from None
    if f.kind is float and not math.isfinite(out):
        raise ConfigError(f"{where}: {f.flag} {value!r} is not a finite number")
    if f.kind is int and isinstance(value, float) and value != int(value):
        raise ConfigError(f"{where}: {f.flag} {value!r} is not an integer")
    return out  # ranges: one check per field, where the field is defined (ModelSpec, ParallelLayout, RunConfig)


def apply_overrides(cfg: RunConfig, values: dict[str, Any], where: str = "command line") -> RunConfig:
    """Return `cfg` with each seed flag in `values` applied; unknown keys are errors."""
    model: dict[str, Any] = {}
    src: dict[str, Any] = {}
    dst: dict[str, Any] = {}
    run: dict[str, Any] = {}
    for key, value in values.items():
        f = BY_KEY.get(key)
        if f is None:
            if key == "name":
                run[key] = safety.name(f"{where}: name", value)
                continue
            if key in ("use_case", "description"):
                run[key] = safety.script_text(f"{where}: {key}", value)
                continue
            if key in IGNORED_KEYS:  # accepted like the seed's command line, and ignored
                continue
            raise ConfigError(f"{where}: unknown setting {key!r}: see `refitctl plan --help` for the flags")
        {"model": model, "source": src, "destination": dst, "run": run}[f.target][f.field] = _convert(f, key, value, where)
    if "num_layers" in model and not {"first_stage_layers", "last_stage_layers"} & set(src) \
            and (cfg.layouts.source.first_stage_layers or cfg.layouts.source.last_stage_layers):
        # a scaled-down run of an unevenly split model: the same rule for the new depth
        pp, layers = src.get("pp", cfg.layouts.source.pp), model["num_layers"]
        src["first_stage_layers"] = None
        src["last_stage_layers"] = None
        if pp >= 1 and layers >= 1:  # else ParallelLayout / ModelSpec below say what is wrong
            per = max(layers // pp, 1)
            last = layers - per * (pp - 1)
            src["last_stage_layers"] = last if 1 <= last != per else None
    try:
        new_model = dataclasses.replace(cfg.model, **model)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    layouts = []
    for side, base, changes in (("source", cfg.layouts.source, src), ("destination", cfg.layouts.destination, dst)):
        try:
            layouts.append(dataclasses.replace(base, **changes))
        except ConfigError as e:
            text = str(e)
            for f in FLAGS:  # "PP must be ..." -> "--pipeline-model-parallel-size (PP) must be ..."
                if f.target == side and text.startswith(f"{f.field.upper()} "):
                    text = f"{f.flag} ({text}"
                    text = text.replace(" must be", ") must be", 1)
                    break
            raise ConfigError(f"{where}: {side} layout: {text}") from None
    return cfg.with_changes(model=new_model, source=layouts[0], destination=layouts[1], **run)
