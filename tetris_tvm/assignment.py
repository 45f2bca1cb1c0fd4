"""Capacitated assignment of indices to groups (the exact TETRIS M-step).

With the block mask fixed, permuting one axis of a weight is the problem

    maximise   sum_r C[r, g(r)]
    subject to |{r : g(r) = g}| = cap[g]  for every group g,

where ``C[r, g]`` is the magnitude index ``r`` keeps when placed in block group ``g``. The
indices are ``n`` sources of supply one and the groups ``G`` sinks, so the problem is an
``n x G`` transportation problem, never the ``n x n`` assignment it expands to.

We solve it with Bertsekas' auction algorithm for "similar objects" (each group is ``cap[g]``
identical slots), epsilon-scaled and vectorised over all bidders of a round (Jacobi bidding).
The result is within ``n * eps`` of the optimum, and the dual prices give a certificate: the
returned :class:`AssignmentResult` carries the primal value and an upper bound on the optimum.
Pure numpy, memory ``O(n * G)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:  # built by setup.py; optional so that a machine without a C compiler still works
    from . import _auction as _c_auction
except ImportError:  # pragma: no cover - exercised only where the extension is missing
    _c_auction = None

__all__ = ["AssignmentResult", "assign_to_groups"]

# below this many bidders a vectorised round costs more than bidding one at a time
_SEQUENTIAL_BELOW = 24
_START_EPS = 0.25
# a warm start begins from prices that are already nearly right: skip the coarse phases
_WARM_START_EPS = 1e-3
_EPS_FACTOR = 6.0


@dataclass(frozen=True)
class AssignmentResult:
    """Group of every index, the objective reached and a dual upper bound on the optimum."""

    groups: np.ndarray
    value: float
    upper_bound: float
    rounds: int
    prices: np.ndarray | None = None


def _dual_bound(cost: np.ndarray, cap: np.ndarray, prices: np.ndarray) -> float:
    """Weak-duality bound ``sum_r max_g (C[r,g] - p_g) + sum_g cap_g p_g`` (any ``p``)."""
    return float((cost - prices[None, :]).max(axis=1).sum() + (cap * prices).sum())


def _two_smallest(price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest and second-cheapest slot price of each group (rows of ``price``)."""
    if price.shape[1] == 1:
        return price[:, 0].copy(), np.full(price.shape[0], np.inf)
    two = np.partition(price, 1, axis=1)
    return two[:, 0].copy(), two[:, 1].copy()


class _Auction:
    """State of an epsilon-scaled auction: slot prices, slot holders and each index's group."""

    def __init__(self, cost: np.ndarray, cap: np.ndarray) -> None:
        self.cost = cost
        n, n_groups = cost.shape
        self.price = _initial_prices(cap)
        self.holder = np.full(self.price.shape, -1, dtype=np.int64)
        self.owner = np.full(n, -1, dtype=np.int64)
        self.owner_slot = np.full(n, -1, dtype=np.int64)
        self.m1, self.m2 = _two_smallest(self.price)
        self.rounds = 0

    def seed(self, groups: np.ndarray, prices: np.ndarray) -> None:
        """Start from an earlier assignment and its slot prices (members fill slots in order)."""
        self.price[...] = prices
        order = np.argsort(groups, kind="stable")
        g_sorted = groups[order]
        slot = np.arange(g_sorted.size) - np.searchsorted(g_sorted, g_sorted, side="left")
        self.holder[g_sorted, slot] = order
        self.owner[order] = g_sorted
        self.owner_slot[order] = slot
        self.m1, self.m2 = _two_smallest(self.price)

    def release_violators(self, eps: float) -> None:
        """Unassign the indices whose slot is no longer within ``eps`` of their best choice."""
        held = np.flatnonzero(self.owner >= 0)
        if held.size == 0:
            return
        g, slot = self.owner[held], self.owner_slot[held]
        c = self.cost[held]
        mine = c[np.arange(held.size), g] - self.price[g, slot]
        best = (c - self.m1[None, :]).max(axis=1)
        bad = held[mine < best - eps]
        self.holder[self.owner[bad], self.owner_slot[bad]] = -1
        self.owner[bad] = -1
        self.owner_slot[bad] = -1

    def run(self, eps: float, max_rounds: int) -> None:
        """Bid (all unassigned indices at once) until every index holds a slot."""
        cost, price, holder = self.cost, self.price, self.holder
        n_groups = cost.shape[1]
        capmax = price.shape[1]
        for _ in range(max_rounds):
            bidders = np.flatnonzero(self.owner < 0)
            k = bidders.size
            if k == 0:
                return
            if k <= _SEQUENTIAL_BELOW:
                self._bid_sequentially(bidders, eps, max_rounds)
                return
            self.rounds += 1
            c_b = cost[bidders]
            value = c_b - self.m1[None, :]
            ar = np.arange(k)
            best = value.argmax(axis=1)
            top = c_b[ar, best]
            value[ar, best] = -np.inf
            other = value.max(axis=1) if n_groups > 1 else np.full(k, -np.inf)
            second = np.maximum(other, top - self.m2[best])
            # a bidder with no alternative at all: any raise keeps eps-CS
            second = np.where(np.isfinite(second), second, top - self.m1[best] - eps)
            bid = top - second + eps

            # per group, the i-th highest bid takes the i-th cheapest slot if it beats it
            order = np.lexsort((-bid, best))
            g_sorted, b_sorted, who = best[order], bid[order], bidders[order]
            rank = ar - np.searchsorted(g_sorted, g_sorted, side="left")
            keep = rank < capmax
            g_sorted, b_sorted, who, rank = g_sorted[keep], b_sorted[keep], who[keep], rank[keep]
            touched, local = np.unique(g_sorted, return_inverse=True)
            slot_order = np.argsort(price[touched], axis=1, kind="stable")
            slot = slot_order[local, rank]
            accept = b_sorted > price[g_sorted, slot]
            g_acc, slot_acc, who_acc = g_sorted[accept], slot[accept], who[accept]
            evicted = holder[g_acc, slot_acc]
            evicted = evicted[evicted >= 0]
            self.owner[evicted] = -1
            self.owner_slot[evicted] = -1
            holder[g_acc, slot_acc] = who_acc
            price[g_acc, slot_acc] = b_sorted[accept]
            self.owner[who_acc] = g_acc
            self.owner_slot[who_acc] = slot_acc
            self.m1[touched], self.m2[touched] = _two_smallest(price[touched])
        raise RuntimeError(f"auction did not converge within {max_rounds} rounds")

    def _bid_sequentially(self, bidders: np.ndarray, eps: float, max_rounds: int) -> None:
        """Gauss-Seidel tail: few bidders left, one bid at a time is cheaper than a round."""
        cost, price, holder, owner, owner_slot = (
            self.cost, self.price, self.holder, self.owner, self.owner_slot
        )
        m1, m2 = self.m1, self.m2
        multi = price.shape[1] > 1
        stack = list(bidders)
        for _ in range(max_rounds * 4):
            if not stack:
                return
            self.rounds += 1
            r = stack.pop()
            c = cost[r]
            value = c - m1
            g = int(value.argmax())
            top = c[g]
            value[g] = -np.inf
            second = max(float(value.max()), top - m2[g])
            if not np.isfinite(second):
                second = top - m1[g] - eps
            row = price[g]
            slot = int(row.argmin())
            prev = holder[g, slot]
            if prev >= 0:
                owner[prev] = -1
                owner_slot[prev] = -1
                stack.append(prev)
            holder[g, slot] = r
            row[slot] = top - second + eps
            owner[r] = g
            owner_slot[r] = slot
            if multi:
                two = np.partition(row, 1)
                m1[g], m2[g] = two[0], two[1]
            else:
                m1[g] = row[0]
        raise RuntimeError(f"auction did not converge within {max_rounds} rounds")


def _initial_prices(cap: np.ndarray) -> np.ndarray:
    capmax = int(cap.max())
    price = np.zeros((cap.size, capmax))
    price[np.arange(capmax)[None, :] >= cap[:, None]] = np.inf
    return price


def _run_c(
    cost: np.ndarray,
    cap: np.ndarray,
    eps: float,
    eps_final: float,
    max_rounds: int,
    warm_start: AssignmentResult | None,
) -> AssignmentResult:
    n, n_groups = cost.shape
    price = _initial_prices(cap)
    owner = np.full(n, -1, dtype=np.int64)
    if warm_start is not None and warm_start.prices is not None:
        if warm_start.prices.shape == price.shape:
            price[...] = warm_start.prices
            owner[...] = warm_start.groups
            eps = max(float(np.ptp(cost)) * _WARM_START_EPS, eps_final)
    cost_c = np.ascontiguousarray(cost)
    bids = _c_auction.run_auction(
        cost_c, n, n_groups, price.shape[1], price, owner, eps, eps_final, _EPS_FACTOR,
        max_rounds * 100,
    )
    value = float(cost[np.arange(n), owner].sum())
    group_price = price.min(axis=1)
    upper = _dual_bound(cost, cap, group_price)
    return AssignmentResult(owner, value, max(upper, value), int(bids), price)


def assign_to_groups(
    cost: np.ndarray,
    cap: np.ndarray,
    *,
    rel_tol: float = 1e-2,
    max_rounds: int = 1_000_000,
    warm_start: AssignmentResult | None = None,
    backend: str = "auto",
) -> AssignmentResult:
    """Assign each of ``n`` indices to one of ``G`` groups, group ``g`` taking ``cap[g]`` indices.

    Maximises ``sum_r cost[r, g(r)]``. ``cap`` must sum to ``n``. The answer is within
    ``n * eps`` of the optimum with ``eps = rel_tol * (max(cost) - min(cost)) / n`` (an
    essentially exact optimum: the gap is at most ``rel_tol`` times the value of one index);
    :attr:`AssignmentResult.upper_bound` certifies it. ``warm_start`` (an earlier result for a
    similar cost matrix of the same shape) starts from its assignment and prices. ``backend``:
    ``"c"`` (the compiled Gauss-Seidel auction), ``"numpy"`` (vectorised Jacobi rounds) or
    ``"auto"`` (C when it was built).
    """
    cost = np.asarray(cost, dtype=np.float64)
    cap = np.asarray(cap, dtype=np.int64)
    n, n_groups = cost.shape
    if cap.shape != (n_groups,) or int(cap.sum()) != n or (cap < 0).any():
        raise ValueError(f"capacities {cap.tolist()} must be non-negative and sum to {n}")
    if n_groups == 1 or n == 0:
        groups = np.zeros(n, dtype=np.int64)
        value = float(cost[:, 0].sum()) if n else 0.0
        return AssignmentResult(groups, value, value, 0)

    spread = float(cost.max() - cost.min())
    if spread == 0.0:
        groups = np.repeat(np.arange(n_groups), cap)
        value = float(cost[0, 0] * n)
        return AssignmentResult(groups, value, value, 0)

    eps_final = max(rel_tol * spread / n, 1e-12 * spread)
    eps = spread * _START_EPS
    if backend == "auto":
        backend = "c" if _c_auction is not None else "numpy"
    if backend == "c":
        if _c_auction is None:
            raise RuntimeError("the C auction extension (tetris_tvm._auction) is not built")
        return _run_c(cost, cap, eps, eps_final, max_rounds, warm_start)
    if backend != "numpy":
        raise ValueError(f"backend must be 'auto', 'c' or 'numpy', got {backend!r}")
    auction = _Auction(cost, cap)
    if warm_start is not None and warm_start.prices is not None:
        if warm_start.prices.shape == auction.price.shape:
            auction.seed(warm_start.groups, warm_start.prices)
            eps = max(spread * _WARM_START_EPS, eps_final)
    while True:
        auction.release_violators(eps)
        auction.run(eps, max_rounds)
        if eps <= eps_final:
            break
        eps = max(eps / _EPS_FACTOR, eps_final)

    groups = auction.owner
    value = float(cost[np.arange(n), groups].sum())
    upper = _dual_bound(cost, cap, auction.m1)
    return AssignmentResult(groups, value, max(upper, value), auction.rounds, auction.price)
