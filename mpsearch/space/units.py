"""Which modules of a model are units, under which names, and which stay in floating point.

One walk over the model serves discovery (:func:`mpsearch.space.discover.discover`), plan checks
(:func:`check_plan_for_model`) and plan application (:func:`module_names`), so all three agree:

* A unit is an ``nn.Conv2d``, ``nn.Linear`` or transformers ``Conv1D`` *module object*, named by
  the first name :meth:`torch.nn.Module.named_modules` gives it. Other names the same object is
  reachable under (``self.alias = self.shared``) are its aliases: it is searched once, and a plan
  replaces it under every name, or a call through an alias would still run the float layer.
* A :class:`FloatModule` stays in floating point, with the reason: a module with its own weight
  matrix that is not such a layer (embeddings, 1-D/3-D and transposed convolutions, attention
  blocks holding their projection weights themselves), and a layer whose parent reads its weight
  tensor instead of calling it (``nn.MultiheadAttention.out_proj``; the feed-forward layers of
  ``nn.TransformerEncoderLayer``, read by its fast path): a packed layer has no ``weight``, so
  replacing such a layer would break the parent's forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from mpsearch.core.errors import PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.kernels.fake import quantizable_kind


@dataclass(frozen=True, kw_only=True)
class FloatModule:
    """A module with a weight matrix that mpsearch cannot quantize: it stays in floating point."""

    name: str
    kind: str  # the module's class name, e.g. "Embedding"
    n_weights: int
    reason: str

    def describe(self) -> str:
        return f"{self.name!r} ({self.kind}, {self.n_weights:,} weights: {self.reason})"


@dataclass(frozen=True)
class FoundUnit:
    """A quantizable module object of a model, its first name and its other names."""

    name: str
    kind: str
    module: nn.Module
    aliases: tuple[str, ...] = ()


_REASONS = (  # (module classes, why it stays in floating point)
    ((nn.Embedding, nn.EmbeddingBag), "embedding tables are not quantized"),
    ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), "transposed convolutions are not supported"),
    ((nn.Conv1d, nn.Conv3d), "only 2-D convolutions are supported"),
    ((nn.MultiheadAttention,), "the attention function reads its input projection weights itself"),
)

_READ_BY_PARENT = (  # (parent class, child attributes whose weight the parent reads itself, why)
    (nn.MultiheadAttention, ("out_proj",),
     "nn.MultiheadAttention reads out_proj.weight itself instead of calling the layer"),
    (nn.TransformerEncoderLayer, ("linear1", "linear2"),
     "the fast path of nn.TransformerEncoderLayer reads linear1.weight and linear2.weight itself"),
)


def unquantizable(name: str, module: nn.Module) -> FloatModule | None:
    """The :class:`FloatModule` record of a module with an own weight matrix (2-D or more) that is
    not a quantizable unit, or None (quantizable, or no such weight: norms, activations...)."""
    if quantizable_kind(module) is not None:
        return None
    matrices = [p for p in module.parameters(recurse=False) if p.is_floating_point() and p.dim() >= 2]
    if not matrices:
        return None
    reason = next((why for classes, why in _REASONS if isinstance(module, classes)),
                  "only Conv2d, Linear and Conv1D layers are quantized")
    return FloatModule(name=name or "(root)", kind=type(module).__name__,
                       n_weights=sum(p.numel() for p in matrices), reason=reason)


def module_names(model: nn.Module) -> dict[int, list[str]]:
    """Every name each module object of ``model`` is reachable under, by ``id``, first name first."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


def _read_by_parent(model: nn.Module, names: Sequence[str]) -> str | None:
    """Why a layer's parent reads its weight itself (under any of its names), or None."""
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        for cls, attrs, why in _READ_BY_PARENT:
            if isinstance(parent, cls) and attr in attrs:
                return why
    return None


def scan_model(model: nn.Module) -> tuple[list[FoundUnit], list[FloatModule]]:
    """The quantizable units of ``model`` in module order, and the modules that stay in float."""
    names = module_names(model)
    units: list[FoundUnit] = []
    floats: list[FloatModule] = []
    for name, module in model.named_modules():
        kind = quantizable_kind(module)
        if kind is None or not name:
            record = unquantizable(name, module)
            if record is not None:
                floats.append(record)
            continue
        every = names[id(module)]
        why = _read_by_parent(model, every)
        if why is not None:
            floats.append(FloatModule(name=name, kind=type(module).__name__,
                                      n_weights=int(module.weight.numel()), reason=why))
            continue
        units.append(FoundUnit(name=name, kind=kind, module=module, aliases=tuple(every[1:])))
    return units, floats


def check_plan_for_model(plan: BitPlan, model: nn.Module) -> BitPlan:
    """Check a plan against a model: it names every unit (by its first name) and nothing else.

    A plan naming an alias of a unit, or a layer that stays in floating point (such as
    ``nn.MultiheadAttention.out_proj``), is refused with the reason.
    """
    units, floats = scan_model(model)
    unit_names = {u.name for u in units}
    alias_of = {a: u.name for u in units for a in u.aliases}
    kept_float = {f.name: f.reason for f in floats}
    all_names = {n for n, _ in model.named_modules(remove_duplicate=False) if n}
    unknown = sorted(n for n in plan.bits if n not in all_names)
    not_quantizable = sorted(n for n in plan.bits if n in all_names and n not in unit_names and n not in alias_of)
    missing = sorted(unit_names - set(plan.bits))
    aliased = sorted(n for n in plan.bits if n in alias_of)
    if aliased:
        shown = ", ".join(f"{n!r} is {alias_of[n]!r}" for n in aliased)
        raise PlanMismatchError(
            f"a plan must name each unit once, by its first name, but it names aliases ({shown}). "
            "Use the first name: applying the plan replaces the unit under all its names."
        )
    if unknown or not_quantizable or missing:
        reasons = "; ".join(f"{n!r}: {kept_float[n]}" for n in not_quantizable if n in kept_float)
        raise PlanMismatchError(
            f"a plan must name every quantizable unit of {type(model).__name__} and nothing else, but "
            f"missing={missing}, unknown={unknown}, not quantizable={not_quantizable}"
            + (f" ({reasons})" if reasons else "") + ". "
            "Make the plan for this model, or list a unit with 16 bits to keep it in floating point."
        )
    return plan
