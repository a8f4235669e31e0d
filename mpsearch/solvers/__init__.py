"""Solvers: turn a CostTable and budgets into the best plan. Arrays only, no torch."""

from __future__ import annotations

from mpsearch.solvers.base import SOLVERS, Solver, SolveResult, Status, get_solver
from mpsearch.solvers.convex import ConvexSolver
from mpsearch.solvers.dp import DPSolver
from mpsearch.solvers.greedy import GreedySolver
from mpsearch.solvers.ilp import ILPSolver
from mpsearch.solvers.lagrange import LagrangeSolution, LagrangeSolver, lagrange_solve
from mpsearch.solvers.search import NSGA2Solver, TPESolver
from mpsearch.solvers.slim import PerUnitBudget

__all__ = [
    "SOLVERS",
    "ConvexSolver",
    "DPSolver",
    "GreedySolver",
    "ILPSolver",
    "LagrangeSolution",
    "LagrangeSolver",
    "NSGA2Solver",
    "PerUnitBudget",
    "SolveResult",
    "Solver",
    "Status",
    "TPESolver",
    "get_solver",
    "lagrange_solve",
    "solve",
]


def solve(costs, budget, *, solver="ilp", time_limit=None, **options):
    """Solve ``costs`` under ``budget`` with a solver given by name or instance.

    >>> # result = solve(costs, Budget.avg_bits(3.0), solver="ilp"); result.plan.save("plan.json")
    """
    return get_solver(solver, **options).solve(costs, budget, time_limit=time_limit)
