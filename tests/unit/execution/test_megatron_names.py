"""refit_core/peers/megatron_names.py: every Megatron-Core spelling of a parameter maps to refitctl's name.

Pure (no megatron import): the local-spec and checkpoint spellings are also checked against real
models by tests/e2e/local/test_megatron_oracle.py; the Transformer-Engine spelling (which needs CUDA to
build) only here.
"""

from __future__ import annotations

import pytest

from refit_core.errors import ConfigError
from refit_core.peers.megatron_names import TABLE, megatron_to_refitctl, to_refitctl
from refit_core.planning.model import ModelSpec, inventory


@pytest.mark.parametrize("local, te", [
    ("decoder.layers.1.input_layernorm.weight", "decoder.layers.1.self_attention.linear_qkv.layer_norm_weight"),
    ("decoder.layers.0.mlp.experts.local_experts.1.linear_fc2.weight", "decoder.layers.0.mlp.experts.linear_fc2.weight1"),
    ("decoder.layers.1.pre_mlp_layernorm.bias", "decoder.layers.1.pre_mlp_layernorm.bias"),
])
def test_local_and_te_spec_names_agree(local: str, te: str) -> None:
    kw = dict(layer_offset=2, expert_offset=4)
    assert megatron_to_refitctl(local, **kw) == megatron_to_refitctl(te, **kw)


def test_local_indices_become_global() -> None:
    # stage starting at layer 2, EP rank 1 of 2 with 8 experts: local expert 1 is global expert 5
    assert megatron_to_refitctl("decoder.layers.1.mlp.experts.local_experts.1.linear_fc1.weight",
                                layer_offset=2, expert_offset=4) == \
        "decoder.layers.3.mlp.experts.local_experts.5.linear_fc1.weight"
    assert megatron_to_refitctl("decoder.layers.0.mlp.experts.linear_fc1.weight3", layer_offset=0,
                                expert_offset=4) == "decoder.layers.0.mlp.experts.local_experts.7.linear_fc1.weight"


def test_pre_mlp_norm_is_fused_in_dense_layers_only() -> None:
    dense = megatron_to_refitctl("decoder.layers.0.pre_mlp_layernorm.weight", is_moe_layer=lambda _: False)
    moe = megatron_to_refitctl("decoder.layers.0.pre_mlp_layernorm.weight", is_moe_layer=lambda _: True)
    assert (dense, moe) == ("decoder.layers.0.mlp.linear_fc1.layer_norm_weight", "decoder.layers.0.pre_mlp_layernorm.weight")


def test_checkpoint_keys_take_layer_and_expert_from_the_stacked_axes() -> None:
    assert to_refitctl("decoder.layers.mlp.experts.experts.linear_fc1.weight", "checkpoint",
                       axis_offsets=(1, 3, 0, 0)) == "decoder.layers.1.mlp.experts.local_experts.3.linear_fc1.weight"
    # the local spec's MoE pre-MLP norm is checkpointed under the dense layer's fused-norm key
    assert to_refitctl("decoder.layers.mlp.linear_fc1.layer_norm_bias", "checkpoint", axis_offsets=(1, 0)) == \
        "decoder.layers.1.pre_mlp_layernorm.bias"


def test_every_refitctl_name_has_a_row() -> None:
    spec = ModelSpec(num_layers=3, num_experts=4, moe_shared_expert_intermediate_size=64, first_dense_layers=1,
                     untie_embeddings_and_output_weights=True, swiglu=True)
    names = {p.name for p in inventory(spec).params}
    rows = [r.refitctl for r in TABLE]
    from refit_core.peers.megatron_names import _regex
    for n in names:
        assert any(_regex(r).match(n) for r in rows), n


def test_unknown_name_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"'decoder.layers.0.mlp.foo.weight' \(te_spec\) is not in "
                                          r"refit_core/peers/megatron_names.py's TABLE: add its row"):
        megatron_to_refitctl("decoder.layers.0.mlp.foo.weight")
