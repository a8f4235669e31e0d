"""Apply a bit plan for real: replace each planned unit by a layer holding packed weights.

:func:`apply` is the deployment counterpart of :func:`mpsearch.deploy.evaluate.fake_quantize_model`:
the codes are the reference quantizer's, bit for bit, but stored packed (see
:mod:`mpsearch.deploy.modules`), so the model really is smaller. :func:`quantized_buffer_bytes`
measures it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from torch import nn

from mpsearch.core.config import FLOAT_BITS, check_bits
from mpsearch.core.errors import ConfigError, PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy import dispatch
from mpsearch.deploy.bias_shift import add_bias_correction
from mpsearch.deploy.embedding import QuantEmbedding, check_table_activations, tied_names, without_tables
from mpsearch.deploy.gptq import gptq_quantized_weights
from mpsearch.deploy.group_modules import GroupQuantConv2d, GroupQuantLinear, group_map, unit_rows
from mpsearch.deploy.modules import (
    QuantConv2d,
    QuantLinear,
    _PackedUnit,
    check_backend,
    conv_unpackable,
)
from mpsearch.kernels.backends import get_backend
from mpsearch.kernels.fake import quantizable_kind
from mpsearch.kernels.packing_groups import quantize_groups
from mpsearch.kernels.quantize import QuantizedWeight, weight_matrix
from mpsearch.space.units import check_plan_for_model, module_names


def unit_widths(model: nn.Module, plan: BitPlan, *, groups: bool = False) -> dict[str, int]:
    """One width per planned unit (16 = stays float); raises for mixed per-group widths unless
    ``groups`` (then such a unit gets its widest width under 16, and is packed group-wise).

    Per-group plans whose groups all share one width are that width (the codes are the same).
    """
    modules = dict(model.named_modules())
    widths: dict[str, int] = {}
    for name, value in plan.bits.items():
        if isinstance(value, tuple):
            distinct = sorted(set(value))
            if len(distinct) > 1 and groups:
                distinct = [max(b for b in distinct if b != FLOAT_BITS)]
            if len(distinct) != 1:
                raise PlanMismatchError(
                    f"Packed layers need one bit width per unit, but unit {name!r} mixes "
                    f"per-group widths {distinct}. Use mpsearch.deploy.evaluate.fake_quantize_model "
                    f"(the fake-quant reference) for per-group plans, or give the unit one width.")
            value = distinct[0]
        widths[name] = check_bits(value, plan.quantizer.scheme, allow_float=True)
        if quantizable_kind(modules[name]) is None and not isinstance(modules[name], nn.Embedding):
            raise PlanMismatchError(f"Unit {name!r} is not quantizable. Remove it from the plan.")
    return widths


def _unpackable(module: nn.Module) -> str | None:
    """Why the packed backends cannot run ``module`` (a grouped or non-zero-padded Conv2d), or None."""
    if not isinstance(module, nn.Conv2d):
        return None
    return conv_unpackable(module.groups, module.padding, module.padding_mode)


def check_packable(model: nn.Module, widths: dict[str, int], backend: str) -> None:
    """Raise :class:`PlanMismatchError` listing every planned unit a packed backend cannot run.

    The fake-quant reference runs them all; backends that multiply packed weights (``numba``,
    ``torch``) need ``groups=1`` convolutions zero-padded by numbers. Nothing is changed before
    this check.
    """
    if not get_backend(backend).multiplies:
        return
    modules = dict(model.named_modules())
    bad = [(n, why) for n, b in widths.items() if b != FLOAT_BITS and (why := _unpackable(modules[n]))]
    if bad:
        shown = "; ".join(f"{n!r} ({why})" for n, why in bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise PlanMismatchError(
            f"the {backend!r} backend needs Conv2d units with groups=1 and zero padding given as numbers, but "
            f"{len(bad)} planned unit(s) are not: {shown}. Use backend='reference', or plan these units at 16 bits "
            "(they then stay in floating point).")


def _replace(root: nn.Module, name: str, new: nn.Module, names: dict[int, list[str]]) -> None:
    """Put ``new`` in place of the module at ``name`` under every name that module object has
    (``self.alias = self.shared``), so no call still reaches the float layer."""
    for every in names[id(root.get_submodule(name))]:
        parent_name, _, child = every.rpartition(".")
        setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def packed_unit(module: nn.Module, bits: int, plan: BitPlan, backend: str, *,
                empty: bool = False, qweight: QuantizedWeight | None = None,
                group_bits: Any = None) -> _PackedUnit:
    """The packed layer for one float ``module`` (Linear, Conv1D, Conv2d or Embedding) at ``bits``.

    ``empty`` skips quantization and leaves zeroed buffers, for loading a state dict into;
    ``qweight`` packs given codes, scales and zero-points (GPTQ's) instead of quantizing;
    ``group_bits`` (out, n_groups) widths make a per-group layer (``bits`` is then unused).
    """
    cls = QuantConv2d if quantizable_kind(module) == "conv2d" else QuantLinear
    if isinstance(module, nn.Embedding):
        if group_bits is not None:
            raise PlanMismatchError("a packed embedding table has one width, but its unit mixes per-group widths. "
                                    "Give the embedding unit one width, or use fake_quantize_model.")
        cls = QuantEmbedding
    if group_bits is not None:  # per-group widths: the group-wise layout
        cls = GroupQuantConv2d if cls is QuantConv2d else GroupQuantLinear
        unit = cls.empty_like(module, group_bits, plan.quantizer, backend)  # type: ignore[arg-type]
        if not empty:
            unit._load_quantized(qweight if qweight is not None else quantize_groups(weight_matrix(
                module.weight.detach(), unit.kind), unit.group_bits, plan.quantizer), module.bias)
        return unit
    if empty or qweight is not None:
        unit = cls.empty_like(module, bits, plan.quantizer, backend)  # type: ignore[arg-type]
        if qweight is not None:
            unit._load_quantized(qweight, module.bias)
        return unit
    return cls.from_float(module, bits, plan.quantizer, backend)  # type: ignore[arg-type]


def _attach_activations(model: nn.Module, plan: BitPlan) -> None:
    if plan.activation_bits:
        from mpsearch.kernels.activations import attach_activation_quant

        attach_activation_quant(model, plan.activation_bits, plan.activation_ranges)


def apply(model: nn.Module, plan: BitPlan, backend: str = "reference", *,
          inplace: bool = False, batches: Iterable[Any] | Any | None = None) -> nn.Module:
    """A copy of ``model`` (the model itself if ``inplace``) with every unit under 16 bits packed.

    Weights are quantized by the reference quantizer with ``plan.quantizer``, so the codes
    equal :func:`mpsearch.kernels.quantize.quantize`'s; activation bits of the plan are applied
    by forward pre-hooks, as in the fake-quant model. A GPTQ plan (``plan.quantizer.method ==
    "gptq"``) packs the codes GPTQ finds on ``batches``, the calibration batches the plan was made
    with, so the packed model equals ``fake_quantize_model(model, plan, batches=batches)``. ``backend`` is ``"reference"`` (equal to
    :func:`mpsearch.deploy.evaluate.fake_quantize_model`), ``"numba"`` (CPU) or ``"torch"`` (any device).

    >>> import torch
    >>> net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> q = apply(net, BitPlan(bits={"0": 4, "2": 16}), backend="torch")
    >>> type(q[0]).__name__, type(q[2]).__name__, q(torch.ones(1, 8)).shape
    ('QuantLinear', 'Linear', torch.Size([1, 2]))
    """
    return build_packed(model, plan, backend, inplace=inplace, batches=batches)


def build_packed(model: nn.Module, plan: BitPlan, backend: str, *, inplace: bool = False,
                 empty: bool = False, batches: Iterable[Any] | Any | None = None) -> nn.Module:
    """:func:`apply`; with ``empty``, packed layers are left zeroed (for :func:`load` to fill)."""
    check_backend(backend)
    check_plan_for_model(plan, model)
    check_table_activations(model, plan)
    widths = unit_widths(model, plan, groups=True)
    check_packable(model, widths, backend)
    mixed = {n: v for n, v in plan.bits.items() if isinstance(v, tuple) and len(set(v)) > 1}
    codes: dict[str, QuantizedWeight] = {}
    if plan.quantizer.method == "gptq" and not empty:
        if batches is None:
            raise ConfigError("a GPTQ plan needs the calibration batches it was made with, but apply got "
                              "batches=None. Pass apply(model, plan, backend, batches=calibration batches).")
        codes = gptq_quantized_weights(model, without_tables(model, plan), batches)
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    new_units = {name: packed_unit(modules[name], bits, plan, backend, empty=empty, qweight=codes.get(name),
                                   group_bits=group_map(mixed[name], unit_rows(modules[name])) if name in mixed else None)
                 for name, bits in widths.items() if bits != FLOAT_BITS}
    for name, others in tied_names(target, new_units).items():  # one weight read by several modules
        for other in others:
            new_units[other] = QuantEmbedding.tied_to(new_units[name], modules[other]) \
                if isinstance(modules[other], nn.Embedding) else \
                packed_unit(modules[other], widths[name], plan, backend, empty=empty, qweight=codes.get(name),
                            group_bits=group_map(mixed[name], unit_rows(modules[other])) if name in mixed else None)
    names = module_names(target)
    for name, unit in new_units.items():  # all built first: a failure leaves `model` untouched
        _replace(target, name, unit, names)
        if not empty and not isinstance(unit, QuantEmbedding):
            dispatch.prepare(unit)
    _attach_activations(target, plan)
    if plan.bias_correction:
        add_bias_correction(target, plan.bias_correction)
    return target


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every packed layer of ``model`` to ``backend`` in place (buffers unchanged)."""
    units = [m for m in model.modules() if isinstance(m, _PackedUnit)]
    if get_backend(backend).multiplies:
        for m in units:
            if isinstance(m, QuantConv2d) and (why := conv_unpackable(m.groups, m.padding,
                                                                      m.padding_mode)):
                raise PlanMismatchError(f"Packed backends need groups=1 zero-padded convs, but "
                                        f"{m!r} has {why}. Keep backend='reference'.")
    for m in units:
        m.backend = backend
        dispatch.forget(m)
        if not isinstance(m, QuantEmbedding):
            dispatch.prepare(m)
    return model


def quantized_buffer_bytes(model: nn.Module) -> dict[str, Any]:
    """Bytes of a packed model by role, next to what the same model takes in fp32.

    Keys: ``packed``, ``scale``, ``zero``, ``map`` (the packed layers' buffers; ``map`` the
    width map of per-group layers), ``float`` (every other
    parameter and buffer, in its own dtype), ``total``, ``fp32`` (the model with every weight
    in float32) and ``ratio`` (``fp32 / total``).

    >>> import torch
    >>> q = apply(nn.Sequential(nn.Linear(64, 32)), BitPlan(bits={"0": 4}))
    >>> b = quantized_buffer_bytes(q); (b["packed"], b["scale"], b["float"])
    (1024, 64, 128)
    """
    sizes = {"packed": 0, "scale": 0, "zero": 0, "map": 0, "float": 0}
    seen: set[int] = set()
    fp32 = 0
    for module in model.modules():
        roles = {}
        if isinstance(module, _PackedUnit):
            roles = {"packed": module.packed, "scale": module.scale, "zero": module.zero,
                     "map": getattr(module, "group_bits", None)}
            if id(module.packed) not in seen:  # a tied table reads its layer's codes: one weight
                fp32 += 4 * module.out_features * module.K
        for role, t in roles.items():
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                sizes[role] += t.numel() * t.element_size()
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if id(t) not in seen:
                seen.add(id(t))
                sizes["float"] += t.numel() * t.element_size()
                fp32 += t.numel() * 4 if t.is_floating_point() else t.numel() * t.element_size()
    total = sum(sizes.values())
    return {**sizes, "total": total, "fp32": fp32, "ratio": fp32 / total if total else 1.0}


__all__ = ["apply", "build_packed", "check_packable", "packed_unit", "quantized_buffer_bytes", "set_backend", "unit_widths"]
