"""Budgets: limits on a resource that a plan must respect.

A budget is a resource kind and a limit. ``avg_bits`` is the average number of
stored bits per quantized weight, counting the scales and zero-points, so a
uniform 4-bit plan with fp16 per-channel scales costs slightly more than 4.0.
``bytes`` is the storage of the quantized units (codes, scales, zero-points).
Any other kind names a resource column of the :class:`~mpsearch.core.costs.CostTable`
(``bops``, ``latency_ms``... added by the hardware models).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mpsearch.core.errors import BudgetError

if TYPE_CHECKING:
    from mpsearch.core.costs import CostTable

BUILTIN_KINDS = ("avg_bits", "bytes")


@dataclass(frozen=True, kw_only=True)
class Budget:
    """A limit on one resource.

    >>> Budget(kind="avg_bits", value=3.0)
    Budget(kind='avg_bits', value=3.0)
    >>> Budget.parse("2.5MiB")
    Budget(kind='bytes', value=2621440.0)
    """

    kind: str = "avg_bits"
    value: float

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise BudgetError(f"`kind` must be a resource name such as 'avg_bits', but got kind={self.kind!r}.")
        try:
            if isinstance(self.value, (bool, np.bool_)):
                raise TypeError("bool")
            value = float(self.value)
        except (TypeError, ValueError):
            raise BudgetError(
                f"a budget value must be a positive finite number, but got value={self.value!r}. "
                "Pass for example Budget(kind='avg_bits', value=3.0)."
            ) from None
        if not math.isfinite(value) or value <= 0:
            raise BudgetError(
                f"a budget value must be a positive finite number, but got value={self.value!r}. "
                "Pass for example Budget(kind='avg_bits', value=3.0)."
            )
        object.__setattr__(self, "value", value)

    @classmethod
    def avg_bits(cls, value: float) -> Budget:
        return cls(kind="avg_bits", value=value)

    @classmethod
    def bytes(cls, value: float) -> Budget:
        return cls(kind="bytes", value=value)

    @classmethod
    def parse(cls, text: str) -> Budget:
        """Parse CLI text: ``3`` or ``3bits`` (average bits), ``120000B``, ``1.5MiB``, ``200KiB``,
        or ``KIND=VALUE`` for any resource (``bops=1e9``)."""
        raw = str(text).strip()
        units = {"gib": 2**30, "mib": 2**20, "kib": 2**10, "gb": 1e9, "mb": 1e6, "kb": 1e3, "b": 1}
        lowered = raw.lower()
        try:
            if "=" in raw:
                kind, value = raw.split("=", 1)
                return cls(kind=kind.strip(), value=float(value))
            if lowered.endswith("bits"):
                return cls(kind="avg_bits", value=float(lowered[:-4]))
            for suffix, scale in units.items():
                if lowered.endswith(suffix):
                    return cls(kind="bytes", value=float(lowered[: -len(suffix)]) * scale)
            return cls(kind="avg_bits", value=float(raw))
        except BudgetError:
            raise
        except ValueError:
            raise BudgetError(
                f"a budget must read like '3', '3bits', '1.5MiB', '120000B' or 'bops=1e9', but got {text!r}. "
                "Pass a number of bits per weight such as 3, a size such as 1.5MiB, or KIND=VALUE such as bops=1e9."
            ) from None

    def matrix(self, costs: CostTable) -> np.ndarray:
        """The resource this budget limits, per item and bit choice (items x choices)."""
        if self.kind == "avg_bits":
            return costs.storage_bits / float(costs.n_weights.sum())
        if self.kind == "bytes":
            return costs.storage_bits / 8.0
        if self.kind in costs.resources:
            return costs.resources[self.kind]
        raise BudgetError(
            f"a budget kind must be one of {list(BUILTIN_KINDS) + sorted(costs.resources)}, but got "
            f"kind={self.kind!r}. Add that resource to the cost table (hardware_models) or pick another kind."
        )

    def describe(self) -> str:
        if self.kind == "avg_bits":
            return f"{self.value:g} bits/weight"
        if self.kind == "bytes":
            return f"{self.value / 2**20:.4g} MiB"
        return f"{self.kind} <= {self.value:g}"


def as_budgets(budget: Budget | Iterable[Budget] | float) -> tuple[Budget, ...]:
    """Normalize one budget, a float (average bits) or several budgets to a tuple."""
    if isinstance(budget, Budget):
        return (budget,)
    if isinstance(budget, numbers.Real) and not isinstance(budget, (bool, np.bool_)):
        return (Budget.avg_bits(float(budget)),)
    if isinstance(budget, str):
        return (Budget.parse(budget),)
    try:
        items: Sequence = tuple(budget)  # type: ignore[arg-type]
    except TypeError:
        raise BudgetError(f"a budget must be a Budget, a number of bits or a list of Budgets, but got {budget!r}.") from None
    if not items or not all(isinstance(b, Budget) for b in items):
        raise BudgetError(f"a budget list must hold at least one Budget and only Budgets, but got {budget!r}.")
    return tuple(items)
