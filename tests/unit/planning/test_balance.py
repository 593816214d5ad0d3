"""planning/balance.py: replicated work split among its holders so the busiest source sends as little as
possible. Checked against brute force over every integer split of small random demands."""

from __future__ import annotations

import itertools
import random

import pytest

from refit_core.planning.balance import min_max_shares


def brute_force_optimum(demand: dict[tuple[int, ...], int]) -> int:
    """The smallest possible largest load, trying every integer split of every group among its holders."""
    groups = list(demand.items())

    def splits(total: int, holders: tuple[int, ...]):  # every way to share `total` among `holders`
        if len(holders) == 1:
            yield {holders[0]: total}
            return
        for first in range(total + 1):
            for rest in splits(total - first, holders[1:]):
                yield {holders[0]: first, **rest}

    best = None
    for choice in itertools.product(*(list(splits(b, g)) for g, b in groups)):
        load: dict[int, int] = {}
        for share in choice:
            for s, n in share.items():
                load[s] = load.get(s, 0) + n
        worst = max(load.values(), default=0)
        best = worst if best is None else min(best, worst)
    return best or 0


def random_demand(rng: random.Random) -> dict[tuple[int, ...], int]:
    sources = range(rng.randint(1, 4))
    demand = {}
    for _ in range(rng.randint(1, 3)):
        holders = tuple(sorted(rng.sample(list(sources), rng.randint(1, len(sources)))))
        demand[holders] = demand.get(holders, 0) + rng.randint(0, 7)
    return demand


@pytest.mark.parametrize("seed", range(60))
def test_min_max_shares_is_the_brute_force_optimum(seed: int) -> None:
    demand = random_demand(random.Random(seed))
    shares, optimum = min_max_shares(demand)
    assert optimum == brute_force_optimum(demand), demand
    load: dict[int, int] = {}
    for holders, total in demand.items():
        if total == 0:
            assert holders not in shares
            continue
        got = shares[holders]
        assert set(got) <= set(holders), "a share went to a rank that does not hold the slice"
        assert sum(got.values()) == total, "every byte of the group is sent exactly once"
        for s, n in got.items():
            assert n >= 0
            load[s] = load.get(s, 0) + n
    assert max(load.values(), default=0) == optimum


def test_known_splits() -> None:
    # one group held by two ranks: halves; an odd total leaves the busiest one unit more
    assert min_max_shares({(0, 1): 10}) == ({(0, 1): {0: 5, 1: 5}}, 5)
    assert min_max_shares({(0, 1): 7})[1] == 4
    # rank 0 alone must send 6; the shared group then goes wholly to rank 1
    shares, optimum = min_max_shares({(0,): 6, (0, 1): 4})
    assert optimum == 6 and shares[(0, 1)].get(1, 0) == 4
    assert min_max_shares({}) == ({}, 0)
    assert min_max_shares({(0, 1): 0}) == ({}, 0)
