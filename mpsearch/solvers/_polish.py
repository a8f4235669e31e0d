"""Exchange local search: the last step of the relaxation-based solvers on layer-wise tables.

Rounding a relaxation leaves a few items on the wrong side of the budget; with
tens of items that costs a few percent. Each pass applies the best improving
move among all single changes (one item to any width) and all pair changes
(two items to any widths) that keep the budget. Pairs are scored as one
vectorized (items x widths)^2 matrix, so this runs only on small tables.
"""

from __future__ import annotations

import numpy as np

MAX_CELLS = 2048  # items x choices above which the pair matrix is not built


def polish(cost: np.ndarray, res: np.ndarray, allowed: np.ndarray | None, choice: np.ndarray, limit: float,
           *, passes: int = 200) -> np.ndarray:
    """Improve ``choice`` (in place and returned) by single and pair exchanges within ``limit``."""
    n, c = cost.shape
    if n * c > MAX_CELLS:
        return choice
    ok = np.ones((n, c), bool) if allowed is None else allowed
    cost = np.where(ok, np.asarray(cost, np.float64), np.inf)
    res = np.where(ok, np.asarray(res, np.float64), np.inf)
    rows = np.arange(n)
    owner = np.repeat(rows, c)
    same = owner[:, None] == owner[None, :]
    for _ in range(passes):
        used = float(res[rows, choice].sum())
        dc = (cost - cost[rows, choice][:, None]).ravel()
        dr = (res - res[rows, choice][:, None]).ravel()
        tol = 1e-12 * max(1.0, float(np.abs(cost[rows, choice]).sum()))
        single = np.where(used + dr <= limit, dc, np.inf)
        pair = dc[:, None] + dc[None, :]
        pair[same | (used + dr[:, None] + dr[None, :] > limit)] = np.inf
        k1 = int(np.argmin(single))
        k2 = int(np.argmin(pair))
        best1, best2 = single[k1], pair.flat[k2]
        if min(best1, best2) >= -tol:
            break
        if best1 <= best2:
            choice[k1 // c] = k1 % c
        else:
            a, b = divmod(k2, n * c)
            choice[a // c] = a % c
            choice[b // c] = b % c
    return choice


def core_exact(cost: np.ndarray, res: np.ndarray, allowed: np.ndarray | None, choice: np.ndarray, limit: float,
               lam: float, *, k: int = 16, max_states: int = 50_000) -> np.ndarray:
    """Re-solve exactly the ``k`` items whose choice is least certain at multiplier ``lam`` (the core).

    An item's certainty is the gap between its best and second-best reduced cost
    ``cost + lam * resource``; the other items stay fixed. The core is solved by
    merging Pareto lists of (resource, cost), so the budget is met exactly.
    """
    n, c = cost.shape
    ok = np.ones((n, c), bool) if allowed is None else allowed
    if n < 2:
        return choice
    rows = np.arange(n)
    reduced = np.where(ok, cost + lam * np.asarray(res, np.float64), np.inf)
    part = np.sort(reduced, axis=1)
    gap = np.where(np.isfinite(part[:, 1]), part[:, 1] - part[:, 0], np.inf) if c > 1 else np.full(n, np.inf)
    core = np.argsort(gap, kind="stable")[: min(k, n)]
    core = core[np.isfinite(gap[core])]
    if not len(core):
        return choice
    fixed = np.ones(n, bool)
    fixed[core] = False
    room = limit - float(np.asarray(res, np.float64)[rows[fixed], choice[fixed]].sum())
    # states: resource, cost, and the choices of the core items so far
    st_r, st_c = np.zeros(1), np.zeros(1)
    st_x = np.zeros((1, 0), np.int64)
    for i in core:
        js = np.flatnonzero(ok[i])
        r = (st_r[:, None] + np.asarray(res[i, js], np.float64)[None, :]).ravel()
        cc = (st_c[:, None] + np.asarray(cost[i, js], np.float64)[None, :]).ravel()
        x = np.concatenate([np.repeat(st_x, len(js), axis=0), np.tile(js, len(st_r))[:, None]], axis=1)
        keep = r <= room * (1 + 1e-12) + 1e-12
        r, cc, x = r[keep], cc[keep], x[keep]
        order = np.lexsort((cc, r))
        r, cc, x = r[order], cc[order], x[order]
        front = cc < np.minimum.accumulate(np.concatenate([[np.inf], cc[:-1]]))
        st_r, st_c, st_x = r[front], cc[front], x[front]
        if len(st_r) > max_states or not len(st_r):
            return choice
    best = int(np.argmin(st_c))
    current = float(np.asarray(cost, np.float64)[core, choice[core]].sum())
    if st_c[best] < current - 1e-12 * max(1.0, abs(current)):
        choice[core] = st_x[best]
    return choice
