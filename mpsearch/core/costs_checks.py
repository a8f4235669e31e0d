"""Validation of a cost table's arrays: shapes, widths, finite costs, weight counts and ties.

:func:`checked_fields` is the body of ``CostTable.__post_init__``: it refuses a table that a
solver could not use, naming the entry and how to fix it, and returns the fields normalized
(float arrays, tuples, merged ties, disallowed costs set to +inf). Arrays are scanned in blocks
of rows, so a group table of 10^8 items needs no items x choices temporary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mpsearch.core.config import FLOAT_BITS
from mpsearch.core.errors import BitsOutOfRangeError, CostTableError
from mpsearch.core.group_index import GroupIndex

__all__ = ["checked_fields", "merge_ties"]

CHUNK_ROWS = 1 << 20


def _float_array(a: Any, *, copy: bool) -> np.ndarray:
    """float32 input stays float32, anything else becomes float64; copied only when asked or converted."""
    arr = np.asarray(a)
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    return np.array(arr, dtype=dtype, copy=True) if copy else np.asarray(arr, dtype=dtype)


def _first_bad(arr: np.ndarray, allowed: np.ndarray) -> tuple[int, int] | None:
    """The first allowed cell that is NaN, infinite or negative, scanning blocks of rows."""
    for a in range(0, arr.shape[0], CHUNK_ROWS):
        block, ok = arr[a : a + CHUNK_ROWS], allowed[a : a + CHUNK_ROWS]
        bad = ok & ~(np.isfinite(block) & (block >= 0))
        if bad.any():
            i, j = np.argwhere(bad)[0]
            return a + int(i), int(j)
    return None


def merge_ties(ties: Sequence[Sequence[int]], n_items: int) -> tuple[tuple[int, ...], ...]:
    """Merge overlapping ties into disjoint groups (union-find)."""
    if not ties:  # the common case, and 10^8 group items: no per-item Python loop
        return ()
    parent = list(range(n_items))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for tie in ties:
        tie = [int(i) for i in tie]
        for i in tie:
            if not 0 <= i < n_items:
                raise CostTableError(
                    f"tie indices must be within 0..{n_items - 1}, but got {i}. Give 0-based item indices or remove the tie."
                )
        for i in tie[1:]:
            parent[find(i)] = find(tie[0])
    groups: dict[int, list[int]] = {}
    for i in range(n_items):
        groups.setdefault(find(i), []).append(i)
    return tuple(sorted(tuple(g) for g in groups.values() if len(g) > 1))


def _check_names_and_bits(items: Sequence[str], bits: Sequence[Any]) -> None:
    n, c = len(items), len(bits)
    if n == 0 or c == 0:
        raise CostTableError(
            f"a cost table needs at least one item and one bit choice, but got {n} x {c}. Give both."
        )
    if not isinstance(items, GroupIndex) and len(set(items)) != n:
        repeated = sorted(name for name, k in Counter(items).items() if k > 1)
        raise CostTableError(f"cost table item names must be unique, but {repeated[:5]} repeat. Give each item its own name.")
    if any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not (1 <= b <= 8 or b == FLOAT_BITS)
           for b in bits):
        raise BitsOutOfRangeError(
            f"cost table bits must be integers within 1..8, but got {tuple(bits)!r}. Use widths such as (2, 3, 4, 8); "
            "16 is also a choice (the unit stays in floating point)."
        )
    if list(bits) != sorted(set(bits)):
        raise CostTableError(
            f"cost table bits must be strictly increasing, but got {tuple(bits)!r}. Give each width once, in increasing order."
        )


def _check_float_units(floats: Any, items: Sequence[str]) -> None:
    """``meta['float_units']``: the modules left in floating point, which a plan gives 16 bits."""
    if not isinstance(floats, (list, tuple)) or not all(isinstance(u, str) and u for u in floats):
        raise CostTableError(
            f"cost table meta `float_units` must be a list of unit names, but got {floats!r:.60}. Fix or remove the entry."
        )
    searched = set(items.units) if isinstance(items, GroupIndex) else set(items)
    clash = sorted(searched.intersection(floats))
    if clash:
        raise CostTableError(
            f"units left in floating point (meta `float_units`) cannot also be searched, but {clash[:5]} are both. "
            "Remove them from `float_units`."
        )


def _weight_counts(raw: Any, items: Sequence[str]) -> np.ndarray:
    n = len(items)
    arr = np.asarray(raw)
    if arr.shape != (n,):
        raise CostTableError(
            f"`n_weights` must be {n} positive integers, but got shape {arr.shape}. Give each item's number of weights."
        )
    if arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr)))):
        raise CostTableError(f"`n_weights` must be {n} positive integers, but got dtype {arr.dtype}. Give whole numbers.")
    if np.any(arr <= 0):
        i = int(np.flatnonzero(arr <= 0)[0])
        raise CostTableError(
            f"`n_weights` must be {n} positive integers, but item {items[i]!r} has {arr[i]}. "
            "Give each item's number of weights (at least 1)."
        )
    return arr.astype(np.int64)


def checked_fields(
    *, items: Sequence[str], bits: Sequence[int], cost: Any, storage_bits: Any, n_weights: Any, allowed: Any,
    ties: Sequence[Sequence[int]], resources: Mapping[str, Any], quantizer: Any, meta: Any,
) -> dict[str, Any]:
    """The fields of a valid cost table, normalized; raises :class:`CostTableError` on the first broken rule."""
    _check_names_and_bits(items, bits)
    for key, value in (("quantizer", quantizer), ("meta", meta)):
        if not isinstance(value, Mapping):
            raise CostTableError(f"cost table `{key}` must be a mapping, but got {type(value).__name__} {value!r:.40}. Pass a dict.")
    _check_float_units(meta.get("float_units", ()), items)
    n, c = len(items), len(bits)
    allowed = np.ones((n, c), bool) if allowed is None else np.asarray(allowed, bool)
    arrays = {"cost": cost, "storage_bits": storage_bits, "allowed": allowed}
    arrays.update({f"resources[{k!r}]": v for k, v in resources.items()})
    for label, arr in arrays.items():
        if np.shape(arr) != (n, c):
            raise CostTableError(
                f"`{label}` must have shape (items, choices) = {(n, c)}, but has {np.shape(arr)}. "
                "Give one row per item and one column per bit width."
            )
    all_allowed = bool(allowed.all())
    # float32 stays float32 (10^8 groups); an array is copied only to mark disallowed cells
    cost = _float_array(cost, copy=not all_allowed)
    if not all_allowed and not allowed.any(axis=1).all():
        bad = [items[i] for i in np.flatnonzero(~allowed.any(axis=1))[:5]]
        raise CostTableError(
            f"every item needs at least one allowed bit choice, but {bad} have none. Give each at least one width "
            "(a number instead of null in its row of `cost` and `storage_bits`), or remove the item."
        )
    checked = {"cost": cost, "storage_bits": _float_array(storage_bits, copy=False)}
    checked.update({f"resources[{k!r}]": _float_array(v, copy=False) for k, v in resources.items()})
    for label, arr in checked.items():
        bad_cell = _first_bad(arr, allowed)
        if bad_cell is not None:
            i, j = bad_cell
            raise CostTableError(
                f"`{label}` must be finite and non-negative where a choice is allowed, but "
                f"item {items[i]!r} at {bits[j]} bits has {float(arr[i, j])!r}. "
                "Check the sensitivity estimate (NaN or negative scores)."
            )
    if not all_allowed:
        cost[~allowed] = np.inf
    counts = _weight_counts(n_weights, items)
    merged = merge_ties(ties, n)
    for group in merged:
        if not allowed[list(group)].all(axis=0).any():
            raise CostTableError(
                f"tied items must share an allowed bit choice, but {[items[i] for i in group]} share none. "
                "Give them a common allowed width, or remove the tie."
            )
    return {
        "items": items if isinstance(items, GroupIndex) else tuple(items), "bits": tuple(int(b) for b in bits),
        "cost": cost, "storage_bits": checked["storage_bits"], "allowed": allowed,
        "n_weights": counts, "ties": merged,
        "resources": {k: checked[f"resources[{k!r}]"] for k in resources},
    }
