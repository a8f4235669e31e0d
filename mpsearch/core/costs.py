"""Cost tables: what each item costs at each bit width, and what it uses.

A :class:`CostTable` is the whole problem a solver sees, as plain arrays (no
torch): ``cost[i, c]`` is the predicted loss increase of item ``i`` at
``bits[c]``, ``storage_bits[i, c]`` the bits it occupies there (codes plus
scales and zero-points), ``allowed[i, c]`` whether that width is a choice for
that item (pins allow one), ``ties`` the groups of items that must share a
width, and ``resources`` any further per-(item, bits) resource such as BOPs or
latency from a hardware model.

The checks a table must pass live in :mod:`mpsearch.core.costs_checks`, its JSON
document in :mod:`mpsearch.core.costs_io` and :class:`GroupIndex` in
:mod:`mpsearch.core.group_index`; ``CostTable``, ``GroupIndex``, ``FORMAT`` and
``VERSION`` are all importable from here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mpsearch.core.costs_checks import checked_fields
from mpsearch.core.costs_io import FORMAT, VERSION, read_table_document, table_document, table_fields
from mpsearch.core.errors import BitsOutOfRangeError, CostTableError
from mpsearch.core.group_index import GroupIndex
from mpsearch.core.io import atomic_write_text

if TYPE_CHECKING:
    from mpsearch.core.budget import Budget
    from mpsearch.core.plan import BitPlan

__all__ = ["FORMAT", "VERSION", "CostTable", "GroupIndex"]


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
        fields = checked_fields(
            items=self.items, bits=self.bits, cost=self.cost, storage_bits=self.storage_bits, n_weights=self.n_weights,
            allowed=self.allowed, ties=self.ties, resources=self.resources, quantizer=self.quantizer, meta=self.meta,
        )
        for name, value in fields.items():
            object.__setattr__(self, name, value)

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
        """The versioned JSON document (see :mod:`mpsearch.core.costs_io`)."""
        return table_document(self)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table atomically (never half a file); the same table always gives the same bytes."""
        return atomic_write_text(path, json.dumps(self.to_dict(), sort_keys=True, indent=1, allow_nan=False) + "\n")

    @classmethod
    def from_dict(cls, doc: Any) -> CostTable:
        """The table a JSON document describes; a malformed one raises :class:`CostTableError` naming the entry."""
        return cls(**table_fields(doc))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CostTable:
        """Read a table written by :meth:`save`; an unreadable or malformed file raises :class:`CostTableError`."""
        return cls.from_dict(read_table_document(path))
