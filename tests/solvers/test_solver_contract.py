"""Every registered solver passes the shipped contract suite (mpsearch/testing/solvers.py)."""

from __future__ import annotations

import pytest

from mpsearch.solvers import SOLVERS
from mpsearch.testing.solvers import check_infeasible, check_seeded, check_solver, contract_table

# keep the searches small: the contract is about validity, not quality
OPTIONS = {"tpe": {"n_trials": 25}, "nsga2": {"n_trials": 25, "population_size": 8}}


def maker(name: str):
    cls = SOLVERS.get(name)
    return lambda seed: cls(seed=seed, **OPTIONS.get(name, {}))


@pytest.mark.parametrize("name", SOLVERS.names())
def test_contract(name: str) -> None:
    if not SOLVERS.get(name).is_available():
        pytest.skip(f"{name} needs {SOLVERS.get(name).requires}")
    if getattr(SOLVERS.get(name), "contract_skip", None):  # a rule stricter than the budget (slim), tested in test_slim
        pytest.skip(SOLVERS.get(name).contract_skip)
    check_solver(maker(name))


def test_every_solver_is_covered() -> None:
    assert {"ilp", "convex", "lagrange", "dp", "greedy", "tpe", "nsga2"} <= set(SOLVERS.names())


def test_contract_catches_a_solver_over_budget() -> None:
    """The suite is not vacuous: a solver that ignores the budget fails it."""
    from mpsearch.solvers.base import Solver, SolveResult, Status

    class Widest(Solver):
        name = "widest"

        def __init__(self, seed: int = 0) -> None:
            self.seed = seed

        def solve(self, costs, budget, *, time_limit=None):  # skips the base class checks on purpose
            from mpsearch.core.budget import as_budgets
            from mpsearch.solvers.greedy import widest

            choice = widest(costs.allowed)
            return SolveResult(status=Status.FEASIBLE, costs=costs, budgets=as_budgets(budget), choice=choice,
                               objective=costs.objective(choice))

    with pytest.raises(AssertionError):
        check_solver(lambda seed: Widest(seed))
    with pytest.raises(AssertionError):
        check_infeasible(lambda seed: Widest(seed))


def test_contract_table_has_pins_and_ties() -> None:
    tables = [contract_table(s) for s in range(6)]
    assert any(t.ties for t in tables) and all((t.allowed.sum(axis=1) == 1).any() for t in tables)


def test_seed_check_catches_unseeded_randomness() -> None:
    import numpy as np

    from mpsearch.solvers.greedy import GreedySolver

    class Noisy(GreedySolver):
        calls = 0  # global state instead of the seed: every other call lowers one item

        def _solve(self, costs, budgets, *, time_limit):
            result = super()._solve(costs, budgets, time_limit=time_limit)
            Noisy.calls += 1
            choice = result.choice.copy()
            tied = {i for g in costs.ties for i in g}
            lowest = np.argmax(costs.allowed, axis=1)
            movable = [i for i in range(costs.n_items) if i not in tied and choice[i] != lowest[i]]
            if Noisy.calls % 2 and movable:
                choice[movable[0]] = lowest[movable[0]]  # less resource: still within budget
            return type(result)(status=result.status, costs=costs, budgets=budgets, choice=choice)

    with pytest.raises(AssertionError, match="the same seed gave different plans"):
        check_seeded(lambda seed: Noisy(seed=seed))


def test_solvers_never_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mpsearch.solvers, mpsearch.testing.solvers as t\n"
        "for name in mpsearch.solvers.SOLVERS.names(): mpsearch.solvers.SOLVERS.get(name)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
