"""The AIMET-style baseline: start at the highest width, lower the least sensitive item first.

Every item starts at its widest allowed choice. While a budget is exceeded,
the move with the smallest cost increase per unit of resource saved is
applied (resources normalized by their limits and summed over the budgets
still exceeded). A priority queue keeps this O(moves log items). It is the
baseline the other solvers are compared with, and the repair step of
:mod:`~mpsearch.solvers.convex` (``lower_until_within`` / ``raise_while_fits``).
"""

from __future__ import annotations

import heapq

import numpy as np

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.solvers.base import RTOL, SOLVERS, Solver, SolveResult, Status, reduce


def _best_move(cost, mats, weights, allowed, i: int, j: int, down: bool) -> tuple[float, int]:
    """The best move of item i from column j: (cost change per normalized resource, column)."""
    delta_r = sum(w * (m[i] - m[i, j]) for m, w in zip(mats, weights))
    delta_c = cost[i] - cost[i, j]
    ok = allowed[i] & ((delta_r < 0) if down else (delta_r > 0))
    if down:
        ok &= np.isfinite(delta_c)
    if not ok.any():
        return np.inf, -1
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ok, delta_c / -delta_r if down else -delta_c / delta_r, np.inf if down else -np.inf)
    k = int(np.argmin(ratio)) if down else int(np.argmax(ratio))
    return (float(ratio[k]) if down else -float(ratio[k])), k


def lower_until_within(cost, mats, limits, allowed, choice: np.ndarray) -> bool:
    """Lower items (best cost increase per resource saved) until every limit holds. In place."""
    n = cost.shape[0]
    rows = np.arange(n)
    used = [float(m[rows, choice].sum()) for m in mats]
    over = [u > lim for u, lim in zip(used, limits)]
    if not any(over):
        return True
    weights = [1.0 / lim if o else 0.0 for o, lim in zip(over, limits)]
    heap = [(*_best_move(cost, mats, weights, allowed, i, int(choice[i]), True), i) for i in range(n)]
    heap = [(r, i, k) for r, k, i in heap if k >= 0]
    heapq.heapify(heap)
    while heap and any(u > lim for u, lim in zip(used, limits)):
        _, i, k = heapq.heappop(heap)
        j = int(choice[i])
        for t, m in enumerate(mats):
            used[t] += float(m[i, k] - m[i, j])
        choice[i] = k
        r, k2 = _best_move(cost, mats, weights, allowed, i, k, True)
        if k2 >= 0:
            heapq.heappush(heap, (r, i, k2))
    return all(u <= lim for u, lim in zip(used, limits))


def raise_while_fits(cost, mats, limits, allowed, choice: np.ndarray) -> None:
    """Raise items (best cost decrease per resource added) while every limit still holds. In place.

    A priority queue holds each item's best upgrade that fits the room left when it was
    pushed; room only shrinks, so a popped upgrade that no longer fits is recomputed.
    """
    n = cost.shape[0]
    rows = np.arange(n)
    used = [float(m[rows, choice].sum()) for m in mats]
    weights = [1.0 / lim for lim in limits]

    def best_up(i: int) -> tuple[float, int]:
        j = int(choice[i])
        fits = allowed[i] & (cost[i] < cost[i, j])
        for m, u, lim in zip(mats, used, limits):
            fits &= u + (m[i] - m[i, j]) <= lim
        if not fits.any():
            return 0.0, -1
        extra = sum(w * np.maximum(m[i] - m[i, j], 0.0) for m, w in zip(mats, weights)) + 1e-300
        ratio = np.where(fits, (cost[i, j] - cost[i]) / extra, -np.inf)
        k = int(np.argmax(ratio))
        return float(ratio[k]), k

    heap = []
    for i in range(n):
        r, k = best_up(i)
        if k >= 0:
            heap.append((-r, i, k))
    heapq.heapify(heap)
    while heap:
        _, i, k = heapq.heappop(heap)
        j = int(choice[i])
        if all(u + (m[i, k] - m[i, j]) <= lim for m, u, lim in zip(mats, used, limits)):
            for t, m in enumerate(mats):
                used[t] += float(m[i, k] - m[i, j])
            choice[i] = k
        r, k2 = best_up(i)
        if k2 >= 0:
            heapq.heappush(heap, (-r, i, k2))


def descent_path(cost, mat, allowed) -> list[np.ndarray]:
    """Every plan the greedy passes through from the widest to the narrowest (seeds for a search)."""
    choice = widest(allowed)
    path = [choice.copy()]
    weights = [1.0 / max(float(mat.max()), 1e-300)]
    heap = [(*_best_move(cost, (mat,), weights, allowed, i, int(choice[i]), True), i) for i in range(cost.shape[0])]
    heap = [(r, i, k) for r, k, i in heap if k >= 0]
    heapq.heapify(heap)
    while heap:
        _, i, k = heapq.heappop(heap)
        choice[i] = k
        path.append(choice.copy())
        r, k2 = _best_move(cost, (mat,), weights, allowed, i, k, True)
        if k2 >= 0:
            heapq.heappush(heap, (r, i, k2))
    return path


def widest(allowed: np.ndarray) -> np.ndarray:
    """Each item's highest allowed column."""
    return (allowed.shape[1] - 1 - np.argmax(allowed[:, ::-1], axis=1)).astype(np.int64)


@SOLVERS.register("greedy")
class GreedySolver(Solver):
    """Lower the least sensitive item until the budgets hold (AIMET-style baseline).

    >>> from mpsearch.solvers import GreedySolver
    >>> GreedySolver().exact
    False
    """

    name = "greedy"
    exact = False
    multi_objective = False
    requires = ()

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed  # deterministic; kept for the common solver signature

    def _solve(self, costs: CostTable, budgets: tuple[Budget, ...], *, time_limit: float | None) -> SolveResult:
        red = reduce(costs, budgets)
        cost = np.where(red.allowed, red.cost, np.inf)
        choice = widest(red.allowed)
        limits = [v * (1 + RTOL) for v in red.limits]
        if not lower_until_within(cost, red.matrices, limits, red.allowed, choice):
            return SolveResult(status=Status.INFEASIBLE, costs=costs, budgets=budgets, info={"heuristic": True})
        return SolveResult(status=Status.FEASIBLE, costs=costs, budgets=budgets, choice=red.expand(choice, costs.n_items))
