"""The ILP's optimal status is earned: brute force on tables whose costs span 12 decades.

Tables have up to 7 items x 4 widths (at most 16384 plans, enumerated with numpy), several
budgets at once, pins, tie groups, exact cost ties (several optimal plans: the objective is
compared, not the plan), items costing nearly nothing next to items costing 10^12, and
budgets placed exactly at, or a hair around, some plan's usage.
"""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.solvers import ILPSolver, Status, solve

REL = 1e-9


def wide_table(seed: int) -> CostTable:
    """3..7 items, 2..4 widths, item scales 10^uniform(-6, 6) (half the seeds; the others spread over
    4 or 1 decades, where the program has more to decide), plus cheap, huge, zero and equal entries."""
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(3, 8)), int(rng.integers(2, 5))
    bits = np.sort(rng.choice(np.arange(1, 9), size=c, replace=False))
    n_weights = rng.integers(8, 2048, size=n)
    decades = (12.0, 4.0, 12.0, 1.0)[seed % 4]
    scale = 10.0 ** rng.uniform(-decades / 2, decades / 2, size=(n, 1))
    extreme = rng.random(n) if decades == 12 else np.full(n, 0.5)
    scale[extreme < 0.1] = 10.0 ** rng.uniform(-15, -10)
    scale[extreme > 0.9] = 10.0 ** rng.uniform(10, 13)
    profile = rng.random((n, c))
    monotone = rng.random(n) < 0.8
    profile[monotone] = np.sort(profile[monotone], axis=1)[:, ::-1]
    cost = scale * profile
    if rng.random() < 0.3:  # an item identical to another: equal-cost plans
        a, b = rng.choice(n, size=2, replace=False)
        cost[b], n_weights[b] = cost[a], n_weights[a]
    if rng.random() < 0.3:  # two widths of one item with equal cost
        i, (j, k) = int(rng.integers(n)), rng.choice(c, size=2, replace=False)
        cost[i, k] = cost[i, j]
    if rng.random() < 0.1:
        cost[int(rng.integers(n))] = 0.0
    storage = n_weights[:, None] * bits[None, :] + 16 * rng.integers(1, 33, size=(n, 1))
    bops = rng.uniform(0.5, 4.0, size=(n, 1)) * n_weights[:, None] * bits[None, :] ** rng.uniform(1, 2)
    latency = rng.uniform(1, 100, size=(n, c)) * rng.uniform(0.5, 1.5, size=(n, 1))
    allowed = np.ones((n, c), bool)
    for i in range(n):
        u = rng.random()
        if u < 0.2:
            allowed[i] = False
            allowed[i, rng.integers(c)] = True
        elif u < 0.35 and c > 2:
            allowed[i, rng.integers(c)] = False
    ties = []
    if rng.random() < 0.4:
        group = tuple(int(i) for i in rng.choice(n, size=int(rng.integers(2, 4)), replace=False))
        if allowed[list(group)].all(axis=0).any():
            ties.append(group)
    return CostTable(
        items=tuple(f"u{i}" for i in range(n)), bits=tuple(int(b) for b in bits), cost=np.where(allowed, cost, np.nan),
        storage_bits=storage, n_weights=n_weights, allowed=allowed, ties=tuple(ties),
        resources={"bops": bops, "latency": latency}, meta={"seed": seed},
    )


def all_plans(costs: CostTable) -> np.ndarray:
    """Every allowed, tie-respecting plan, one per row."""
    options = [np.flatnonzero(costs.allowed[i]) for i in range(costs.n_items)]
    grids = np.meshgrid(*options, indexing="ij")
    plans = np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
    for group in costs.ties:
        g = list(group)
        plans = plans[(plans[:, g] == plans[:, [g[0]]]).all(axis=1)]
    return plans


def usage_of(costs: CostTable, plans: np.ndarray, kind: str) -> np.ndarray:
    mat = Budget(kind=kind, value=1.0).matrix(costs)
    return mat[np.arange(costs.n_items), plans].sum(axis=1)


def random_budgets(costs: CostTable, plans: np.ndarray, rng: np.random.Generator) -> list[Budget]:
    """avg_bits plus one or two of bops, bytes, latency. Mostly around one random plan's usage (exactly,
    a hair around it, or up to 30 % above), so that several budgets bind; else anywhere in each range."""
    kinds = ["avg_bits", *(str(k) for k in rng.choice(["bops", "bytes", "latency"], size=int(rng.integers(1, 3)), replace=False))]
    anchor = plans[rng.integers(len(plans))]
    budgets = []
    for kind in kinds:
        used = usage_of(costs, plans, kind)
        u = rng.random()
        if u < 0.75:
            factor = float(rng.choice([1.0, 1 + 2e-10, 1 - 2e-10, 1 + 1e-7, 1 - 1e-7])) if u < 0.3 else 1 + 0.3 * rng.random()
            value = float(usage_of(costs, anchor[None], kind)[0]) * factor
        else:
            value = float(used.min() + rng.uniform(0.2, 1.0) * (used.max() - used.min()))
        budgets.append(Budget(kind=kind, value=min(value, float(used.max()))))
    return budgets


def optimum(costs: CostTable, plans: np.ndarray, budgets: list[Budget]) -> float | None:
    """The brute-force optimum under the solvers' budget slack (relative 1e-9, absolute 1e-12)."""
    ok = np.ones(len(plans), bool)
    for b in budgets:
        ok &= usage_of(costs, plans, b.kind) <= b.value * (1 + 1e-9) + 1e-12
    if not ok.any():
        return None
    return float(np.where(costs.allowed, costs.cost, 0.0)[np.arange(costs.n_items), plans[ok]].sum(axis=1).min())


def check(seed: int, solver: ILPSolver | None = None) -> str:
    """Solve one random instance; fail if the ILP breaks a budget, misses the optimum, or calls a
    suboptimal plan optimal. Returns optimal, right (the optimum, not certified) or infeasible."""
    costs = wide_table(seed)
    plans = all_plans(costs)
    budgets = random_budgets(costs, plans, np.random.default_rng(seed + 10**6))
    best = optimum(costs, plans, budgets)
    result = solve(costs, budgets, solver=solver or ILPSolver())
    if best is None:
        assert result.status is Status.INFEASIBLE and result.choice is None, (seed, result.status)
        return "infeasible"
    assert result.choice is not None, (seed, result.status, result.info)
    for b in budgets:
        assert costs.usage(result.choice, b) <= b.value * (1 + 1e-9) + 1e-12, (seed, b)
    assert result.bound is None or result.bound <= best + REL * abs(best), (seed, result.bound, best)
    assert abs(result.objective - best) <= REL * abs(best), (seed, result.status, result.objective, best, result.info)
    return "optimal" if result.status is Status.OPTIMAL else "right"


def test_instances_are_not_trivial() -> None:
    """Guard for the tests below: budgets bind, several at once, over 12 decades, with ties and pins."""
    tables = [wide_table(seed) for seed in range(200)]
    assert sum(bool(t.ties) for t in tables) >= 40
    assert sum(bool((t.allowed.sum(axis=1) == 1).any()) for t in tables) >= 80
    spans = [np.log10(np.nanmax(t.cost) / np.nanmin(t.cost[t.cost > 0])) for t in tables]
    assert sum(s >= 12 for s in spans) >= 50
    binding = 0
    for seed, costs in enumerate(tables[:100]):
        plans = all_plans(costs)
        budgets = random_budgets(costs, plans, np.random.default_rng(seed + 10**6))
        free = optimum(costs, plans, [])
        tight = [optimum(costs, plans, [b]) for b in budgets]
        binding += sum(t is not None and t > free * (1 + 1e-9) + 1e-300 for t in tight) >= 2
    assert binding >= 30  # at least two budgets bind each in a third of the instances


@pytest.mark.parametrize("block", range(10))
def test_never_optimal_when_suboptimal_1000(block: int) -> None:
    """1,000 instances (100 per block, about a second each): always the optimum, nearly always certified."""
    outcomes = [check(seed) for seed in range(block * 100, block * 100 + 100)]
    assert outcomes.count("right") <= 5, outcomes
    assert outcomes.count("infeasible") < 20  # the budgets bind, they do not mostly exclude everything


@pytest.mark.parametrize(("backend", "n"), [("highs", 100), ("cbc", 30)])
def test_the_program_alone_is_exact(backend: str, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without other solvers' plans (no reference to prune by or normalize with, no cross-check but the
    exchange search): the backend, the second pass and the certificate alone."""
    from mpsearch.solvers import ilp

    monkeypatch.setattr(ilp, "heuristic_plans", lambda *args: [])
    outcomes = [check(seed, ILPSolver(backend=backend)) for seed in range(2000, 2000 + n)]
    assert outcomes.count("right") <= 0.05 * n, outcomes


@pytest.mark.slow
def test_the_program_alone_is_exact_1000(monkeypatch: pytest.MonkeyPatch) -> None:
    from mpsearch.solvers import ilp

    monkeypatch.setattr(ilp, "heuristic_plans", lambda *args: [])
    outcomes = [check(seed, ILPSolver(backend="highs")) for seed in range(3000, 4000)]
    assert outcomes.count("right") <= 50
