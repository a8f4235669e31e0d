"""Before an export: can the target runtime represent the plan, and what does making it fit cost?

Each target has rules a plan may break:

* ``gguf`` (llama.cpp): one type per tensor, so a unit's per-group widths must agree; widths 2..8
  (7 is stored as ``q8_0``). Row lengths the 256-blocks cannot take fall back to 32-block types
  (:mod:`mpsearch.deploy.gguf_export`); those are reported as type changes.
* ``compressed-tensors`` (its ``pack-quantized`` format, as the library reads it): one scheme per
  module, so one width; widths 1..8; a group size must divide the module's row length.
* ``vllm``: compressed-tensors as vLLM runs it: 4 or 8 bits only (its int-weight kernels), group size
  None (per channel), 32, 64 or 128, and the projections vLLM fuses (q/k/v into one matrix,
  gate/up into another) must share one width.
* both compressed-tensors targets keep a weight the token embedding shares (``lm_head`` tied to
  ``model.embed_tokens``) in float: on load, transformers and vLLM tie ``lm_head`` back to the
  float embedding, so a quantized tied ``lm_head`` would be dropped or fail to load. Such a unit
  goes to 16 bits (GGUF holds it: llama.cpp multiplies by the quantized ``token_embd.weight``).

:func:`check_export` changes what it must, never lowering a width (a unit goes to the narrowest
width the target allows at or above the planned one, or to 16 bits = kept in float; merged groups
and fused projections take their widest member), reports every change with its predicted cost
from a cost table when one is given, and with ``allow_changes=False`` refuses instead.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from mpsearch.core.costs import CostTable
from mpsearch.core.errors import ConfigError, PlanMismatchError
from mpsearch.core.plan import BitPlan

__all__ = ["TARGETS", "ExportChange", "ExportCheck", "ExportTarget", "check_export"]

FLOAT = 16


@dataclass(frozen=True)
class ExportTarget:
    """What a runtime can represent: widths, group sizes, and the module names that must share a width."""

    name: str
    widths: frozenset[int]
    group_sizes: frozenset[int | None] | None  # None: any size dividing the row length
    fused: tuple[tuple[str, ...], ...] = ()  # suffixes fused per parent module, e.g. (q_proj, k_proj, v_proj)
    tied_quantized: bool = True  # whether a weight shared with the token embedding may be quantized


TARGETS: dict[str, ExportTarget] = {
    "gguf": ExportTarget("gguf", frozenset({2, 3, 4, 5, 6, 7, 8}), None),
    "compressed-tensors": ExportTarget("compressed-tensors", frozenset(range(1, 9)), None, tied_quantized=False),
    "vllm": ExportTarget("vllm", frozenset({4, 8}), frozenset({None, 32, 64, 128}),
                         (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")), tied_quantized=False),
}


@dataclass(frozen=True)
class ExportChange:
    """One unit the check had to change: planned and exported widths, why, and the predicted cost added."""

    unit: str
    planned: int | tuple[int, ...]
    exported: int
    reason: str
    cost_delta: float | None = None


@dataclass(frozen=True)
class ExportCheck:
    """The plan as the target will hold it, the changes made to get there, and their total predicted cost."""

    plan: BitPlan
    changes: tuple[ExportChange, ...]
    cost_delta: float | None

    def report(self) -> str:
        """One line per change, plus the total."""
        if not self.changes:
            return "export check: the plan fits the target unchanged."
        lines = [f"export check: {len(self.changes)} unit(s) changed to fit the target"]
        for c in self.changes:
            cost = "" if c.cost_delta is None else f", predicted cost +{c.cost_delta:.4g}"
            lines.append(f"  {c.unit}: {c.planned} -> {c.exported} bits ({c.reason}{cost})")
        if self.cost_delta is not None:
            lines.append(f"  total predicted cost added: {self.cost_delta:.4g}")
        return "\n".join(lines)


def _lift(width: int, allowed: frozenset[int]) -> int:
    return min((w for w in allowed if w >= width), default=FLOAT)


def _unit_cost(costs: CostTable, unit: str, width: int) -> float | None:
    if isinstance(costs.items, tuple) and unit in costs.items and width in costs.bits:
        return float(costs.cost[costs.items.index(unit), costs.bits.index(width)])
    return None


def _delta(costs: CostTable | None, unit: str, old: int | tuple[int, ...], new: int) -> float | None:
    if costs is None:
        return None
    if not isinstance(costs.items, tuple):  # group table: sum over the unit's groups
        if unit not in costs.items.units or new not in costs.bits:
            return None
        part = costs.items.unit_slice(unit)
        rows = costs.cost[part]
        olds = list(old) if isinstance(old, tuple) else [old] * len(rows)
        if len(olds) != len(rows) or any(w not in costs.bits for w in olds):
            return None
        before = sum(float(rows[i, costs.bits.index(w)]) for i, w in enumerate(olds))
        return float(rows[:, costs.bits.index(new)].sum()) - before
    a, b = _unit_cost(costs, unit, old) if isinstance(old, int) else None, _unit_cost(costs, unit, new)
    return None if a is None or b is None else b - a


def _fused_groups(units: list[str], target: ExportTarget) -> list[list[str]]:
    groups = []
    for suffixes in target.fused:
        parents: dict[str, list[str]] = {}
        for unit in units:
            head, _, tail = unit.rpartition(".")
            if tail in suffixes:
                parents.setdefault(head, []).append(unit)
        groups.extend(m for m in parents.values() if len(m) > 1)
    return groups


def check_export(plan: BitPlan, target: str, *, row_lengths: Mapping[str, int] | None = None,
                 costs: CostTable | None = None, allow_changes: bool = True,
                 tied: Collection[str] = ()) -> ExportCheck:
    """Fit ``plan`` to ``target`` (one of :data:`TARGETS`) and say what that changed (module docstring).

    ``row_lengths`` (unit -> row length) enables the group-size check. With
    ``allow_changes=False`` any needed change raises :class:`PlanMismatchError` listing them all.
    ``tied`` names the plan's units whose weight the token embedding shares (``lm_head`` of a tied
    decoder; ``[u.name for u in discover(model).units if u.tied]``).
    """
    if target not in TARGETS:
        raise ConfigError(f"`target` must be one of {sorted(TARGETS)}, but got target={target!r}. Pass e.g. 'gguf'.")
    rules = TARGETS[target]
    group = plan.quantizer.group_size
    if rules.group_sizes is not None and group not in rules.group_sizes:
        raise PlanMismatchError(f"{target} takes group sizes {sorted(map(str, rules.group_sizes))}, but the plan's "
                                f"quantizer has group_size={group}. Search again with one of those group sizes.")
    if target != "gguf" and group is not None and row_lengths is not None:
        odd = sorted(u for u, n in row_lengths.items() if u in plan.bits and plan.bits[u] != FLOAT and n % group)
        if odd:
            raise PlanMismatchError(f"{target} needs group_size to divide every row length, but group_size={group} does "
                                    f"not divide that of {odd[:5]}. Search with a group size dividing them, or keep those in float.")
    new: dict[str, int] = {}
    changes: list[ExportChange] = []
    for unit, value in plan.bits.items():
        widest = max(value) if isinstance(value, tuple) else value
        width = widest if widest == FLOAT else _lift(widest, rules.widths)
        new[unit] = width
        if isinstance(value, tuple) and len(set(value)) > 1:
            reason = "one width per tensor: groups merged to the widest"
            reason += "" if width == widest else f", and {widest} bits is not a {target} width"
            changes.append(ExportChange(unit, value, width, reason))
        elif width != widest:
            changes.append(ExportChange(unit, value, width, f"{widest} bits is not a {target} width"))
    for members in _fused_groups(list(new), rules):
        top = max(new[m] for m in members)
        for m in members:
            if new[m] != top:
                previous = next((c for c in changes if c.unit == m), None)
                changes = [c for c in changes if c.unit != m]
                new[m] = top
                fused = "/".join(x.rpartition(".")[2] for x in members)
                changes.append(ExportChange(m, plan.bits[m], top, (previous.reason + "; " if previous else "")
                                            + f"fused with {fused}: widest member"))
    for unit in sorted(u for u in tied if u in new and new[u] != FLOAT and not rules.tied_quantized):
        changes = [c for c in changes if c.unit != unit]
        new[unit] = FLOAT
        changes.append(ExportChange(unit, plan.bits[unit], FLOAT, f"its weight is the token embedding's, which {target} "
                                    "keeps in float (a tied lm_head is re-tied to it on load)"))
    changes = [replace(c, cost_delta=_delta(costs, c.unit, c.planned, c.exported)) for c in changes]
    if changes and not allow_changes:
        listed = "; ".join(f"{c.unit}: {c.planned} -> {c.exported} ({c.reason})" for c in changes[:5])
        raise PlanMismatchError(f"the plan must fit {target} unchanged, but {len(changes)} unit(s) need changes: {listed}"
                                f"{' ...' if len(changes) > 5 else ''}. Pass allow_changes=True to accept them, or search "
                                f"with the target's widths only.")
    deltas = [c.cost_delta for c in changes]
    total = None if costs is None or any(d is None for d in deltas) else float(sum(deltas))  # type: ignore[arg-type]
    moved = {c.unit for c in changes}
    fitted = plan if not changes else replace(  # a bias correction measured at the old width no longer holds
        plan, bits=new, pins={u: w for u, w in plan.pins.items() if new.get(u) == w},
        bias_correction={u: v for u, v in plan.bias_correction.items() if u not in moved})
    return ExportCheck(plan=fitted, changes=tuple(sorted(changes, key=lambda c: c.unit)), cost_delta=total)

