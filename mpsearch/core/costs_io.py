"""A cost table as versioned JSON: writing the document, and reading one back with exact messages.

The document (``format`` ``mpsearch.costtable``, ``version`` 1) holds ``items`` (names, or
``{"units": [...], "counts": [...]}`` for a group-granularity table), ``bits``, the matrices
``cost``, ``storage_bits`` and ``resources[kind]`` (one row per item, one entry per width,
``null`` where a width is not a choice), ``n_weights``, ``ties`` (lists of item indices),
``quantizer`` and ``meta``. :func:`table_fields` checks the structure and names the entry
that breaks it; :class:`~mpsearch.core.costs.CostTable` then checks the values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from mpsearch.core.documents import check_envelope, read_json
from mpsearch.core.errors import CostTableError
from mpsearch.core.group_index import GroupIndex

__all__ = ["FORMAT", "VERSION", "read_table_document", "table_document", "table_fields"]

FORMAT = "mpsearch.costtable"
VERSION = 1
WHAT = "a cost table"
FIX = "Recompute it with `mpsearch sensitivity --out FILE` (or CostTable.save)."
REQUIRED = ("items", "bits", "cost", "storage_bits", "n_weights")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _items(raw: Any) -> tuple[str, ...] | GroupIndex:
    if isinstance(raw, Mapping):
        units, counts = raw.get("units"), raw.get("counts")
        if not isinstance(units, list) or not all(isinstance(u, str) and u for u in units):
            raise CostTableError(f"cost table `items.units` must be a list of unit names, but got {units!r:.80}. {FIX}")
        if not isinstance(counts, list) or not all(_is_int(c) for c in counts):
            raise CostTableError(f"cost table `items.counts` must be a list of integers, but got {counts!r:.80}. {FIX}")
        return GroupIndex(units, counts)
    if not isinstance(raw, list):
        raise CostTableError(f"cost table `items` must be a list of names, but got {type(raw).__name__} {raw!r:.60}. {FIX}")
    bad = next((i for i, name in enumerate(raw) if not isinstance(name, str) or not name), None)
    if bad is not None:
        raise CostTableError(f"cost table item names must be non-empty strings, but item {bad} is {raw[bad]!r}. {FIX}")
    return tuple(raw)


def _matrix(raw: Any, label: str, items: tuple[str, ...] | GroupIndex, n_bits: int,
            allowed: np.ndarray | None) -> np.ndarray:
    """A float64 (items x widths) array of a JSON matrix; ``null`` cells become 0 and must be disallowed ones."""
    if not isinstance(raw, list) or len(raw) != len(items):
        got = _count(len(raw), "row") if isinstance(raw, list) else f"{type(raw).__name__} {raw!r:.40}"
        raise CostTableError(f"`{label}` must have one row per item ({len(items)}), but has {got}. {FIX}")
    for i, row in enumerate(raw):
        if not isinstance(row, list) or len(row) != n_bits:
            got = _count(len(row), "entry", "entries") if isinstance(row, list) else f"{row!r:.40}"
            raise CostTableError(
                f"`{label}` rows must have one entry per bit width ({n_bits}), but the row of item {items[i]!r} has "
                f"{got}. {FIX}"
            )
        for j, v in enumerate(row):
            if v is None:
                if allowed is not None and allowed[i, j]:
                    raise CostTableError(
                        f"`{label}` must be a number wherever `cost` is, but item {items[i]!r} has null at column {j}. {FIX}"
                    )
            elif not _is_number(v):
                raise CostTableError(
                    f"`{label}` entries must be numbers or null, but item {items[i]!r} has {v!r:.40} at column {j}. {FIX}"
                )
    try:
        return np.array([[0.0 if v is None else v for v in row] for row in raw], np.float64)
    except OverflowError:  # an integer beyond float range
        raise CostTableError(f"`{label}` entries must fit a float64, but one is too large. {FIX}") from None


def table_fields(doc: Any) -> dict[str, Any]:
    """The keyword arguments of :class:`~mpsearch.core.costs.CostTable` that ``doc`` describes.

    Raises :class:`CostTableError` naming the first entry that breaks the document's structure.
    """
    check_envelope(doc, error=CostTableError, what=WHAT, format=FORMAT, versions=(VERSION,), fix=FIX)
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise CostTableError(f"a cost table document must have the entries {list(REQUIRED)}, but lacks {missing}. {FIX}")
    items = _items(doc["items"])
    bits = doc["bits"]
    if not isinstance(bits, list) or not bits:
        raise CostTableError(f"cost table `bits` must be a non-empty list of widths, but got {bits!r:.60}. {FIX}")
    cost = _matrix(doc["cost"], "cost", items, len(bits), None)
    allowed = np.array([[v is not None for v in row] for row in doc["cost"]], bool).reshape(len(items), len(bits))
    n_weights = doc["n_weights"]
    if not isinstance(n_weights, list) or not all(_is_int(v) for v in n_weights):
        raise CostTableError(f"`n_weights` must be a list of integers (weights per item), but got {n_weights!r:.60}. {FIX}")
    ties = doc.get("ties", [])
    if not isinstance(ties, list) or not all(isinstance(t, list) and all(_is_int(i) for i in t) for t in ties):
        raise CostTableError(f"cost table `ties` must be lists of item indices, but got {ties!r:.60}. {FIX}")
    resources = doc.get("resources", {})
    if not isinstance(resources, Mapping):
        raise CostTableError(f"cost table `resources` must be an object of kind -> matrix, but got {resources!r:.60}. {FIX}")
    for key in ("quantizer", "meta"):
        if not isinstance(doc.get(key, {}), Mapping):
            raise CostTableError(
                f"cost table `{key}` must be a JSON object, but got {type(doc[key]).__name__} {doc[key]!r:.40}. "
                f"Replace it with {{}} or recompute the table."
            )
    return {
        "items": items, "bits": tuple(bits), "cost": cost, "allowed": allowed,
        "storage_bits": _matrix(doc["storage_bits"], "storage_bits", items, len(bits), allowed),
        "n_weights": np.array([min(v, 2**62) for v in n_weights], np.int64), "ties": tuple(tuple(t) for t in ties),
        "resources": {k: _matrix(v, f"resources[{k!r}]", items, len(bits), allowed) for k, v in resources.items()},
        "quantizer": dict(doc.get("quantizer", {})), "meta": dict(doc.get("meta", {})),
    }


def table_document(table: Any) -> dict[str, Any]:
    """The JSON document of a :class:`~mpsearch.core.costs.CostTable` (disallowed cells written as null)."""

    def rows(arr: np.ndarray) -> list[list[float | None]]:
        return [[float(v) if ok else None for v, ok in zip(r, a)] for r, a in zip(arr, table.allowed)]

    items = table.items
    return {
        "format": FORMAT,
        "version": VERSION,
        "items": {"units": list(items.units), "counts": list(items.counts)} if isinstance(items, GroupIndex) else list(items),
        "bits": list(table.bits),
        "cost": rows(table.cost),
        "storage_bits": rows(table.storage_bits),
        "n_weights": [int(v) for v in table.n_weights],
        "ties": [list(t) for t in table.ties],
        "resources": {k: rows(v) for k, v in sorted(table.resources.items())},
        "quantizer": dict(table.quantizer),
        "meta": dict(table.meta),
    }


def read_table_document(path: str | os.PathLike[str]) -> Any:
    """The parsed JSON of a cost table file; an unreadable, empty, binary or malformed file raises CostTableError."""
    return read_json(path, error=CostTableError, what=WHAT, fix=FIX)
