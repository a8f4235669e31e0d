"""Known answers for solver tests: small random cost tables and a brute-force optimum.

Exposed as fixtures (``random_table``, ``brute_force``) so that every solver's tests
under ``tests/solvers`` compare against the same reference.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable

# the same slack the solvers use (mpsearch.solvers.base.RTOL), restated so the
# reference does not depend on the code under test
RTOL = 1e-9


def make_random_table(seed: int, *, max_items: int = 7) -> CostTable:
    """3..max_items items, 2..4 bit choices, costs decreasing in bits, some pins, sometimes a tie,
    NaN in disallowed cells, and a ``bops`` resource column."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, max_items + 1))
    c = int(rng.integers(2, 5))
    bits = tuple(sorted(int(b) for b in rng.choice(np.arange(1, 9), size=c, replace=False)))
    n_weights = rng.integers(16, 4096, size=n)
    sensitivity = rng.lognormal(0.0, 1.5, size=(n, 1))
    cost = sensitivity * np.sort(rng.random((n, c)), axis=1)[:, ::-1]
    storage = n_weights[:, None] * np.array(bits)[None, :] + 16 * rng.integers(1, 33, size=(n, 1))
    bops = rng.uniform(0.5, 4.0, size=(n, 1)) * n_weights[:, None] * np.array(bits)[None, :]
    allowed = np.ones((n, c), bool)
    for i in range(n):
        if rng.random() < 0.25:  # pinned
            allowed[i] = False
            allowed[i, rng.integers(c)] = True
        elif c > 2 and rng.random() < 0.2:  # one width not offered
            allowed[i, rng.integers(c)] = False
    ties: list[tuple[int, ...]] = []
    if rng.random() < 0.5:
        group = tuple(int(i) for i in rng.choice(n, size=int(rng.integers(2, 4)), replace=False))
        if allowed[list(group)].all(axis=0).any():
            ties.append(group)
    cost = np.where(allowed, cost, np.nan)
    return CostTable(
        items=tuple(f"layer{i}" for i in range(n)), bits=bits, cost=cost, storage_bits=storage,
        n_weights=n_weights, allowed=allowed, ties=tuple(ties), resources={"bops": bops},
        meta={"seed": seed},
    )


def usage_matrix(costs: CostTable, kind: str) -> np.ndarray:
    """The per-cell resource of a budget kind, from the table's arrays directly."""
    if kind == "avg_bits":
        return costs.storage_bits / float(costs.n_weights.sum())
    if kind == "bytes":
        return costs.storage_bits / 8.0
    return costs.resources[kind]


@dataclass(frozen=True)
class BruteForce:
    objective: float | None  # None when no valid assignment meets the budgets
    choice: np.ndarray | None
    min_usage: dict[str, float]  # per budget kind, over every valid assignment (budgets ignored)
    max_usage: dict[str, float]
    n_feasible: int


def brute_force_solve(costs: CostTable, budgets: tuple[Budget, ...] | list[Budget]) -> BruteForce:
    """Enumerate every allowed, tie-respecting assignment (itertools.product)."""
    options = [np.flatnonzero(costs.allowed[i]) for i in range(costs.n_items)]
    combos = np.array(list(itertools.product(*options)), dtype=np.int64)
    for group in costs.ties:
        g = list(group)
        combos = combos[(combos[:, g] == combos[:, [g[0]]]).all(axis=1)]
    rows = np.arange(costs.n_items)
    objective = np.where(costs.allowed, costs.cost, 0.0)[rows, combos].sum(axis=1)
    ok = np.ones(len(combos), bool)
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    for b in budgets:
        used = usage_matrix(costs, b.kind)[rows, combos].sum(axis=1)
        low[b.kind], high[b.kind] = float(used.min()), float(used.max())
        ok &= used <= b.value * (1 + RTOL) + 1e-12
    if not ok.any():
        return BruteForce(None, None, low, high, 0)
    best = int(np.flatnonzero(ok)[np.argmin(objective[ok])])
    return BruteForce(float(objective[best]), combos[best], low, high, int(ok.sum()))


@pytest.fixture
def random_table():
    """``random_table(seed)`` -> a small random CostTable."""
    return make_random_table


@pytest.fixture
def brute_force():
    """``brute_force(costs, budgets)`` -> BruteForce with the optimum and the usage range."""
    return brute_force_solve
