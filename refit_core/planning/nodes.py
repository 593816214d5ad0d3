"""Which GPUs share a node, and which link a (source, destination) pair uses.

Ranks sit on nodes in order (node = rank // gpus_per_node), as SLURM places tasks and as the
time model assumes. A slice moves over one of three link classes: a local copy (the destination
already holds it), NVLink (same node) or the network adapters (another node). A node-aware plan
serves each slice from the nearest holder: the GPU itself, else a holder on the same node, else
any holder; the replicas it may choose among are `nearest_holders`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

LOCAL = "local"
INTRA = "intra-node"
INTER = "inter-node"
LINK_CLASSES = (INTRA, INTER)
"""The network link classes a plan balances separately (NVLink, the NICs); local copies are not links."""


@dataclass(frozen=True)
class NodeMap:
    """Ranks packed onto nodes of `gpus_per_node` GPUs in rank order."""

    gpus_per_node: int

    def node(self, rank: int) -> int:
        return rank // self.gpus_per_node

    def link(self, src: int, dst: int) -> str:
        if src == dst:
            return LOCAL
        return INTRA if self.node(src) == self.node(dst) else INTER

    def nearest_holders(self, holders: tuple[int, ...], dst: int) -> tuple[str, tuple[int, ...]]:
        """The link class and the holders a node-aware plan may send from to `dst` (not a holder).

        Holders on `dst`'s node when there are any (NVLink), else every holder (the network).
        `holders` are in ascending order (as sharding makes them): found by bisection, not a scan, so a
        plan asking this once per node stays linear in the rank count.
        """
        node = self.node(dst)
        lo, hi = node * self.gpus_per_node, (node + 1) * self.gpus_per_node
        near = holders[bisect.bisect_left(holders, lo):bisect.bisect_left(holders, hi)]
        return (INTRA, near) if near else (INTER, holders)
