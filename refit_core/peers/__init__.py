"""Outside implementations refitctl is checked against (Megatron-Core's own resharding)."""
