"""Exact reductions and the normalized integer program of :class:`~mpsearch.solvers.ilp.ILPSolver`.

Every reduction keeps at least one optimal plan, so the program's optimum is the table's:

- a choice is dropped when another choice of the same item costs no more and uses no more of
  any budget (dominance; of identical choices the first is kept);
- a choice is dropped when its resource above the item's least one exceeds the room the budget
  leaves above every item's least resource (no plan that meets the budget can use it);
- given a plan that meets the budgets (the reference), a choice is dropped when its cost above
  the item's least cost exceeds the reference's whole excess (every plan using it costs more).

The program then sees costs as ``offset + scale * normalized``: each item's least cost is
subtracted and the rest divided by the unit ``scale`` the caller picks (the ILP: a tenth of the
reference's cost, so with nonnegative costs every kept coefficient is at most 10 and a backend's absolute tolerance
is a fixed fraction of the objective, whatever the scale of the sensitivities). Budget rows
are likewise resource above the least, divided by the room: coefficients in [0, 1],
right-hand side 1. Items left with one choice are fixed and leave the program.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mpsearch.solvers.base import RTOL, Reduced

# A choice is dropped only beyond these relative margins, so float rounding in a sum
# never drops a choice that a plan meeting the budgets, or beating the reference, uses.
ROOM_MARGIN = 1e-12
COST_MARGIN = 1e-9


def caps(red: Reduced) -> list[float]:
    """The largest usage each budget accepts: the slack of :func:`~mpsearch.solvers.base.within`."""
    return [v * (1 + RTOL) + 1e-12 for v in red.limits]


def meets(red: Reduced, choice: np.ndarray) -> bool:
    """Whether a plan over the merged items meets every budget."""
    rows = np.arange(len(choice))
    if not red.allowed[rows, choice].all():
        return False
    return all(math.fsum(m[rows, choice]) <= cap for m, cap in zip(red.matrices, caps(red)))


def excess(red: Reduced, keep: np.ndarray, choice: np.ndarray) -> float:
    """The plan's cost above every item's least kept cost."""
    cmin = np.where(keep, red.cost, np.inf).min(axis=1)
    return math.fsum(red.cost[np.arange(len(choice)), choice] - cmin)


def undominated(red: Reduced) -> np.ndarray:
    """The allowed choices that no other choice of the same item dominates."""
    keep = red.allowed.copy()
    cost = np.where(keep, red.cost, np.inf)
    c = cost.shape[1]
    no_worse = cost[:, :, None] <= cost[:, None, :]  # [r, k, j]: choice k costs no more than j
    equal = cost[:, :, None] == cost[:, None, :]
    better = cost[:, :, None] < cost[:, None, :]
    for m in red.matrices:
        m = np.where(keep, m, np.inf)
        no_worse &= m[:, :, None] <= m[:, None, :]
        equal &= m[:, :, None] == m[:, None, :]
        better |= m[:, :, None] < m[:, None, :]
    first = np.arange(c)[:, None] < np.arange(c)[None, :]  # identical choices: the first stays
    beats = keep[:, :, None] & no_worse & (better | (equal & first[None]))
    beats[:, np.arange(c), np.arange(c)] = False
    return keep & ~beats.any(axis=1)


def lift(red: Reduced, keep: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """Move each item of a plan off a dominated choice onto the cheapest kept choice that dominates it."""
    out = choice.copy()
    for r in np.flatnonzero(~keep[np.arange(len(choice)), choice]):
        j = int(choice[r])
        ok = keep[r] & (red.cost[r] <= red.cost[r, j])
        for m in red.matrices:
            ok &= m[r] <= m[r, j]
        out[r] = int(np.flatnonzero(ok)[np.argmin(red.cost[r, ok])])
    return out


def reductions(red: Reduced, reference: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The choices left after the exact reductions (None when they prove that no plan meets the
    budgets) and the reference moved onto undominated choices (it costs no more and still fits)."""
    keep = undominated(red)
    if reference is not None:
        reference = lift(red, keep, reference)
    limits = caps(red)
    while True:
        before = int(keep.sum())
        for m, cap in zip(red.matrices, limits):
            low = np.where(keep, m, np.inf).min(axis=1)
            room = cap - math.fsum(low)
            keep &= (m - low[:, None]) <= room + ROOM_MARGIN * abs(cap)
        if reference is not None:
            budget = excess(red, keep, reference)
            cmin = np.where(keep, red.cost, np.inf).min(axis=1)
            keep &= (red.cost - cmin[:, None]) <= budget * (1 + COST_MARGIN)
        if not keep.any(axis=1).all():
            return None, reference
        if int(keep.sum()) == before:
            return keep, reference


@dataclass(frozen=True, eq=False)
class Program:
    """The normalized integer program over the items that still have a choice to make."""

    keep: np.ndarray  # merged items x choices: the choices left
    fixed: np.ndarray  # per merged item, its only choice left, or -1 when the program chooses
    rows: np.ndarray  # per variable: its merged item
    cols: np.ndarray  # per variable: its choice
    obj: np.ndarray  # per variable: normalized cost above the item's least
    budget_rows: tuple[np.ndarray, ...]  # per budget that can still bind: normalized resource above the least
    offset: float  # sum of the items' least costs
    scale: float  # cost = offset + scale * normalized objective

    @property
    def n_free(self) -> int:
        return int((self.fixed < 0).sum())

    def cost(self, normalized: float) -> float:
        return self.offset + self.scale * normalized

    def choice(self, values: np.ndarray) -> np.ndarray | None:
        """The plan of variable values (one per free item), or None when they are not one choice per item."""
        out = self.fixed.copy()
        picked = np.asarray(values) > 0.5
        counts = np.bincount(self.rows[picked], minlength=len(out))
        if (counts[self.fixed < 0] != 1).any():
            return None
        out[self.rows[picked]] = self.cols[picked]
        return out

    def values(self, choice: np.ndarray) -> np.ndarray:
        """Variable values of a plan (a warm start)."""
        return (choice[self.rows] == self.cols).astype(np.float64)


def program(red: Reduced, keep: np.ndarray, scale: float) -> Program:
    """The normalized program of the kept choices; ``scale`` is the objective unit."""
    cost = np.where(keep, red.cost, np.inf)
    cmin = cost.min(axis=1)
    n_kept = keep.sum(axis=1)
    fixed = np.where(n_kept == 1, np.argmax(keep, axis=1), -1).astype(np.int64)
    free = keep & (n_kept > 1)[:, None]
    rows, cols = np.nonzero(free)
    obj = (red.cost[rows, cols] - cmin[rows]) / scale
    budget_rows = []
    for m, cap in zip(red.matrices, caps(red)):
        low = np.where(keep, m, np.inf).min(axis=1)
        room = cap - math.fsum(low)
        coef = m[rows, cols] - low[rows]
        if len(coef) and coef.max() > 0 and room > 0:
            budget_rows.append(coef / room)
    return Program(keep, fixed, rows.astype(np.int64), cols.astype(np.int64), obj, tuple(budget_rows),
                   math.fsum(cmin), scale)
