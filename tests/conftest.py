"""Shared test helpers: small models, and skips for what this machine lacks."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A model small enough for many processes on 2 CPU cores, with every kind of weight.
SMALL_FLAGS = {
    "num_layers": 2, "hidden_size": 256, "num_attention_heads": 8, "ffn_hidden_size": 512,
    "num_experts": 8, "moe_shared_expert_intermediate_size": 256, "seq_length": 128,
    "max_position_embeddings": 128, "vocab_size": 1000,
}
