"""Search spaces: which modules get bits, which bits they may get, and how they are bound.

A :class:`QuantUnit` is one quantizable module (``nn.Conv2d``, ``nn.Linear`` or
transformers' ``Conv1D``) named by its fully qualified module name. A
:class:`SearchSpace` is the ordered set of units with their bit choices, the
pins (units fixed to one width, such as the first convolution and the
classifier at 8 bits), the ties (units that must share a width) and the
quantizer used to measure and apply every plan.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from torch import nn

from .errors import BitsOutOfRangeError, SearchSpaceError
from .kernels.fake import quantizable_kind
from .kernels.config import RECOMMENDED, QuantizerConfig, Scheme

DEFAULT_BITS: tuple[int, ...] = (2, 3, 4, 8)
FLOAT_BITS = 16  # "left in floating point" in a plan


def check_bits(bits: Iterable[int], *, what: str = "bits", scheme: Scheme | None = None) -> tuple[int, ...]:
    """Validate a collection of bit widths and return it sorted and deduplicated."""
    values = tuple(int(b) if isinstance(b, np.integer) else b for b in bits)
    bad = [b for b in values if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8]
    if not values or bad:
        raise BitsOutOfRangeError(
            f"`{what}` must be integers within 1..8, but got {what}={values!r}. "
            "Pass bit choices such as (2, 3, 4, 8)."
        )
    if scheme == Scheme.SYMMETRIC and 1 in values:
        raise BitsOutOfRangeError(
            f"symmetric quantization needs at least 2 bits, but got {what}={values!r}. "
            "Drop 1 from the choices or use scheme='affine'."
        )
    return tuple(sorted(set(values)))


@dataclass(frozen=True, kw_only=True)
class QuantUnit:
    """One quantizable module and the bit widths it may take."""

    name: str
    kind: str  # "conv2d" | "linear" | "conv1d"
    weight_shape: tuple[int, ...]
    out_features: int
    fan_in: int
    bits: tuple[int, ...]

    @property
    def n_weights(self) -> int:
        return self.out_features * self.fan_in

    @property
    def pinned(self) -> bool:
        return len(self.bits) == 1


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """The units of a model, their bit choices, ties and the quantizer.

    Build it with :func:`discover` rather than by hand.
    """

    units: tuple[QuantUnit, ...]
    ties: tuple[tuple[str, ...], ...] = ()
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    float_units: tuple[str, ...] = ()  # quantizable modules left out by include/exclude: kept in float

    def __post_init__(self) -> None:
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            raise SearchSpaceError(f"unit names must be unique, but got duplicates in {names}.")
        known = set(names)
        for tie in self.ties:
            missing = [n for n in tie if n not in known]
            if missing:
                raise SearchSpaceError(
                    f"ties must name units of the space, but {missing} are not units. "
                    f"Known units: {names}."
                )
            common = set.intersection(*(set(self.unit(n).bits) for n in tie))
            if not common:
                raise SearchSpaceError(
                    f"tied units must share at least one bit choice, but {list(tie)} have none "
                    "in common. Widen their choices or drop the tie."
                )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(u.name for u in self.units)

    @property
    def n_weights(self) -> int:
        return sum(u.n_weights for u in self.units)

    def unit(self, name: str) -> QuantUnit:
        for u in self.units:
            if u.name == name:
                return u
        raise SearchSpaceError(f"`name` must be a unit of the space, but got {name!r}. Known units: {list(self.names)}.")

    def __len__(self) -> int:
        return len(self.units)


def _match(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def discover(
    model: nn.Module,
    *,
    bits: Sequence[int] = DEFAULT_BITS,
    pins: Mapping[str, int] | None = None,
    pin_first_last: int | None = 8,
    ties: Sequence[Sequence[str]] = (),
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    quantizer: QuantizerConfig | None = None,
) -> SearchSpace:
    """Find the quantizable units of ``model`` and build a :class:`SearchSpace`.

    ``pins`` and ``ties`` accept exact names or shell-style patterns
    (``"layer1.*.conv1"``); they are resolved to exact names here. By default the
    first and the last unit (in module order) are pinned to 8 bits, as HAWQ and
    ZeroQ do; pass ``pin_first_last=None`` to search them too. The quantizer
    defaults to per-channel affine with MSE-optimal clipping (``RECOMMENDED``).

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 2))
    >>> space = discover(net)
    >>> [(u.name, u.bits) for u in space.units]
    [('0', (8,)), ('2', (8,))]
    """
    quantizer = quantizer or RECOMMENDED
    choices = check_bits(bits, scheme=quantizer.scheme)
    found: list[tuple[str, str, nn.Module]] = []
    skipped: list[str] = []
    for name, module in model.named_modules():
        kind = quantizable_kind(module)
        if kind is None or not name:
            continue
        if (include is not None and not _match(name, include)) or _match(name, exclude):
            skipped.append(name)
            continue
        found.append((name, kind, module))
    if not found:
        raise SearchSpaceError(
            "a search space needs at least one quantizable unit (Conv2d, Linear or Conv1D), "
            f"but none matched in {type(model).__name__} (include={include!r}, exclude={list(exclude)!r}). "
            "Check the patterns."
        )
    pinned: dict[str, int] = {}
    if pin_first_last is not None:
        check_bits([pin_first_last], what="pin_first_last", scheme=quantizer.scheme)
        pinned[found[0][0]] = pin_first_last
        pinned[found[-1][0]] = pin_first_last
    for pattern, value in (pins or {}).items():
        check_bits([value], what=f"pins[{pattern!r}]", scheme=quantizer.scheme)
        hits = [n for n, _, _ in found if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise SearchSpaceError(
                f"every pin must match a unit, but {pattern!r} matches none. "
                f"Units: {[n for n, _, _ in found]}."
            )
        for hit in hits:
            pinned[hit] = value
    units = []
    for name, kind, module in found:
        weight = module.weight
        shape = tuple(int(s) for s in weight.shape)
        if kind == "conv1d":  # transformers' Conv1D stores (in, out)
            out_features, fan_in = shape[1], shape[0]
        else:
            out_features = shape[0]
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
        unit_bits = (pinned[name],) if name in pinned else choices
        units.append(
            QuantUnit(name=name, kind=kind, weight_shape=shape, out_features=out_features, fan_in=fan_in, bits=unit_bits)
        )
    all_names = [u.name for u in units]
    resolved_ties = []
    for tie in ties:
        members: list[str] = []
        for pattern in tie:
            hits = [n for n in all_names if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise SearchSpaceError(
                    f"every tie entry must match a unit, but {pattern!r} matches none. Units: {all_names}."
                )
            members.extend(h for h in hits if h not in members)
        if len(members) > 1:
            resolved_ties.append(tuple(members))
    return SearchSpace(units=tuple(units), ties=tuple(resolved_ties), quantizer=quantizer, float_units=tuple(skipped))
