"""refitctl's parameter names against Megatron-Core's: one table, checked by the Megatron oracle.

refitctl names every parameter as Megatron-Core's Transformer-Engine spec names it, with global
layer and global expert indices (what `dist_checkpointing` identifies). Megatron-Core has three
other spellings of the same tensor, all in `TABLE`:

- local-spec parameter names (`get_gpt_layer_local_spec`: torch norms as separate modules,
  SequentialMLP experts `local_experts.<k>`), with the layer index local to the pipeline stage
  and the expert index local to the EP rank: global layer = stage's first layer + l, global
  expert = ep_rank * experts / EP + k;
- Transformer-Engine-spec parameter names (norms fused into the next linear, TEGroupedMLP experts
  `linear_fc1.weight<k>`), same local indices;
- checkpoint keys from `sharded_state_dict()`: layers (and experts) stacked as leading axes of one
  tensor, so the key has no index and the global shape is [layers, (experts,) ...].

Placeholders: {L} global layer, {l} stage-local layer, {E} global expert, {k} EP-local expert,
{w} `weight` or `bias`, {n} 1 or 2 (linear_fc1 / linear_fc2). Pure: no Megatron import.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable

from refit_core.errors import ConfigError


@dataclass(frozen=True)
class NameRow:
    """One tensor in its four spellings; `layers` says which layers have it ('moe', 'dense', 'any')."""

    refitctl: str
    local_spec: str
    te_spec: str
    checkpoint: str
    layers: str = "any"


_D = "decoder.layers"
TABLE: tuple[NameRow, ...] = (
    NameRow("embedding.word_embeddings.weight", "embedding.word_embeddings.weight",
            "embedding.word_embeddings.weight", "embedding.word_embeddings.weight"),
    NameRow("embedding.position_embeddings.weight", "embedding.position_embeddings.weight",
            "embedding.position_embeddings.weight", "embedding.position_embeddings.weight"),
    NameRow(f"{_D}.{{L}}.self_attention.linear_qkv.layer_norm_{{w}}", f"{_D}.{{l}}.input_layernorm.{{w}}",
            f"{_D}.{{l}}.self_attention.linear_qkv.layer_norm_{{w}}",
            f"{_D}.self_attention.linear_qkv.layer_norm_{{w}}"),
    NameRow(f"{_D}.{{L}}.self_attention.linear_qkv.{{w}}", f"{_D}.{{l}}.self_attention.linear_qkv.{{w}}",
            f"{_D}.{{l}}.self_attention.linear_qkv.{{w}}", f"{_D}.self_attention.linear_qkv.{{w}}"),
    NameRow(f"{_D}.{{L}}.self_attention.linear_proj.{{w}}", f"{_D}.{{l}}.self_attention.linear_proj.{{w}}",
            f"{_D}.{{l}}.self_attention.linear_proj.{{w}}", f"{_D}.self_attention.linear_proj.{{w}}"),
    # MoE layers keep the pre-MLP norm as a module in both specs; the local spec's checkpoint key
    # maps it onto the dense layer's fused-norm key (its sharded_state_dict_keys_map).
    NameRow(f"{_D}.{{L}}.pre_mlp_layernorm.{{w}}", f"{_D}.{{l}}.pre_mlp_layernorm.{{w}}",
            f"{_D}.{{l}}.pre_mlp_layernorm.{{w}}", f"{_D}.mlp.linear_fc1.layer_norm_{{w}}", layers="moe"),
    NameRow(f"{_D}.{{L}}.mlp.linear_fc1.layer_norm_{{w}}", f"{_D}.{{l}}.pre_mlp_layernorm.{{w}}",
            f"{_D}.{{l}}.mlp.linear_fc1.layer_norm_{{w}}", f"{_D}.mlp.linear_fc1.layer_norm_{{w}}", layers="dense"),
    NameRow(f"{_D}.{{L}}.mlp.router.weight", f"{_D}.{{l}}.mlp.router.weight", f"{_D}.{{l}}.mlp.router.weight",
            f"{_D}.mlp.router.weight", layers="moe"),
    NameRow(f"{_D}.{{L}}.mlp.experts.local_experts.{{E}}.linear_fc{{n}}.{{w}}",
            f"{_D}.{{l}}.mlp.experts.local_experts.{{k}}.linear_fc{{n}}.{{w}}",
            f"{_D}.{{l}}.mlp.experts.linear_fc{{n}}.{{w}}{{k}}", f"{_D}.mlp.experts.experts.linear_fc{{n}}.{{w}}",
            layers="moe"),
    NameRow(f"{_D}.{{L}}.mlp.shared_experts.linear_fc{{n}}.{{w}}", f"{_D}.{{l}}.mlp.shared_experts.linear_fc{{n}}.{{w}}",
            f"{_D}.{{l}}.mlp.shared_experts.linear_fc{{n}}.{{w}}", f"{_D}.mlp.shared_experts.linear_fc{{n}}.{{w}}",
            layers="moe"),
    NameRow(f"{_D}.{{L}}.mlp.linear_fc{{n}}.{{w}}", f"{_D}.{{l}}.mlp.linear_fc{{n}}.{{w}}",
            f"{_D}.{{l}}.mlp.linear_fc{{n}}.{{w}}", f"{_D}.mlp.linear_fc{{n}}.{{w}}", layers="dense"),
    NameRow("decoder.final_layernorm.{w}", "decoder.final_layernorm.{w}", "decoder.final_layernorm.{w}",
            "decoder.final_layernorm.{w}"),
    NameRow("output_layer.weight", "output_layer.weight", "output_layer.weight", "output_layer.weight"),
)

_GROUPS = {"L": r"\d+", "l": r"\d+", "E": r"\d+", "k": r"\d+", "w": "weight|bias", "n": "[12]"}
SPELLINGS = ("local_spec", "te_spec", "checkpoint")


@functools.lru_cache(maxsize=None)
def _regex(pattern: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w)\}", pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>{_GROUPS[m.group(1)]})")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + r"\Z")


def _fill(pattern: str, values: dict[str, object]) -> str:
    return re.sub(r"\{(\w)\}", lambda m: str(values[m.group(1)]), pattern)


def to_refitctl(name: str, spelling: str, *, layer_offset: int = 0, expert_offset: int = 0,
                axis_offsets: tuple[int, ...] = (), is_moe_layer: Callable[[int], bool] = lambda _: True) -> str:
    """refitctl's name for a Megatron-Core parameter name or checkpoint key.

    `spelling` is 'local_spec' or 'te_spec' (parameter names: local layer and expert indices,
    shifted by `layer_offset` = the stage's first layer and `expert_offset` = ep_rank * experts /
    EP) or 'checkpoint' (a key: layer and expert are the shard's `axis_offsets` on the stacked
    leading axes). Raises ConfigError for a name the table does not list.
    """
    if spelling not in SPELLINGS:
        raise ValueError(f"spelling must be one of {SPELLINGS}, got {spelling!r}")
    for row in TABLE:
        m = _regex(getattr(row, spelling)).match(name)
        if m is None:
            continue
        v: dict[str, object] = dict(m.groupdict())
        if spelling == "checkpoint":
            if "L" in row.refitctl:
                v["L"] = axis_offsets[0]
            if "E" in row.refitctl:
                v["E"] = axis_offsets[1]
        else:
            if "l" in v:
                v["L"] = layer_offset + int(v["l"])  # type: ignore[arg-type]
            if "k" in v:
                v["E"] = expert_offset + int(v["k"])  # type: ignore[arg-type]
        if row.layers != "any" and is_moe_layer(int(v["L"])) != (row.layers == "moe"):  # type: ignore[arg-type]
            continue
        return _fill(row.refitctl, v)
    raise ConfigError(f"Megatron-Core name {name!r} ({spelling}) is not in refit_core/peers/megatron_names.py's TABLE: "
                      "add its row")


def megatron_to_refitctl(name: str, *, layer_offset: int = 0, expert_offset: int = 0,
                         is_moe_layer: Callable[[int], bool] = lambda _: True) -> str:
    """refitctl's name for a parameter name of either Megatron spec (local names first)."""
    try:
        return to_refitctl(name, "local_spec", layer_offset=layer_offset, expert_offset=expert_offset,
                           is_moe_layer=is_moe_layer)
    except ConfigError:
        return to_refitctl(name, "te_spec", layer_offset=layer_offset, expert_offset=expert_offset,
                           is_moe_layer=is_moe_layer)
