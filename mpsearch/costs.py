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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ._io import atomic_write_text
from .errors import BitsOutOfRangeError, CostTableError

if TYPE_CHECKING:
    from .budget import Budget
    from .plan import BitPlan
    from .space import SearchSpace

FORMAT = "mpsearch.costtable"
VERSION = 1


def _merge_ties(ties: Sequence[Sequence[int]], n_items: int) -> tuple[tuple[int, ...], ...]:
    """Merge overlapping ties into disjoint groups (union-find)."""
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

    items: tuple[str, ...]
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
        if len(set(self.items)) != n:
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
        cost = np.array(self.cost, dtype=np.float64)
        if not allowed.any(axis=1).all():
            bad = [self.items[i] for i in np.flatnonzero(~allowed.any(axis=1))[:5]]
            raise CostTableError(f"every item needs at least one allowed bit choice, but {bad} have none.")
        checked = {"cost": cost, "storage_bits": np.asarray(self.storage_bits, np.float64)}
        checked.update({f"resources[{k!r}]": np.asarray(v, np.float64) for k, v in self.resources.items()})
        for label, arr in checked.items():
            vals = arr[allowed]
            if not np.all(np.isfinite(vals)) or np.any(vals < 0):
                i, j = np.argwhere(allowed & ~(np.isfinite(arr) & (arr >= 0)))[0]
                raise CostTableError(
                    f"`{label}` must be finite and non-negative where a choice is allowed, but "
                    f"item {self.items[i]!r} at {self.bits[j]} bits has {float(arr[i, j])!r}. "
                    "Check the sensitivity estimate (NaN or negative scores)."
                )
        cost[~allowed] = np.inf
        n_weights = np.asarray(self.n_weights, np.int64)
        if n_weights.shape != (n,) or np.any(n_weights <= 0):
            raise CostTableError(f"`n_weights` must be {n} positive integers, but got shape {n_weights.shape}.")
        object.__setattr__(self, "cost", cost)
        object.__setattr__(self, "storage_bits", checked["storage_bits"])
        object.__setattr__(self, "allowed", allowed)
        object.__setattr__(self, "n_weights", n_weights)
        object.__setattr__(self, "resources", {k: np.asarray(v, np.float64) for k, v in self.resources.items()})
        object.__setattr__(self, "ties", _merge_ties(self.ties, n))
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

    def with_resources(self, **resources: np.ndarray) -> "CostTable":
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
        return float(self.cost[np.arange(self.n_items), choice].sum())

    def usage(self, choice: np.ndarray, budget: "Budget") -> float:
        return float(budget.matrix(self)[np.arange(self.n_items), choice].sum())

    def average_bits(self, choice: np.ndarray) -> float:
        """Average stored bits per weight, scales and zero-points included."""
        return float(self.storage_bits[np.arange(self.n_items), choice].sum() / self.n_weights.sum())

    def storage_bytes(self, choice: np.ndarray) -> float:
        return float(self.storage_bits[np.arange(self.n_items), choice].sum() / 8.0)

    def min_usage(self, budget: "Budget") -> float:
        """The smallest value of the budget's resource any valid assignment reaches (ties respected)."""
        matrix = np.where(self.allowed, budget.matrix(self), np.inf)
        tied = np.zeros(self.n_items, bool)
        total = 0.0
        for group in self.ties:
            idx = list(group)
            tied[idx] = True
            total += float(matrix[idx].sum(axis=0).min())
        total += float(matrix[~tied].min(axis=1).sum())
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

    def plan(self, choice: np.ndarray, **meta: Any) -> "BitPlan":
        """The :class:`BitPlan` of an assignment."""
        from .kernels.config import QuantizerConfig
        from .plan import BitPlan

        choice = self.check_choice(choice)
        bits = {name: self.bits[int(c)] for name, c in zip(self.items, choice)}
        merged = {k: v for k, v in self.meta.items() if k != "float_units"}
        merged.update(meta)
        # quantizable modules the search space left out stay in floating point
        bits.update({name: 16 for name in self.meta.get("float_units", ())})
        return BitPlan(bits=bits, quantizer=QuantizerConfig.from_dict(dict(self.quantizer)), meta=merged)

    def choice_of(self, plan: "BitPlan") -> np.ndarray:
        """The assignment of a plan over this table's items."""
        missing = [n for n in self.items if n not in plan.bits]
        if missing:
            from .errors import PlanMismatchError

            raise PlanMismatchError(f"the plan must name every item of the cost table, but misses {missing}.")
        return self.check_choice(np.array([self.bits.index(plan.bits[n]) if plan.bits[n] in self.bits else -1 for n in self.items]))

    # ---- persistence -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def rows(arr: np.ndarray) -> list[list[float | None]]:
            return [[float(v) if ok else None for v, ok in zip(r, a)] for r, a in zip(arr, self.allowed)]

        return {
            "format": FORMAT,
            "version": VERSION,
            "items": list(self.items),
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
    def from_dict(cls, doc: Any) -> "CostTable":
        if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
            raise CostTableError(f"a cost table document must have format={FORMAT!r}. Write it with CostTable.save.")
        if doc.get("version") != VERSION:
            raise CostTableError(f"cost table version must be {VERSION}, but got {doc.get('version')!r}. Recompute it.")
        try:
            allowed = np.array([[v is not None for v in r] for r in doc["cost"]], bool)

            def arr(rows: list) -> np.ndarray:
                return np.array([[0.0 if v is None else float(v) for v in r] for r in rows], np.float64)

            return cls(
                items=tuple(doc["items"]), bits=tuple(doc["bits"]), cost=arr(doc["cost"]),
                storage_bits=arr(doc["storage_bits"]), n_weights=np.array(doc["n_weights"], np.int64),
                allowed=allowed, ties=tuple(tuple(t) for t in doc.get("ties", [])),
                resources={k: arr(v) for k, v in doc.get("resources", {}).items()},
                quantizer=doc.get("quantizer", {}), meta=doc.get("meta", {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, CostTableError):
                raise
            raise CostTableError(f"a cost table document is malformed: {err!r}. Recompute it.") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "CostTable":
        try:
            doc = json.loads(Path(path).read_bytes())
        except UnicodeDecodeError:
            raise CostTableError(f"a cost table file must be UTF-8 JSON, but {str(path)!r} is binary. Recompute it.") from None
        except OSError as err:
            raise CostTableError(f"a cost table file must be readable, but {str(path)!r} is not: {err.strerror}.") from None
        except json.JSONDecodeError as err:
            raise CostTableError(f"a cost table file must be valid JSON, but {str(path)!r} is not: {err}.") from None
        return cls.from_dict(doc)


def cost_table_from_space(
    space: "SearchSpace",
    unit_costs: Mapping[str, Mapping[int, float]],
    *,
    meta: Mapping[str, Any] | None = None,
) -> CostTable:
    """Build a layer-granularity :class:`CostTable` from per-unit, per-bits costs.

    Storage counts the codes and the scale/zero-point overhead of the space's quantizer.
    """
    from .kernels.quantize import overhead_bits

    bits = tuple(sorted({b for u in space.units for b in u.bits}))
    index = {name: i for i, name in enumerate(space.names)}
    n, c = len(space.units), len(bits)
    cost = np.zeros((n, c))
    storage = np.zeros((n, c))
    allowed = np.zeros((n, c), bool)
    for i, unit in enumerate(space.units):
        per_bits = unit_costs.get(unit.name)
        if per_bits is None:
            raise CostTableError(f"costs must cover every unit, but {unit.name!r} has none.")
        for j, b in enumerate(bits):
            if b in unit.bits:
                allowed[i, j] = True
                cost[i, j] = float(per_bits[b])
                storage[i, j] = unit.n_weights * b + overhead_bits(unit.out_features, unit.fan_in, b, space.quantizer)
    ties = tuple(tuple(index[n] for n in tie) for tie in space.ties)
    return CostTable(
        items=space.names, bits=bits, cost=cost, storage_bits=storage,
        n_weights=np.array([u.n_weights for u in space.units]), allowed=allowed, ties=ties,
        quantizer=space.quantizer.to_dict(), meta={**dict(meta or {}), "float_units": list(space.float_units)},
    )
