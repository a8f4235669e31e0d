"""Layer geometry as plain arrays: what every hardware model reads.

A :class:`LayerShapes` holds, per quantizable unit, the weight matrix shape (out, K) and what
one sample of input makes it compute: MACs and GEMM rows (``out_h * out_w`` for a convolution
seen as an im2col GEMM, tokens for a linear layer). It is filled from a traced forward pass by
:func:`mpsearch.pricing.profile.trace_layers` (torch side) or by hand; this module never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mpsearch.core.errors import CostTableError, DataError

if TYPE_CHECKING:
    from mpsearch.core.costs import CostTable


@dataclass(frozen=True, kw_only=True, eq=False)
class LayerShapes:
    """Per-unit geometry and per-sample work.

    >>> s = LayerShapes(names=("fc",), out_features=[10], fan_in=[64], macs=[640], rows=[1])
    >>> s.index("fc"), int(s.n_weights[0])
    (0, 640)
    """

    names: tuple[str, ...]
    out_features: np.ndarray
    fan_in: np.ndarray
    macs: np.ndarray  # multiply-accumulates per sample
    rows: np.ndarray  # GEMM rows (activation vectors) per sample
    kinds: tuple[str, ...] | None = None  # "conv2d" | "linear" | "conv1d" per unit (None: all "linear")
    meta: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        names = tuple(self.names)
        n = len(names)
        if n == 0 or len(set(names)) != n:
            raise DataError(f"layer shapes need unique unit names, but got {n} names with duplicates or none. "
                            "Trace the model with mpsearch.pricing.profile.trace_layers.")
        arrays = {}
        for key in ("out_features", "fan_in", "macs", "rows"):
            arr = np.asarray(getattr(self, key), np.float64 if key == "macs" else np.int64)
            floor = 1 if key in ("out_features", "fan_in") else 0
            if arr.shape != (n,) or np.any(arr < floor):
                raise DataError(f"`{key}` must hold {n} non-negative values (positive sizes), but got "
                                f"shape {arr.shape}. Pass one value per unit.")
            arrays[key] = arr
        kinds = ("linear",) * n if self.kinds is None else tuple(self.kinds)
        if len(kinds) != n:
            raise DataError(f"`kinds` must give one kind per unit ({n}), but has {len(kinds)}.")
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "names", names)
        for key, arr in arrays.items():
            object.__setattr__(self, key, arr)

    @property
    def is_conv(self) -> np.ndarray:
        return np.array([k == "conv2d" for k in self.kinds or ()], bool)

    @property
    def n_weights(self) -> np.ndarray:
        return self.out_features * self.fan_in

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise DataError(f"`name` must be a traced unit, but got {name!r}. Known: {list(self.names)[:8]}...") from None

    def subset(self, names: Sequence[str]) -> LayerShapes:
        """The shapes of ``names``, in that order."""
        idx = [self.index(n) for n in names]
        return LayerShapes(names=tuple(names), out_features=self.out_features[idx], fan_in=self.fan_in[idx],
                           macs=self.macs[idx], rows=self.rows[idx], kinds=tuple(self.kinds[i] for i in idx),
                           meta=self.meta)

    def for_costs(self, costs: CostTable) -> LayerShapes:
        """The shapes in the order of a layer-granularity cost table's items."""
        if not isinstance(costs.items, tuple):
            raise CostTableError("hardware resource columns need a layer-granularity cost table (one item per unit), "
                                 "but got a group-wise table. Rebuild it with cost_table_from_space.")
        missing = [n for n in costs.items if n not in self.names]
        if missing:
            raise CostTableError(f"every cost-table item must be a traced unit, but {missing[:5]} are not. "
                                 "Trace the same model the costs were computed for.")
        shapes = self.subset(costs.items)
        if not np.array_equal(shapes.n_weights, costs.n_weights):
            raise CostTableError("the traced units must have the cost table's weight counts, but they differ. "
                                 "Trace the same model the costs were computed for.")
        return shapes

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "out_features": self.out_features.tolist(),
                "fan_in": self.fan_in.tolist(), "macs": self.macs.tolist(), "rows": self.rows.tolist(),
                "kinds": list(self.kinds or ()), "meta": dict(self.meta or {})}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> LayerShapes:
        return cls(names=tuple(doc["names"]), out_features=doc["out_features"], fan_in=doc["fan_in"],
                   macs=doc["macs"], rows=doc["rows"], kinds=doc.get("kinds"), meta=doc.get("meta"))


def plan_bits_array(shapes: LayerShapes, bits: Mapping[str, Any], default: int = 16) -> np.ndarray:
    """One width per unit of ``shapes`` from a plan's ``bits`` (units absent stay float, 16)."""
    out = np.full(len(shapes.names), default, np.int64)
    for name, value in bits.items():
        if isinstance(value, (tuple, list)):
            raise DataError(f"hardware models take one width per unit, but {name!r} has per-group widths. "
                            "Use a layer-granularity plan.")
        out[shapes.index(name)] = int(value)
    return out
