"""Split replicated work among its holders so the busiest source sends as little as possible.

Work comes in groups: `demand[holders] = bytes` that any rank in `holders` may send. The smallest
achievable maximum load T* is found by binary search on T with a max-flow feasibility test
(source -> group: demand, group -> holder: unbounded, holder -> sink: T); the flow at T* gives each
holder's share. T* is the exact optimum when shares may be split at any byte, hence a lower bound
for every real plan, which splits at row granularity.
"""

from __future__ import annotations

from collections import deque


class _FlowGraph:
    """Dinic's max-flow on integer capacities (small graphs: groups + sources)."""

    def __init__(self, n: int) -> None:
        self.adj: list[list[int]] = [[] for _ in range(n)]
        self.to: list[int] = []
        self.cap: list[int] = []

    def add(self, u: int, v: int, c: int) -> int:
        self.adj[u].append(len(self.to)); self.to.append(v); self.cap.append(c)
        self.adj[v].append(len(self.to)); self.to.append(u); self.cap.append(0)
        return len(self.to) - 2

    def max_flow(self, s: int, t: int) -> int:
        flow = 0
        n = len(self.adj)
        while True:
            level = [-1] * n
            level[s] = 0
            q = deque([s])
            while q:
                u = q.popleft()
                for e in self.adj[u]:
                    if self.cap[e] > 0 and level[self.to[e]] < 0:
                        level[self.to[e]] = level[u] + 1
                        q.append(self.to[e])
            if level[t] < 0:
                return flow
            it = [0] * n

            def push(u: int, f: int) -> int:
                if u == t:
                    return f
                while it[u] < len(self.adj[u]):
                    e = self.adj[u][it[u]]
                    v = self.to[e]
                    if self.cap[e] > 0 and level[v] == level[u] + 1:
                        got = push(v, min(f, self.cap[e]))
                        if got:
                            self.cap[e] -= got
                            self.cap[e ^ 1] += got
                            return got
                    it[u] += 1
                return 0

            while True:
                f = push(s, 1 << 62)
                if not f:
                    break
                flow += f


def _solve(demand: dict[tuple[int, ...], int], sources: list[int], limit: int
           ) -> tuple[int, dict[tuple[int, ...], dict[int, int]]]:
    groups = list(demand)
    gi = {g: 1 + i for i, g in enumerate(groups)}
    si = {s: 1 + len(groups) + i for i, s in enumerate(sources)}
    sink = 1 + len(groups) + len(sources)
    graph = _FlowGraph(sink + 1)
    edges: list[list[tuple[int, int]]] = []  # per group: (holder, edge); a holder set is hashed once per group,
    for g in groups:                             # not once per holder (that is quadratic in its size)
        node, need = gi[g], demand[g]
        graph.add(0, node, need)
        edges.append([(s, graph.add(node, si[s], need)) for s in g])
    for s in sources:
        graph.add(si[s], sink, limit)
    flow = graph.max_flow(0, sink)
    shares = {g: {s: graph.cap[e ^ 1] for s, e in ge if graph.cap[e ^ 1]} for g, ge in zip(groups, edges)}
    return flow, shares


def min_max_shares(demand: dict[tuple[int, ...], int]) -> tuple[dict[tuple[int, ...], dict[int, int]], int]:
    """Shares per (holder set, holder) minimising the largest holder load; and that optimum.

    Holder sets that share no holder with each other (pipeline stages, say) are balanced apart, each
    at its own optimum: one global flow would only hold every source under the busiest part's
    optimum and could leave a lighter part's sources idle while others send that much."""
    shares: dict[tuple[int, ...], dict[int, int]] = {}
    bound = 0
    for part in _components({g: b for g, b in demand.items() if b > 0}):
        got, b = _min_max_shares(part)
        shares.update(got)
        bound = max(bound, b)
    return shares, bound


def _components(demand: dict[tuple[int, ...], int]) -> list[dict[tuple[int, ...], int]]:
    """The demand split into parts whose holder sets are linked by shared holders (union-find)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for g in demand:
        for h in g[1:]:
            parent[find(h)] = find(g[0])
    parts: dict[int, dict[tuple[int, ...], int]] = {}
    for g, b in demand.items():
        parts.setdefault(find(g[0]), {})[g] = b
    return [parts[k] for k in sorted(parts)]


def _min_max_shares(demand: dict[tuple[int, ...], int]) -> tuple[dict[tuple[int, ...], dict[int, int]], int]:
    demand = {g: b for g, b in demand.items() if b > 0}
    if not demand:
        return {}, 0
    sources = sorted({s for g in demand for s in g})
    total = sum(demand.values())
    lo = -(-total // len(sources))
    hi = max(lo, max(demand.values()))
    if _solve(demand, sources, lo)[0] < total:
        hi = total
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _solve(demand, sources, mid)[0] == total:
                hi = mid
            else:
                lo = mid
    else:
        hi = lo
    _, shares = _solve(demand, sources, hi)
    return shares, hi
