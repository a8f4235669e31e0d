"""Per-item lower convex hulls of a multiple-choice knapsack, and passes over them (Numba).

Each item offers a few (resource, cost) points. Only the points on the lower
convex hull, with cost strictly falling as resource grows, can be optimal for
some Lagrange multiplier; ``eff[i, k]`` is the cost saved per unit of resource
by moving item ``i`` from hull vertex ``k`` to ``k + 1`` (falls along the hull).
Sorting every segment by ``eff`` and taking them while the budget lasts solves
the LP relaxation exactly (Dantzig's greedy for the multiple-choice knapsack).

Kernels take float32 or float64 arrays and accumulate in float64. They are
serial on purpose: sums in a fixed order keep plans identical run to run.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def hull_rows(cost, res, allowed, has_allowed, verts, nv, eff):  # pragma: no cover - compiled
    """Fill ``verts`` (hull column indices), ``nv`` (vertex counts) and ``eff`` (segment ratios)."""
    n, c = cost.shape
    order = np.empty(c, np.int64)
    for i in range(n):
        m = 0
        for j in range(c):
            ok = (not has_allowed) or allowed[i, j]
            if ok and math.isfinite(cost[i, j]) and math.isfinite(res[i, j]):
                # insertion sort by (resource, cost, column)
                p = m
                while p > 0:
                    q = order[p - 1]
                    if res[i, q] > res[i, j] or (res[i, q] == res[i, j] and cost[i, q] > cost[i, j]):
                        order[p] = q
                        p -= 1
                    else:
                        break
                order[p] = j
                m += 1
        top = 0
        best = math.inf
        for t in range(m):
            j = order[t]
            cj = float(cost[i, j])
            if cj >= best:  # dominated: no cheaper than a point using less resource
                continue
            best = cj
            rj = float(res[i, j])
            while top >= 2:
                a = verts[i, top - 2]
                b = verts[i, top - 1]
                ra, ca = float(res[i, a]), float(cost[i, a])
                rb, cb = float(res[i, b]), float(cost[i, b])
                if (rb - ra) * (cj - ca) - (cb - ca) * (rj - ra) <= 0.0:
                    top -= 1
                else:
                    break
            verts[i, top] = j
            top += 1
        nv[i] = top
        for k in range(c - 1):
            if k < top - 1:
                a = verts[i, k]
                b = verts[i, k + 1]
                eff[i, k] = (float(cost[i, a]) - float(cost[i, b])) / (float(res[i, b]) - float(res[i, a]))
            else:
                eff[i, k] = -1.0
        for k in range(top, c):
            verts[i, k] = -1


@numba.njit(cache=True, nogil=True)
def base_sums(cost, res, verts):  # pragma: no cover - compiled
    """Cost and resource of every item at its first (least-resource) hull vertex."""
    tc = 0.0
    tr = 0.0
    for i in range(verts.shape[0]):
        j = verts[i, 0]
        tc += float(cost[i, j])
        tr += float(res[i, j])
    return tc, tr


@numba.njit(cache=True, nogil=True)
def eff_range(eff, nv):  # pragma: no cover - compiled
    lo = math.inf
    hi = -math.inf
    for i in range(eff.shape[0]):
        for k in range(nv[i] - 1):
            e = eff[i, k]
            lo = min(lo, e)
            hi = max(hi, e)
    return lo, hi


@numba.njit(cache=True, nogil=True)
def histogram(eff, nv, res, verts, lo, hi, weights, counts):  # pragma: no cover - compiled
    """Resource (and count) of the segments with ``lo <= eff < hi``, in log-spaced bins;
    returns the resource of the segments with ``eff >= hi`` (all taken)."""
    nb = weights.shape[0]
    llo = math.log(lo)
    scale = nb / (math.log(hi) - llo)
    above = 0.0
    for i in range(eff.shape[0]):
        for k in range(nv[i] - 1):
            e = eff[i, k]
            if e < lo:
                continue
            d = float(res[i, verts[i, k + 1]]) - float(res[i, verts[i, k]])
            if e >= hi:
                above += d
                continue
            b = int((math.log(e) - llo) * scale)
            b = min(max(b, 0), nb - 1)
            weights[b] += d
            counts[b] += 1
    return above


@numba.njit(cache=True, nogil=True)
def collect(eff, nv, lo, hi, count):  # pragma: no cover - compiled
    """Flat indices (item * stride + k) and ratios of the segments with ``lo <= eff < hi``."""
    stride = eff.shape[1]
    count = 0  # counted exactly here: the histogram's count is only an estimate near bin edges
    for i in range(eff.shape[0]):
        for k in range(nv[i] - 1):
            if lo <= eff[i, k] < hi:
                count += 1
    idx = np.empty(count, np.int64)
    val = np.empty(count, np.float64)
    m = 0
    for i in range(eff.shape[0]):
        for k in range(nv[i] - 1):
            e = eff[i, k]
            if lo <= e < hi:
                idx[m] = i * stride + k
                val[m] = e
                m += 1
    return idx[:m], val[:m]


@numba.njit(cache=True, nogil=True)
def count_at_least(eff, nv, hi, taken):  # pragma: no cover - compiled
    """``taken[i]`` = length of item i's run of segments with ``eff >= hi``."""
    for i in range(eff.shape[0]):
        k = 0
        while k < nv[i] - 1 and eff[i, k] >= hi:
            k += 1
        taken[i] = k


@numba.njit(cache=True, nogil=True)
def take_sorted(idx, res, verts, taken, stride, room):  # pragma: no cover - compiled
    """Take segments in the given order while they fit; return (room left, first one that did not fit)."""
    for t in range(idx.shape[0]):
        i = idx[t] // stride
        k = idx[t] % stride
        if k != taken[i]:
            continue  # a later segment of an item whose earlier one was not taken
        d = float(res[i, verts[i, k + 1]]) - float(res[i, verts[i, k]])
        if d > room:
            return room, t
        taken[i] = k + 1
        room -= d
    return room, -1


@numba.njit(cache=True, nogil=True)
def next_candidates(eff, nv, res, verts, taken, room):  # pragma: no cover - compiled
    """Each item's next hull segment that still fits in ``room``: (items, ratios)."""
    n = eff.shape[0]
    m = 0
    for i in range(n):
        k = taken[i]
        if k < nv[i] - 1 and float(res[i, verts[i, k + 1]]) - float(res[i, verts[i, k]]) <= room:
            m += 1
    items = np.empty(m, np.int64)
    val = np.empty(m, np.float64)
    m = 0
    for i in range(n):
        k = taken[i]
        if k < nv[i] - 1 and float(res[i, verts[i, k + 1]]) - float(res[i, verts[i, k]]) <= room:
            items[m] = i
            val[m] = eff[i, k]
            m += 1
    return items, val


@numba.njit(cache=True, nogil=True)
def fill_items(items, res, verts, taken, room):  # pragma: no cover - compiled
    """Upgrade the given items by one hull segment each, in order, where it fits."""
    moved = 0
    for t in range(items.shape[0]):
        i = items[t]
        k = taken[i]
        d = float(res[i, verts[i, k + 1]]) - float(res[i, verts[i, k]])
        if d <= room:
            taken[i] = k + 1
            room -= d
            moved += 1
    return room, moved


@numba.njit(cache=True, nogil=True)
def choose(verts, taken, out):  # pragma: no cover - compiled
    for i in range(verts.shape[0]):
        out[i] = verts[i, taken[i]]


@numba.njit(cache=True, nogil=True)
def sums_at(cost, res, choice):  # pragma: no cover - compiled
    tc = 0.0
    tr = 0.0
    for i in range(choice.shape[0]):
        tc += float(cost[i, choice[i]])
        tr += float(res[i, choice[i]])
    return tc, tr


@numba.njit(cache=True, nogil=True)
def dual_value(cost, res, verts, nv, lam):  # pragma: no cover - compiled
    """sum_i min over item i's points of (cost + lam * resource); hull vertices suffice."""
    total = 0.0
    for i in range(verts.shape[0]):
        best = math.inf
        for k in range(nv[i]):
            j = verts[i, k]
            v = float(cost[i, j]) + lam * float(res[i, j])
            best = min(best, v)
        total += best
    return total


def build_hull(cost: np.ndarray, res: np.ndarray, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hull vertices (int8, -1 padded), vertex counts (int8) and segment ratios (float64, -1 padded)."""
    n, c = cost.shape
    verts = np.empty((n, c), np.int8)
    nv = np.empty(n, np.int8)
    eff = np.full((n, max(c - 1, 1)), -1.0, np.float64)
    mask = np.ones((1, 1), np.bool_) if allowed is None else allowed
    hull_rows(cost, res, mask, allowed is not None, verts, nv, eff)
    return verts, nv, eff
