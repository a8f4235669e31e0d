"""Search spaces: which modules get bits, which bits they may get, and how they are bound.

A :class:`QuantUnit` is one quantizable module (``nn.Conv2d``, ``nn.Linear`` or
transformers' ``Conv1D``; with ``embeddings=True`` also an ``nn.Embedding`` token table) named by
its fully qualified module name; a module object reachable under several names is one unit, its
other names recorded as ``aliases``; a weight Parameter read by several modules (``lm_head`` tied
to ``model.embed_tokens``) is one unit named by its layer, the other modules recorded as
``tied``, its weights counted once. A
:class:`SearchSpace` is the ordered set of units with their bit choices, the
pins (units fixed to one width, such as the first convolution and the
classifier at 8 bits), the ties (units that must share a width) and the
quantizer used to measure and apply every plan.

Modules that hold a weight matrix but are not such a layer (``nn.Embedding`` unless searched,
``nn.Conv1d``/``Conv3d``, transposed convolutions...), and layers whose parent reads their
weight itself (``nn.MultiheadAttention.out_proj``; see :mod:`mpsearch.space.units`) cannot be
quantized: they are recorded in :attr:`SearchSpace.float_modules` with the reason, stay in floating
point, and :func:`discover` says so once with a :class:`FloatModulesWarning`.
Norm layers (1-D scale vectors) and biases are not searched by design and are not listed.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from mpsearch.core.config import RECOMMENDED, QuantizerConfig, Scheme
from mpsearch.core.errors import BitsOutOfRangeError, FloatModulesWarning, SearchSpaceError
from mpsearch.space.fused import FUSED_SIBLINGS, fused_ties
from mpsearch.space.notices import float_modules_notice, float_notice_of
from mpsearch.space.units import FloatModule, check_plan_for_model, scan_model, unquantizable

DEFAULT_BITS: tuple[int, ...] = (2, 3, 4, 8)
FLOAT_BITS = 16  # "left in floating point" in a plan


def check_bits(bits: Iterable[int], *, what: str = "bits", scheme: Scheme | None = None,
               allow_float: bool = False) -> tuple[int, ...]:
    """Validate a collection of bit widths and return it sorted and deduplicated (``allow_float``:
    16, "keep this unit in floating point", is a width too)."""
    values = tuple(int(b) if isinstance(b, np.integer) else b for b in bits)
    bad = [b for b in values if isinstance(b, bool) or not isinstance(b, int)
           or not (1 <= b <= 8 or (allow_float and b == FLOAT_BITS))]
    if not values or bad:
        also = ", or 16 (kept in floating point)" if allow_float else ""
        raise BitsOutOfRangeError(
            f"`{what}` must be integers within 1..8{also}, but got {what}={values!r}. "
            "Pass bit choices such as (2, 3, 4, 8)."
        )
    if set(values) == {FLOAT_BITS}:
        raise BitsOutOfRangeError(
            f"`{what}` must include a width below 16 to quantize anything, but got {what}={values!r}. "
            "Pass e.g. (4, 8, 16), or leave the model unquantized."
        )
    if scheme == Scheme.SYMMETRIC and 1 in values:
        raise BitsOutOfRangeError(
            f"symmetric quantization needs at least 2 bits, but got {what}={values!r}. "
            "Drop 1 from the choices or use scheme='affine'."
        )
    return tuple(sorted(set(values)))


@dataclass(frozen=True, kw_only=True)
class QuantUnit:
    """One quantizable module and the bit widths it may take.

    ``aliases`` are the other names the same module object is reachable under
    (``self.alias = self.shared``): one unit, quantized once, replaced under every name.
    ``tied`` are the other modules that read the same weight Parameter (``model.embed_tokens``
    for a tied ``lm_head``): quantizing the unit quantizes them too. ``kind`` is the weight
    layout the quantizer sees; an embedding table (``role="embedding"``) has the Linear layout,
    one output channel per row.
    """

    name: str
    kind: str  # "conv2d" | "linear" | "conv1d"
    weight_shape: tuple[int, ...]
    out_features: int
    fan_in: int
    bits: tuple[int, ...]
    aliases: tuple[str, ...] = ()
    tied: tuple[str, ...] = ()
    role: str = "layer"  # "layer" | "embedding"

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
    float_modules: tuple[FloatModule, ...] = ()  # modules with weights that cannot be quantized: kept in float
    model_name: str = "the model"

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

    def tie_notice(self) -> str | None:
        """The sentence naming the modules quantized with a unit because they read its weight, or None."""
        tied = [u for u in self.units if u.tied]
        if not tied:
            return None
        shown = "; ".join(f"the weight of {u.name!r} ({u.n_weights:,} weights) is also read by "
                          f"{', '.join(map(repr, u.tied))}" for u in tied)
        return (f"{len(tied)} unit(s) of {self.model_name} share their weight with other modules (tied): {shown}. "
                "Quantizing such a unit quantizes every module that reads its weight, whether or not embeddings "
                "are searched; its weights are counted once.")

    def float_notice(self) -> str | None:
        """The sentences naming the modules that stay in floating point and the tied ones
        quantized with a unit, or None when there are neither."""
        parts = [float_modules_notice(self.model_name, self.float_modules, self.n_weights) if self.float_modules else None,
                 self.tie_notice()]
        return " ".join(p for p in parts if p) or None

    def describe(self) -> str:
        """What will be searched and what stays in floating point, in a few lines: ``print(space.describe())``."""
        pinned = sum(u.pinned for u in self.units)
        lines = [f"{len(self.units)} units, {self.n_weights:,} weights searched ({pinned} pinned)"]
        if self.float_units:
            lines.append(f"{len(self.float_units)} quantizable unit(s) left out by include/exclude stay in "
                         f"floating point: {', '.join(map(repr, self.float_units[:5]))}"
                         + (" ..." if len(self.float_units) > 5 else ""))
        if self.float_modules:
            lines.append(float_modules_notice(self.model_name, self.float_modules, self.n_weights))
        notice = self.tie_notice()
        if notice:
            lines.append(notice)
        return "\n".join(lines)


def _match(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def discover_quietly(model: nn.Module, **options) -> SearchSpace:
    """:func:`discover` without the :class:`FloatModulesWarning`, for callers that print
    :meth:`SearchSpace.float_notice` themselves (the command line, the quickstart)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FloatModulesWarning)
        return discover(model, **options)


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
    embeddings: bool = False,
    tie_fused: bool = False,
) -> SearchSpace:
    """Find the quantizable units of ``model`` and build a :class:`SearchSpace`.

    ``pins`` and ``ties`` accept exact names or shell-style patterns
    (``"layer1.*.conv1"``); they are resolved to exact names here. ``include``,
    ``exclude`` and ``pins`` also match a unit's aliases and tied names (excluding
    ``model.embed_tokens`` leaves its tied ``lm_head`` in float too). By default the
    first and the last unit (in module order) are pinned to 8 bits, as HAWQ and
    ZeroQ do; pass ``pin_first_last=None`` to search them too. A width of 16 among ``bits`` lets
    the solver keep a unit in floating point (at 16 bits per weight, no scales). The quantizer
    defaults to per-channel affine with MSE-optimal clipping (``RECOMMENDED``).

    ``embeddings=True`` searches token embeddings (``nn.Embedding``) too, each row of a table
    one output channel. A weight shared by several modules is one unit either way (``lm_head``
    tied to the embedding: one unit named ``lm_head`` with ``tied=("model.embed_tokens",)``).
    ``tie_fused=True`` ties the sibling projections runtimes fuse into one matmul
    (:data:`FUSED_SIBLINGS`: q/k/v and gate/up of one block), so they share a width.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 2))
    >>> space = discover(net)
    >>> [(u.name, u.bits) for u in space.units]
    [('0', (8,)), ('2', (8,))]
    """
    quantizer = quantizer or RECOMMENDED
    choices = check_bits(bits, scheme=quantizer.scheme, allow_float=True)
    candidates, floats = scan_model(model, embeddings=embeddings)
    found = []
    skipped: list[str] = []
    for unit in candidates:
        every = (unit.name, *unit.aliases, *unit.tied)
        if (include is not None and not any(_match(n, include) for n in every)) or any(_match(n, exclude) for n in every):
            skipped.append(unit.name)
            continue
        found.append(unit)
    if not found:
        raise SearchSpaceError(
            "a search space needs at least one quantizable unit (Conv2d, Linear or Conv1D), "
            f"but none matched in {type(model).__name__} (include={include!r}, exclude={list(exclude)!r}). "
            "Check the patterns."
        )
    pinned: dict[str, int] = {}
    if pin_first_last is not None:
        check_bits([pin_first_last], what="pin_first_last", scheme=quantizer.scheme)
        pinned[found[0].name] = pin_first_last
        pinned[found[-1].name] = pin_first_last
    for pattern, value in (pins or {}).items():
        check_bits([value], what=f"pins[{pattern!r}]", scheme=quantizer.scheme)
        hits = [u.name for u in found if any(fnmatch.fnmatchcase(n, pattern) for n in (u.name, *u.aliases, *u.tied))]
        if not hits:
            raise SearchSpaceError(
                f"every pin must match a unit, but {pattern!r} matches none. "
                f"Units: {[u.name for u in found]}."
            )
        for hit in hits:
            pinned[hit] = value
    units = []
    for found_unit in found:
        name, kind, weight = found_unit.name, found_unit.kind, found_unit.module.weight
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
            QuantUnit(name=name, kind=kind, weight_shape=shape, out_features=out_features, fan_in=fan_in, bits=unit_bits,
                      aliases=found_unit.aliases, tied=found_unit.tied, role=found_unit.role)
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
    if tie_fused:
        resolved_ties.extend(fused_ties(all_names))
    space = SearchSpace(units=tuple(units), ties=tuple(resolved_ties), quantizer=quantizer, float_units=tuple(skipped),
                        float_modules=tuple(floats), model_name=type(model).__name__)
    if floats or (space.tie_notice() and not embeddings):  # once per call site (Python's default filter)
        warnings.warn(space.float_notice(), FloatModulesWarning, stacklevel=2)
    return space



def unit_modules(model: nn.Module, space: SearchSpace) -> list[nn.Module]:
    modules = dict(model.named_modules())
    missing = [n for n in space.names if n not in modules]
    if missing:
        raise SearchSpaceError(f"the search space must come from this model, but it has no modules {missing}. Re-run discover(model).")
    return [modules[n] for n in space.names]


__all__ = ["DEFAULT_BITS", "FUSED_SIBLINGS", "FloatModule", "QuantUnit", "SearchSpace", "check_bits", "check_plan_for_model",
           "discover", "discover_quietly", "float_notice_of", "fused_ties", "unit_modules", "unquantizable"]
