"""Plans written by hand: widths given to shell-style patterns of unit names.

:func:`plan_from_assignment` turns a partial assignment such as
``{"model.layers.*.mlp.*": 4, "lm_head": 8}`` into a complete :class:`~mpsearch.core.plan.BitPlan`
for the units of a search space, a cost table or a list of names: the baseline a search is
compared with, a recipe from a paper, or "everything 16-bit but the MLPs". Entries apply in
order, a later pattern overriding an earlier one on the units both match; units no pattern
matches get ``default`` (16 = kept in floating point), or their pin when the space pins them,
or the width their tie was given.
A pattern that matches no unit is an error, since it is almost always a typo.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.core.plan_checks import FLOAT_BITS, check_bits_value, widths


def _units(source: Any) -> list[tuple[str, tuple[str, ...], tuple[int, ...] | None]]:
    """(name, other names, allowed widths or None) of every unit of ``source``."""
    if hasattr(source, "units") and hasattr(source, "names") and not isinstance(source, (str, bytes)):
        return [(u.name, (*getattr(u, "aliases", ()), *getattr(u, "tied", ())), tuple(u.bits))
                for u in source.units]
    items = getattr(source, "items", None)
    if items is not None and hasattr(source, "bits") and not callable(items):  # a cost table
        names = getattr(items, "units", items)
        pins = source.pins()
        return [(str(n), (), (pins[n],) if n in pins else None) for n in names]
    if isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
        raise PlanMismatchError(f"units must be a search space, a cost table or unit names, but got "
                                f"{type(source).__name__}. Pass discover(model) or its .names.")
    return [(str(n), (), None) for n in source]


def _quantizer(source: Any, given: QuantizerConfig | None) -> QuantizerConfig:
    if given is not None:
        return given
    q = getattr(source, "quantizer", None)
    if isinstance(q, QuantizerConfig):
        return q
    if isinstance(q, Mapping) and q:
        return QuantizerConfig.from_dict(dict(q))
    return QuantizerConfig()


def plan_from_assignment(units: Any, assignment: Mapping[str, int | Sequence[int]], *,
                         default: int | None = FLOAT_BITS, quantizer: QuantizerConfig | None = None,
                         meta: Mapping[str, Any] | None = None) -> BitPlan:
    """A :class:`BitPlan` giving each unit the width of the last pattern of ``assignment`` it matches.

    ``units``: a :class:`~mpsearch.space.discover.SearchSpace` (patterns also match aliases and
    tied names; pins and ties are honoured, the quantizer is the space's), a
    :class:`~mpsearch.core.costs.CostTable` (its units, pins and quantizer) or unit names.
    ``default``: the width of units no pattern matches (None: every unit must be matched).
    Units the space left out of the search stay at 16 bits.

    >>> plan = plan_from_assignment(["l.0.attn", "l.0.mlp", "l.1.mlp", "head"], {"*.mlp": 4, "head": 8})
    >>> dict(plan.bits)
    {'head': 8, 'l.0.attn': 16, 'l.0.mlp': 4, 'l.1.mlp': 4}
    """
    found = _units(units)
    if not found:
        raise PlanMismatchError("a plan needs at least one unit, but `units` has none. Pass discover(model).")
    if not isinstance(assignment, Mapping):
        raise PlanMismatchError(f"`assignment` must map name patterns to widths, but got {type(assignment).__name__}. "
                                "Pass e.g. {'model.layers.*.mlp.*': 4}.")
    chosen: dict[str, int | tuple[int, ...]] = {}
    for pattern, value in assignment.items():
        width = check_bits_value(str(pattern), list(value) if isinstance(value, (list, tuple)) else value)
        hits = [name for name, others, _ in found
                if any(fnmatch.fnmatchcase(n, str(pattern)) for n in (name, *others))]
        if not hits:
            shown = ", ".join(repr(n) for n, _, _ in found[:8]) + (" ..." if len(found) > 8 else "")
            raise PlanMismatchError(f"every pattern must match a unit, but {pattern!r} matches none. "
                                    f"Units: {shown}. Fix the pattern (shell-style: * ? [seq]).")
        chosen.update(dict.fromkeys(hits, width))
    pins: dict[str, int] = {}
    for name, _, allowed in found:
        if allowed is not None and len(allowed) == 1:
            pins[name] = allowed[0]
            chosen.setdefault(name, allowed[0])
    names = [name for name, _, _ in found]
    by_index = isinstance(getattr(units, "items", None), Sequence) and not hasattr(units.items, "units")
    ties = [[t if isinstance(t, str) else names[int(t)] for t in tie] for tie in getattr(units, "ties", ()) or ()
            if all(isinstance(t, str) for t in tie) or by_index]  # a group-level table ties groups, not units
    for tie_names in ties:  # a tie member no pattern names follows the width its tie was given
        given = {chosen[n] for n in tie_names if n in chosen}
        if len(given) == 1:
            for n in tie_names:
                chosen.setdefault(n, next(iter(given)))
    unmatched = [name for name, _, _ in found if name not in chosen]
    if unmatched and default is None:
        raise PlanMismatchError(f"with default=None every unit needs a pattern, but {len(unmatched)} match none: "
                                f"{unmatched[:8]}. Add patterns or pass a default width such as 16.")
    fill = check_bits_value("default", default) if unmatched else FLOAT_BITS
    bits = {name: chosen.get(name, fill) for name, _, _ in found}
    bad = sorted(n for n, pin in pins.items() if widths(bits[n]) != {pin})
    if bad:
        raise PlanMismatchError(f"pinned units keep their pin, but the assignment moves {bad} "
                                f"(pins {[pins[n] for n in bad]}). Drop them from the assignment or re-discover "
                                "with other pins.")
    for tie_names in ties:
        if len({bits[n] for n in tie_names}) > 1:
            raise PlanMismatchError(f"tied units must share a width, but {tie_names} get "
                                    f"{[bits[n] for n in tie_names]}. Give the tie one width.")
    floats = list(getattr(units, "float_units", ()) or ())
    if not floats and hasattr(units, "meta") and isinstance(units.meta, Mapping):
        floats = list(units.meta.get("float_units", ()))
    bits.update(dict.fromkeys(floats, FLOAT_BITS))
    pins.update(dict.fromkeys(floats, FLOAT_BITS))
    return BitPlan(bits=bits, quantizer=_quantizer(units, quantizer), pins=pins,
                   meta={"source": "assignment", **dict(meta or {})})


__all__ = ["plan_from_assignment"]
