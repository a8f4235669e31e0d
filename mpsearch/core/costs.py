"""Cost tables: what each item costs at each bit width, and what it uses.

A :class:`CostTable` is the whole problem a solver sees, as plain arrays (no
torch): ``cost[i, c]`` is the predicted loss increase of item ``i`` at
``bits[c]``, ``storage_bits[i, c]`` the bits it occupies there (codes plus
scales and zero-points), ``allowed[i, c]`` whether that width is a choice for
that item (pins allow one), ``ties`` the groups of items that must share a
width, and ``resources`` any further per-(item, bits) resource such as BOPs or
latency from a hardware model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mpsearch.core.errors import BitsOutOfRangeError, CostTableError, MPSearchError
from mpsearch.core.io import atomic_write_text

if TYPE_CHECKING:
    from mpsearch.core.budget import Budget
    from mpsearch.core.plan import BitPlan

FORMAT = "mpsearch.costtable"
VERSION = 1


class GroupIndex(Sequence[str]):
    """The items of a group-granularity table, without a name string per group.

    Unit u contributes ``counts[u]`` consecutive items, its groups in row-major
    order (output row, then block of G inputs); item names read ``"unit#k"``.
    A 7B-parameter model at G=64 has about 10^8 groups, so names are made on
    demand rather than stored.

    >>> idx = GroupIndex(("fc1", "fc2"), (4, 2))
    >>> len(idx), idx[5], idx.unit_slice("fc2")
    (6, 'fc2#1', slice(4, 6, None))
    """

    def __init__(self, units: Sequence[str], counts: Sequence[int]) -> None:
        self.units = tuple(units)
        self.counts = tuple(int(c) for c in counts)
        if len(self.units) != len(self.counts) or not self.units:
            raise CostTableError(f"a group index needs one count per unit, but got {len(self.units)} units and {len(self.counts)} counts.")
        if len(set(self.units)) != len(self.units) or any(c <= 0 for c in self.counts):
            raise CostTableError("group index units must be unique with positive group counts.")
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        u = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return f"{self.units[u]}#{i - self.offsets[u]}"

    def unit_slice(self, unit: str) -> slice:
        u = self.units.index(unit)
        return slice(int(self.offsets[u]), int(self.offsets[u + 1]))

    def unit_of(self) -> np.ndarray:
        """The unit index of every item (int32 array)."""
        return np.repeat(np.arange(len(self.units), dtype=np.int32), self.counts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GroupIndex) and self.units == other.units and self.counts == other.counts

    def __hash__(self) -> int:
        return hash((self.units, self.counts))

    def __repr__(self) -> str:
        return f"GroupIndex({len(self.units)} units, {len(self)} groups)"


CHUNK_ROWS = 1 << 20  # validation works on row blocks, so no items x choices temporary is made


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


def _merge_ties(ties: Sequence[Sequence[int]], n_items: int) -> tuple[tuple[int, ...], ...]:
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
                raise CostTableError(f"tie indices must be within 0..{n_items - 1}, but got {i}.")
        for i in tie[1:]:
            parent[find(i)] = find(tie[0])
    groups: dict[int, list[int]] = {}
    for i in range(n_items):
        groups.setdefault(find(i), []).append(i)
    return tuple(sorted(tuple(g) for g in groups.values() if len(g) > 1))


@dataclass(frozen=True, kw_only=True, eq=False)
class CostTable:
    """Items x bit choices: predicted cost, storage and other resources."""

    items: tuple[str, ...] | GroupIndex
    bits: tuple[int, ...]
    cost: np.ndarray
    storage_bits: np.ndarray
    n_weights: np.ndarray
    allowed: np.ndarray | None = None
    ties: tuple[tuple[int, ...], ...] = ()
    resources: Mapping[str, np.ndarray] = field(default_factory=dict)
    quantizer: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, c = len(self.items), len(self.bits)
        if n == 0 or c == 0:
            raise CostTableError(f"a cost table needs at least one item and one bit choice, but got {n} x {c}.")
        if not isinstance(self.items, GroupIndex) and len(set(self.items)) != n:
            raise CostTableError("cost table item names must be unique.")
        if any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= 8 for b in self.bits):
            raise BitsOutOfRangeError(f"cost table bits must be integers within 1..8, but got {self.bits!r}.")
        if list(self.bits) != sorted(set(self.bits)):
            raise CostTableError(f"cost table bits must be strictly increasing, but got {self.bits!r}.")
        allowed = np.ones((n, c), bool) if self.allowed is None else np.asarray(self.allowed, bool)
        arrays = {"cost": self.cost, "storage_bits": self.storage_bits, "allowed": allowed}
        arrays.update({f"resources[{k!r}]": v for k, v in self.resources.items()})
        for label, arr in arrays.items():
            if np.shape(arr) != (n, c):
                raise CostTableError(f"`{label}` must have shape (items, choices) = {(n, c)}, but has {np.shape(arr)}.")
        all_allowed = bool(allowed.all())
        # float32 stays float32 (10^8 groups); an array is copied only to mark disallowed cells
        cost = _float_array(self.cost, copy=not all_allowed)
        if not all_allowed and not allowed.any(axis=1).all():
            bad = [self.items[i] for i in np.flatnonzero(~allowed.any(axis=1))[:5]]
            raise CostTableError(f"every item needs at least one allowed bit choice, but {bad} have none.")
        checked = {"cost": cost, "storage_bits": _float_array(self.storage_bits, copy=False)}
        checked.update({f"resources[{k!r}]": _float_array(v, copy=False) for k, v in self.resources.items()})
        for label, arr in checked.items():
            bad = _first_bad(arr, allowed)
            if bad is not None:
                i, j = bad
                raise CostTableError(
                    f"`{label}` must be finite and non-negative where a choice is allowed, but "
                    f"item {self.items[i]!r} at {self.bits[j]} bits has {float(arr[i, j])!r}. "
                    "Check the sensitivity estimate (NaN or negative scores)."
                )
        if not all_allowed:
            cost[~allowed] = np.inf
        n_weights = np.asarray(self.n_weights, np.int64)
        if n_weights.shape != (n,) or np.any(n_weights <= 0):
            raise CostTableError(f"`n_weights` must be {n} positive integers, but got shape {n_weights.shape}.")
        object.__setattr__(self, "cost", cost)
        object.__setattr__(self, "storage_bits", checked["storage_bits"])
        object.__setattr__(self, "allowed", allowed)
        object.__setattr__(self, "n_weights", n_weights)
        object.__setattr__(self, "resources", {k: checked[f"resources[{k!r}]"] for k in self.resources})
        object.__setattr__(self, "ties", _merge_ties(self.ties, n))
        if not isinstance(self.items, GroupIndex):
            object.__setattr__(self, "items", tuple(self.items))
        object.__setattr__(self, "bits", tuple(int(b) for b in self.bits))
        for group in self.ties:
            if not allowed[list(group)].all(axis=0).any():
                raise CostTableError(
                    f"tied items must share an allowed bit choice, but {[self.items[i] for i in group]} share none."
                )

    # ---- shape -----------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_choices(self) -> int:
        return len(self.bits)

    def with_resources(self, **resources: np.ndarray) -> CostTable:
        """A copy with extra resource columns (e.g. from a hardware model)."""
        merged = dict(self.resources)
        merged.update(resources)
        return CostTable(
            items=self.items, bits=self.bits, cost=np.where(self.allowed, self.cost, 0.0),
            storage_bits=self.storage_bits, n_weights=self.n_weights, allowed=self.allowed,
            ties=self.ties, resources=merged, quantizer=self.quantizer, meta=self.meta,
        )

    # ---- evaluating assignments -----------------------------------------
    def check_choice(self, choice: np.ndarray) -> np.ndarray:
        """Validate an assignment (one column index per item)."""
        choice = np.asarray(choice)
        if choice.shape != (self.n_items,) or not np.issubdtype(choice.dtype, np.integer):
            raise CostTableError(f"an assignment must be {self.n_items} column indices, but got shape {choice.shape}.")
        if np.any((choice < 0) | (choice >= self.n_choices)):
            raise CostTableError(f"assignment indices must be within 0..{self.n_choices - 1}.")
        if not self.allowed[np.arange(self.n_items), choice].all():
            raise CostTableError("an assignment picks a bit width that an item does not allow.")
        for group in self.ties:
            if len(set(choice[list(group)].tolist())) > 1:
                raise CostTableError(
                    f"tied items must share one bit width, but {[self.items[i] for i in group]} get "
                    f"{[self.bits[int(c)] for c in choice[list(group)]]}."
                )
        return choice

    def objective(self, choice: np.ndarray) -> float:
        return float(self.cost[np.arange(self.n_items), choice].sum(dtype=np.float64))

    def usage(self, choice: np.ndarray, budget: Budget) -> float:
        # built-in kinds read storage_bits directly: no items x choices temporary
        if budget.kind == "avg_bits":
            return self.average_bits(choice)
        if budget.kind == "bytes":
            return self.storage_bytes(choice)
        return float(budget.matrix(self)[np.arange(self.n_items), choice].sum(dtype=np.float64))

    def average_bits(self, choice: np.ndarray) -> float:
        """Average stored bits per weight, scales and zero-points included."""
        return float(self.storage_bits[np.arange(self.n_items), choice].sum(dtype=np.float64) / self.n_weights.sum())

    def storage_bytes(self, choice: np.ndarray) -> float:
        return float(self.storage_bits[np.arange(self.n_items), choice].sum(dtype=np.float64) / 8.0)

    def min_usage(self, budget: Budget) -> float:
        """The smallest value of the budget's resource any valid assignment reaches (ties respected)."""
        return self._extreme_usage(budget, largest=False)

    def max_usage(self, budget: Budget) -> float:
        """The largest value of the budget's resource any valid assignment reaches (ties respected).

        For storage this is every unit at its widest allowed choice: a larger budget changes nothing.
        """
        return self._extreme_usage(budget, largest=True)

    def _extreme_usage(self, budget: Budget, *, largest: bool) -> float:
        pick = np.max if largest else np.min
        if not self.ties and budget.kind in ("avg_bits", "bytes") and self.allowed.all():
            # straight from storage_bits: no items x choices temporary (10^8 group items)
            total_bits = float(pick(self.storage_bits, axis=1).sum(dtype=np.float64))
            return total_bits / (float(self.n_weights.sum()) if budget.kind == "avg_bits" else 8.0)
        matrix = np.where(self.allowed, budget.matrix(self), -np.inf if largest else np.inf)
        tied = np.zeros(self.n_items, bool)
        total = 0.0
        for group in self.ties:
            idx = list(group)
            tied[idx] = True
            total += float(pick(matrix[idx].sum(axis=0)))
        total += float(pick(matrix[~tied], axis=1).sum(dtype=np.float64))
        return total

    def uniform_choice(self, bits: int) -> np.ndarray:
        """Every item at ``bits`` where allowed; pinned items keep their only choice."""
        if bits not in self.bits:
            raise BitsOutOfRangeError(f"uniform bits must be one of the table's choices {list(self.bits)}, but got {bits}.")
        col = self.bits.index(bits)
        choice = np.where(self.allowed[:, col], col, self.allowed.argmax(axis=1)).astype(np.int64)
        for group in self.ties:  # a tie takes the shared choice nearest to `bits`
            common = np.flatnonzero(self.allowed[list(group)].all(axis=0))
            choice[list(group)] = common[np.argmin(np.abs(common - col))]
        return choice

    def plan(self, choice: np.ndarray, **meta: Any) -> BitPlan:
        """The :class:`BitPlan` of an assignment."""
        from mpsearch.core.config import QuantizerConfig
        from mpsearch.core.plan import BitPlan

        choice = self.check_choice(choice)
        if isinstance(self.items, GroupIndex):
            widths = np.asarray(self.bits, np.int64)[choice]
            bits: dict[str, Any] = {}
            for unit in self.items.units:
                per_group = widths[self.items.unit_slice(unit)]
                bits[unit] = int(per_group[0]) if (per_group == per_group[0]).all() else per_group.tolist()
        else:
            bits = {name: self.bits[int(c)] for name, c in zip(self.items, choice)}
        # timings differ run to run; a plan must not (same inputs -> same bytes)
        merged = {k: v for k, v in self.meta.items() if k != "float_units" and not k.endswith("_seconds")}
        merged.update(meta)
        # quantizable modules the search space left out stay in floating point
        bits.update({name: 16 for name in self.meta.get("float_units", ())})
        pins = {**self.pins(), **{name: 16 for name in self.meta.get("float_units", ())}}
        return BitPlan(bits=bits, quantizer=QuantizerConfig.from_dict(dict(self.quantizer)), meta=merged, pins=pins)

    def pins(self) -> dict[str, int]:
        """The units fixed to one width (one allowed choice), by unit name: what a plan must keep."""
        single = self.allowed.sum(axis=1) == 1
        width = np.asarray(self.bits, np.int64)[self.allowed.argmax(axis=1)]
        if not isinstance(self.items, GroupIndex):
            return {name: int(width[i]) for i, name in enumerate(self.items) if single[i]}
        out = {}
        for unit in self.items.units:
            part = self.items.unit_slice(unit)
            if single[part].all() and (width[part] == width[part][0]).all():
                out[unit] = int(width[part][0])
        return out

    def choice_of(self, plan: BitPlan) -> np.ndarray:
        """The assignment of a plan over this table's items."""
        from mpsearch.core.errors import PlanMismatchError

        column = {b: j for j, b in enumerate(self.bits)}
        if isinstance(self.items, GroupIndex):
            missing = [u for u in self.items.units if u not in plan.bits]
            if missing:
                raise PlanMismatchError(f"the plan must name every unit of the cost table, but misses {missing}.")
            parts = []
            for unit, count in zip(self.items.units, self.items.counts):
                value = plan.bits[unit]
                widths = np.full(count, value) if isinstance(value, int) else np.asarray(value)
                if widths.shape != (count,):
                    raise PlanMismatchError(f"the plan must give {unit!r} {count} group widths, but gives {widths.shape[0]}.")
                parts.append(np.array([column.get(int(b), -1) for b in widths]))
            return self.check_choice(np.concatenate(parts).astype(np.int64))
        missing = [n for n in self.items if n not in plan.bits]
        if missing:
            raise PlanMismatchError(f"the plan must name every item of the cost table, but misses {missing}.")
        return self.check_choice(np.array([column.get(plan.bits[n], -1) if isinstance(plan.bits[n], int) else -1 for n in self.items]))

    # ---- persistence -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def rows(arr: np.ndarray) -> list[list[float | None]]:
            return [[float(v) if ok else None for v, ok in zip(r, a)] for r, a in zip(arr, self.allowed)]

        items = (
            {"units": list(self.items.units), "counts": list(self.items.counts)}
            if isinstance(self.items, GroupIndex) else list(self.items)
        )
        return {
            "format": FORMAT,
            "version": VERSION,
            "items": items,
            "bits": list(self.bits),
            "cost": rows(self.cost),
            "storage_bits": rows(self.storage_bits),
            "n_weights": [int(v) for v in self.n_weights],
            "ties": [list(t) for t in self.ties],
            "resources": {k: rows(v) for k, v in sorted(self.resources.items())},
            "quantizer": dict(self.quantizer),
            "meta": dict(self.meta),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), sort_keys=True, indent=1, allow_nan=False) + "\n")

    @classmethod
    def from_dict(cls, doc: Any) -> CostTable:
        if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
            raise CostTableError(f"a cost table document must have format={FORMAT!r}. Write it with CostTable.save.")
        if doc.get("version") != VERSION:
            raise CostTableError(f"cost table version must be {VERSION}, but got {doc.get('version')!r}. Recompute it.")
        try:
            allowed = np.array([[v is not None for v in r] for r in doc["cost"]], bool)

            def arr(rows: list) -> np.ndarray:
                return np.array([[0.0 if v is None else float(v) for v in r] for r in rows], np.float64)

            raw_items = doc["items"]
            items = (
                GroupIndex(raw_items["units"], raw_items["counts"]) if isinstance(raw_items, Mapping) else tuple(raw_items)
            )
            return cls(
                items=items, bits=tuple(doc["bits"]), cost=arr(doc["cost"]),
                storage_bits=arr(doc["storage_bits"]), n_weights=np.array(doc["n_weights"], np.int64),
                allowed=allowed, ties=tuple(tuple(t) for t in doc.get("ties", [])),
                resources={k: arr(v) for k, v in doc.get("resources", {}).items()},
                quantizer=doc.get("quantizer", {}), meta=doc.get("meta", {}),
            )
        except MPSearchError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as err:
            raise CostTableError(f"a cost table document is malformed: {err!r}. Recompute it.") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CostTable:
        try:
            doc = json.loads(Path(path).read_bytes())
        except UnicodeDecodeError:
            raise CostTableError(f"a cost table file must be UTF-8 JSON, but {str(path)!r} is binary. Recompute it.") from None
        except OSError as err:
            raise CostTableError(f"a cost table file must be readable, but {str(path)!r} is not: {err.strerror}.") from None
        except json.JSONDecodeError as err:
            raise CostTableError(f"a cost table file must be valid JSON, but {str(path)!r} is not: {err}.") from None
        return cls.from_dict(doc)
