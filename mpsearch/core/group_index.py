"""The items of a group-granularity cost table: units split into groups of G inputs per output row.

Kept apart from :mod:`mpsearch.core.costs` so that the table's JSON reader
(:mod:`mpsearch.core.costs_io`) can build one without importing the table class.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from mpsearch.core.errors import CostTableError

__all__ = ["GroupIndex"]


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
            raise CostTableError(
                f"a group index needs one count per unit, but got {len(self.units)} units and {len(self.counts)} "
                "counts. Give each unit its number of groups."
            )
        if len(set(self.units)) != len(self.units):
            repeated = sorted(u for u, k in Counter(self.units).items() if k > 1)
            raise CostTableError(f"group index units must be unique, but {repeated[:5]} repeat. Give each unit once.")
        empty = [(u, c) for u, c in zip(self.units, self.counts) if c <= 0]
        if empty:
            raise CostTableError(
                f"group index units need positive group counts, but {empty[0][0]!r} has {empty[0][1]}. "
                "Give each unit its number of groups (at least 1)."
            )
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
