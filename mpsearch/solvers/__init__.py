"""Solvers: turn a CostTable and budgets into the best plan. Arrays only, no torch."""

from __future__ import annotations

from .base import SOLVERS, SolveResult, Solver, Status, get_solver
from .convex import ConvexSolver
from .dp import DPSolver
from .greedy import GreedySolver
from .ilp import ILPSolver
from .lagrange import LagrangeSolver, LagrangeSolution, lagrange_solve
from .search import NSGA2Solver, TPESolver

__all__ = [
    "SOLVERS", "SolveResult", "Solver", "Status", "get_solver", "solve",
    "ILPSolver", "ConvexSolver", "LagrangeSolver", "LagrangeSolution", "lagrange_solve",
    "DPSolver", "GreedySolver", "TPESolver", "NSGA2Solver",
]


def solve(costs, budget, *, solver="ilp", time_limit=None, **options):
    """Solve ``costs`` under ``budget`` with a solver given by name or instance.

    >>> # result = solve(costs, Budget.avg_bits(3.0), solver="ilp"); result.plan.save("plan.json")
    """
    return get_solver(solver, **options).solve(costs, budget, time_limit=time_limit)
