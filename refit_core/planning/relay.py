"""Relays: bytes that several GPUs of one node need cross the node's NICs once, then fan out over NVLink.

In a node-aware plan a slice none of whose holders sits on its destination's node crosses the network.
When several destinations on one node need the same slice (with inference TP=1 every GPU needs every
dense weight), a direct plan carries it across the network once per destination: the node's NICs carry
the same bytes again and again. A relayed plan carries it once per node. The node's destinations that
share slices split their shared stream evenly (a contiguous run each, cut at whole rows of the split
dimension), so each GPU's NIC takes an even share; each receives its run from a source (hop 0, balanced
among the sources with every other network byte) and forwards it to the other members over NVLink
(hop 1), from its own destination shard once its receive has completed. A relay forwards only what it
received itself at hop 0: no chains.

Only slices identical on every member (same parameter, range and source offset) are shared; a slice cut
differently on two destinations of a node travels directly. Pure: atoms in, atoms and forwards out.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, NamedTuple

from refit_core.planning.nodes import INTER, NodeMap


class Atom(NamedTuple):
    """A destination's slice [start, start+length) of `param` that one overlap of shards delivers."""

    dst: int
    param: int
    start: int
    length: int
    src_offset: int
    dst_offset: int


class Forward(NamedTuple):
    """Hop 1: `relay` forwards [start, start+length) of `param` from its destination shard (at
    `relay_offset`) to `dst` (at `dst_offset`), both on one node."""

    param: int
    relay: int
    dst: int
    start: int
    length: int
    relay_offset: int
    dst_offset: int


GroupKey = tuple[str, Hashable]
"""(link class, which holders may serve it): the planner's replica groups."""


class _Shared(NamedTuple):
    key: GroupKey  # the replica group serving hop 0
    atoms: tuple[Atom, ...]  # the same slice for each member, members ascending


def relay(groups: dict[GroupKey, list[Atom]], nodes: NodeMap,
          unit: list[int]) -> tuple[dict[GroupKey, list[Atom]], list[Forward]]:
    """The groups with every shared cross-node slice delivered once per node (to its relay), and the
    forwards from the relays. `groups` is not changed; `unit[param]` is the bytes per index of `param`."""
    streams: dict[tuple[int, tuple[int, ...]], list[_Shared]] = defaultdict(list)
    out: dict[GroupKey, list[Atom]] = {}
    per_node = nodes.gpus_per_node  # node = rank // per_node (NodeMap.node), inlined: one lookup per atom
    for key, atoms in groups.items():
        if key[0] != INTER:
            out[key] = atoms
            continue
        same: dict[tuple[int, int, int, int, int], list[Atom]] = defaultdict(list)
        for a in atoms:
            same[(a.dst // per_node, a.param, a.start, a.length, a.src_offset)].append(a)
        kept: list[Atom] = []
        for (node, *_), group in same.items():
            members = tuple(sorted(a.dst for a in group))
            if len(group) < 2 or len(set(members)) < len(members):
                kept.extend(group)
            else:
                streams[(node, members)].append(_Shared(key, tuple(sorted(group))))
        out[key] = kept
    forwards: list[Forward] = []
    for (_, members), shared in sorted(streams.items()):
        shared.sort(key=lambda s: (s.atoms[0].param, s.atoms[0].start))
        forwards.extend(_split_stream(shared, members, unit, out))
    return {k: v for k, v in out.items() if v}, forwards


def _split_stream(shared: list[_Shared], members: tuple[int, ...], unit: list[int],
                  out: dict[GroupKey, list[Atom]]) -> list[Forward]:
    """Cut one node's shared stream into `len(members)` contiguous runs of even bytes (at whole indices);
    member i relays run i: its hop-0 atoms go into their replica groups in `out`, the forwards are returned."""
    total = sum(s.atoms[0].length * unit[s.atoms[0].param] for s in shared)
    k = len(members)
    forwards: list[Forward] = []
    i, pos = 0, 0  # the relay now taking the stream, the stream position in bytes at the current slice
    for s in shared:
        first = s.atoms[0]
        ub = unit[first.param]
        done = 0
        while done < first.length:
            take = first.length - done
            if i < k - 1:
                room = total * (i + 1) // k - (pos + done * ub)
                take = min(take, max(0, round(room / ub)))
            if take > 0:
                by = s.atoms[i]
                out.setdefault(s.key, []).append(by._replace(start=by.start + done, length=take,
                                                             src_offset=by.src_offset + done,
                                                             dst_offset=by.dst_offset + done))
                forwards.extend(Forward(a.param, by.dst, a.dst, a.start + done, take, by.dst_offset + done,
                                        a.dst_offset + done) for a in s.atoms if a.dst != by.dst)
                done += take
            if done < first.length:
                i += 1
        pos += first.length * ub
    return forwards
