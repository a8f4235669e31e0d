"""Which modules of a model are units, under which names, and which stay in floating point.

One walk over the model serves discovery (:func:`mpsearch.space.discover.discover`), plan checks
(:func:`check_plan_for_model`) and plan application (:func:`module_names`), so all three agree:

* A unit is an ``nn.Conv2d``, ``nn.Linear`` or transformers ``Conv1D`` *module object*, named by
  the first name :meth:`torch.nn.Module.named_modules` gives it, or, when asked for
  (``embeddings=True``), an ``nn.Embedding`` token table (kind ``"linear"``: each row of the table
  is an output channel, its groups run along the hidden dimension, as a Linear's run along its
  inputs). Other names the same object is reachable under (``self.alias = self.shared``) are its
  aliases: it is searched once, and a plan replaces it under every name, or a call through an
  alias would still run the float layer.
* A weight Parameter shared by several modules (``lm_head`` tied to the token embedding, as in
  most decoders) is *one* unit: named by its first layer (the ``lm_head`` Linear), the other
  modules recorded as ``tied``. Quantizing it quantizes every module that reads it, so it is a
  unit whether or not embeddings are searched, and its weights are counted once.
* A :class:`FloatModule` stays in floating point, with the reason: a module with its own weight
  matrix that is not such a layer (embeddings unless searched, 1-D/3-D and transposed
  convolutions, attention blocks holding their projection weights themselves), and a layer whose
  parent reads its weight tensor instead of calling it (``nn.MultiheadAttention.out_proj``; the
  feed-forward layers of ``nn.TransformerEncoderLayer``, read by its fast path): a packed layer
  has no ``weight``, so replacing such a layer would break the parent's forward. A tie that cannot
  be replaced by packed modules (an embedding subclass with its own forward, ``max_norm``) keeps
  every module of the tie in floating point, listed once.
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
    """A quantizable module object of a model, its first name, its other names, and the other
    modules that read its weight Parameter (``tied``)."""

    name: str
    kind: str  # the weight layout: "linear" (an embedding table too), "conv2d" or "conv1d"
    module: nn.Module
    aliases: tuple[str, ...] = ()
    tied: tuple[str, ...] = ()
    role: str = "layer"  # "embedding": an nn.Embedding token table


EMBEDDINGS_OFF = "embedding tables are searched only with discover(..., embeddings=True)"

_REASONS = (  # (module classes, why it stays in floating point)
    ((nn.EmbeddingBag,), "embedding bags are not quantized"),
    ((nn.Embedding,), EMBEDDINGS_OFF),
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
    not a quantizable layer, or None (quantizable, or no such weight: norms, activations...)."""
    if quantizable_kind(module) is not None:
        return None
    matrices = [p for p in module.parameters(recurse=False) if p.is_floating_point() and p.dim() >= 2]
    if not matrices:
        return None
    reason = next((why for classes, why in _REASONS if isinstance(module, classes)),
                  "only Conv2d, Linear and Conv1D layers are quantized")
    return FloatModule(name=name or "(root)", kind=type(module).__name__,
                       n_weights=sum(p.numel() for p in matrices), reason=reason)


def is_token_embedding(module: nn.Module) -> bool:
    """An ``nn.Embedding`` (not a bag) with a 2-D floating weight: a candidate table."""
    weight = getattr(module, "weight", None)
    return (isinstance(module, nn.Embedding) and isinstance(weight, nn.Parameter)
            and weight.dim() == 2 and weight.is_floating_point())


def embedding_blocker(module: nn.Module) -> str | None:
    """Why a packed table could not stand in for this embedding, or None."""
    if type(module).forward is not nn.Embedding.forward:
        return (f"{type(module).__name__} has its own forward, which a packed table would not run "
                "(e.g. a scale on the looked-up rows)")
    if module.max_norm is not None:
        return "max_norm renormalizes the looked-up rows in forward"
    return None


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


def _tie_blocker(members: Sequence[FoundUnit]) -> str | None:
    """Why modules sharing one weight cannot be one packed unit, or None."""
    for m in members:
        if m.role == "embedding" and (why := embedding_blocker(m.module)):
            return f"{m.name!r}: {why}"
    kinds = {m.kind for m in members}
    if len(kinds) > 1:
        return f"they store the shared weight in different layouts ({', '.join(sorted(kinds))})"
    return None


def _merge(members: list[FoundUnit], embeddings: bool) -> FoundUnit | FloatModule | None:
    """One unit (or one float record) for the modules that share one weight Parameter."""
    layers = [m for m in members if m.role == "layer"]
    owner = (layers or members)[0]
    others = tuple(m.name for m in members if m is not owner)
    n = int(owner.module.weight.numel())
    shared = f" (its weight is shared with {', '.join(map(repr, others))}, counted once)" if others else ""
    if len(members) > 1 and (why := _tie_blocker(members)):
        return FloatModule(name=owner.name, kind=type(owner.module).__name__, n_weights=n,
                           reason=f"modules sharing one weight must be replaced together, but {why}{shared}")
    if not layers:
        if not embeddings:
            return FloatModule(name=owner.name, kind=type(owner.module).__name__, n_weights=n,
                               reason=EMBEDDINGS_OFF + shared)
        if (why := embedding_blocker(owner.module)) is not None:
            return FloatModule(name=owner.name, kind=type(owner.module).__name__, n_weights=n, reason=why)
    return FoundUnit(name=owner.name, kind=owner.kind, module=owner.module, aliases=owner.aliases,
                     tied=others, role=owner.role)


def scan_model(model: nn.Module, *, embeddings: bool = False) -> tuple[list[FoundUnit], list[FloatModule]]:
    """The quantizable units of ``model`` in module order, and the modules that stay in float.

    ``embeddings``: token tables (``nn.Embedding``) are units too. Modules sharing one weight
    Parameter become one unit (see the module docstring) whatever ``embeddings`` says.
    """
    names = module_names(model)
    candidates: list[FoundUnit] = []
    floats: list[FloatModule] = []
    for name, module in model.named_modules():
        kind = quantizable_kind(module)
        if name and kind is None and is_token_embedding(module):
            candidates.append(FoundUnit(name=name, kind="linear", module=module,
                                        aliases=tuple(names[id(module)][1:]), role="embedding"))
            continue
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
        candidates.append(FoundUnit(name=name, kind=kind, module=module, aliases=tuple(every[1:])))
    by_weight: dict[int, list[FoundUnit]] = {}
    for c in candidates:
        by_weight.setdefault(id(c.module.weight), []).append(c)
    merged = {id(group[0]): _merge(group, embeddings) for group in by_weight.values()}
    order = {c.name: i for i, c in enumerate(candidates)}
    units = sorted((m for m in merged.values() if isinstance(m, FoundUnit)), key=lambda u: order[u.name])
    floats.extend(m for m in merged.values() if isinstance(m, FloatModule))
    position = {name or "(root)": i for i, (name, _) in enumerate(model.named_modules())}
    floats.sort(key=lambda f: position[f.name])
    return units, floats


def tied_to(units: Sequence[FoundUnit]) -> dict[str, str]:
    """``{tied module name: unit name}`` for every module that reads a unit's weight."""
    return {t: u.name for u in units for t in u.tied}


def check_plan_for_model(plan: BitPlan, model: nn.Module) -> BitPlan:
    """Check a plan against a model: it names every unit (by its first name) and nothing else.

    Token embeddings (``nn.Embedding``) are optional units: a plan may name them or not. A plan
    naming an alias of a unit, a module tied to a unit (``model.embed_tokens`` when ``lm_head``
    shares its weight), or a layer that stays in floating point (such as
    ``nn.MultiheadAttention.out_proj``) is refused with the reason.
    """
    units, floats = scan_model(model, embeddings=True)
    unit_names = {u.name for u in units}
    optional = {u.name for u in units if u.role == "embedding"}
    alias_of = {a: u.name for u in units for a in u.aliases}
    tie_of = tied_to(units)
    kept_float = {f.name: f.reason for f in floats}
    all_names = {n for n, _ in model.named_modules(remove_duplicate=False) if n}
    unknown = sorted(n for n in plan.bits if n not in all_names)
    not_quantizable = sorted(n for n in plan.bits if n in all_names and n not in unit_names
                             and n not in alias_of and n not in tie_of)
    missing = sorted(unit_names - optional - set(plan.bits))
    aliased = sorted(n for n in plan.bits if n in alias_of)
    tied = sorted(n for n in plan.bits if n in tie_of)
    if aliased:
        shown = ", ".join(f"{n!r} is {alias_of[n]!r}" for n in aliased)
        raise PlanMismatchError(
            f"a plan must name each unit once, by its first name, but it names aliases ({shown}). "
            "Use the first name: applying the plan replaces the unit under all its names."
        )
    if tied:
        shown = ", ".join(f"{n!r} shares the weight of {tie_of[n]!r}" for n in tied)
        raise PlanMismatchError(
            f"a plan must name a shared (tied) weight once, by its unit, but it names tied modules ({shown}). "
            "Drop them: the unit's width quantizes every module that reads its weight."
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
