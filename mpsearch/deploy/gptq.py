"""Sequential GPTQ of a whole model: each unit quantized with the inputs its quantized predecessors give.

Units are quantized one at a time in the order the model calls them. For each, the calibration
batches run through the model as quantized so far; a forward pre-hook on the unit collects its
inputs into one Hessian ``2 X X^T / n`` (Linear and transformers ``Conv1D``: one row per sample or
token, padded tokens left out; Conv2d: one row per input patch, laid out as
:func:`~mpsearch.kernels.quantize.weight_matrix` flattens the kernel, one Hessian per conv group).
:func:`~mpsearch.kernels.gptq.gptq_quantize` then quantizes the weight, which is replaced in the
model before the next unit is calibrated. When the unit is the only user of its weight and runs
once per forward, the forward stops right after its inputs are seen; units given the same input
tensor share one Hessian, and a decoder is run one block at a time
(:mod:`mpsearch.deploy.gptq_blocks`). Only one Hessian is held at
a time. The plan's activation quantization, if any, is applied while calibrating, so each unit
sees the inputs it will see at run time. Nothing is random: the same batches give the same model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpsearch.core.config import FLOAT_BITS
from mpsearch.core.errors import ConfigError, DataError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.gptq_blocks import block_chain, calibration_steps, capture_inputs, replay, split_by_block
from mpsearch.deploy.gptq_blocks import feeds as block_feeds
from mpsearch.kernels.fake import _check_plan, quantizable_kind
from mpsearch.kernels.gptq import GPTQResult, HessianAccumulator, gptq_quantize
from mpsearch.kernels.quantize import QuantizedWeight, matrix_to_weight, weight_matrix
from mpsearch.space.discover import check_plan_for_model
from mpsearch.space.forward import batch_inputs, token_mask
from mpsearch.space.hooks import ModelHooks

_PATCH_ELEMENTS = 1 << 24  # unfolded conv inputs are built in chunks of about this many floats


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the unit's inputs are recorded."""


def _conv_rows(module: nn.Conv2d, x: Tensor, accs: list[HessianAccumulator]) -> None:
    """Add the input patches of ``x`` (B, C, H, W) to one accumulator per conv group."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    padded = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    per_group = module.in_channels // module.groups
    positions = max(1, padded.shape[-2] * padded.shape[-1])
    step = max(1, _PATCH_ELEMENTS // (per_group * module.kernel_size[0] * module.kernel_size[1]
                                      * positions))
    for g, acc in enumerate(accs):
        channels = padded[:, g * per_group:(g + 1) * per_group]
        for part in channels.split(step):
            cols = F.unfold(part, module.kernel_size, dilation=module.dilation, stride=module.stride)
            acc.add(cols.transpose(1, 2).reshape(-1, cols.shape[1]))


def _linear_rows(x: Tensor, mask: Tensor | None) -> Tensor:
    """(n, K) input rows of a Linear / Conv1D; for (B, T, K) token inputs, real tokens only."""
    if mask is not None and x.dim() == 3 and tuple(mask.shape) == tuple(x.shape[:2]):
        return x[mask.to(torch.bool)]
    return x.reshape(-1, x.shape[-1])


def _forward_order(model: nn.Module, names: list[str], batch: Any) -> tuple[list[str], dict[str, int], dict[str, Any]]:
    """Planned units in the order the model first calls them on ``batch``, calls per unit, and the
    input object each unit got first (units given the very same tensor share their Hessian)."""
    modules = dict(model.named_modules())
    order: list[str] = []
    calls = dict.fromkeys(names, 0)
    first: dict[str, Any] = {}

    def hook(name: str):
        def record(_module, inputs):
            calls[name] += 1
            if name not in order:
                order.append(name)
                first[name] = inputs[0] if inputs else None
        return record

    with ModelHooks(model, train=None) as hooks:
        for n in names:
            hooks.pre(modules[n], hook(n))
        args, kwargs = batch_inputs(batch)
        model(*args, **kwargs)
    return order + [n for n in names if n not in order], calls, first


def _calibrate(model: nn.Module, members: list[nn.Module], feeds: list[tuple[Callable[[], Any], Tensor | None]],
               stop: bool) -> list[HessianAccumulator]:
    """Input Hessians (one per conv group) of ``members``, which share one weight, over ``feeds``
    (forwards to run, each with its token mask)."""
    first = members[0]
    kind = quantizable_kind(first)
    fan_in = weight_matrix(first.weight, kind).shape[1]
    accs = [HessianAccumulator(fan_in) for _ in range(getattr(first, "groups", 1) if kind == "conv2d" else 1)]
    current: dict[str, Any] = {"mask": None}

    def record(module, inputs):
        x = inputs[0].detach()
        if kind == "conv2d":
            _conv_rows(module, x if x.dim() == 4 else x.unsqueeze(0), accs)
        else:
            accs[0].add(_linear_rows(x, current["mask"]))
        if stop:
            raise _Stop

    with ModelHooks(model, train=None) as hooks:
        for m in members:
            hooks.pre(m, record)
        for run, mask in feeds:
            current["mask"] = mask
            try:
                run()
            except _Stop:
                pass
    return accs


def _model_feeds(model: nn.Module, batches: list[Any]) -> list[tuple[Callable[[], Any], Tensor | None]]:
    out = []
    for batch in batches:
        args, kwargs = batch_inputs(batch)
        out.append(((lambda a=args, k=kwargs: model(*a, **k)), token_mask(batch)))
    return out


def _quantize_unit(module: nn.Module, hessians: list[Tensor], spec: int | Tensor, plan: BitPlan) -> GPTQResult:
    """GPTQ of one unit's weight (row blocks per conv group), written back into the module."""
    kind = quantizable_kind(module)
    weight = module.weight
    mat = weight_matrix(weight.detach(), kind)
    rows = mat.shape[0] // len(hessians)
    parts = []
    for g, h in enumerate(hessians):
        sl = slice(g * rows, (g + 1) * rows)
        parts.append(gptq_quantize(mat[sl], h, spec if isinstance(spec, int) else spec[sl], plan.quantizer))
    result = parts[0] if len(parts) == 1 else _stack(parts)
    weight.copy_(matrix_to_weight(result.weight.to(weight.dtype), weight.shape, kind))
    return result


def _stack(parts: list[GPTQResult]) -> GPTQResult:
    """One result from the results of row blocks (the groups of a grouped convolution)."""
    qws = [p.qweight for p in parts]
    qweight = None
    if all(q is not None for q in qws):
        qweight = QuantizedWeight(codes=torch.cat([q.codes for q in qws]), scale=torch.cat([q.scale for q in qws]),
                                  zero=torch.cat([q.zero for q in qws]), bits=max(q.bits for q in qws),
                                  config=qws[0].config)
    bits = [p.group_bits for p in parts]
    return GPTQResult(weight=torch.cat([p.weight for p in parts]), qweight=qweight,
                      error=sum(p.error for p in parts), group_bits=None if bits[0] is None else torch.cat(bits))


def _plan_specs(model: nn.Module, plan: BitPlan) -> dict[str, int | Tensor]:
    modules = dict(model.named_modules())
    specs: dict[str, Any] = {}
    for name, value in plan.bits.items():
        if isinstance(value, tuple):
            out = weight_matrix(modules[name].weight, quantizable_kind(modules[name])).shape[0]
            value = torch.from_numpy(plan.group_widths(name, int(out)))
        specs[name] = value
    return _check_plan(model, specs, plan.quantizer)


@torch.no_grad()
def run_gptq(model: nn.Module, plan: BitPlan, batches: Iterable[Any] | Any, *,
             inplace: bool = False, mode: str = "auto") -> tuple[nn.Module, dict[str, GPTQResult]]:
    """A copy of ``model`` (the model itself if ``inplace``) with every unit under 16 bits quantized
    by sequential GPTQ, and each quantized unit's :class:`~mpsearch.kernels.gptq.GPTQResult`.

    ``batches``: an iterable of calibration batches (input tensors, ``(inputs, labels)`` pairs,
    tokenizer mappings) or an object with ``.batches`` such as a ``Calibration``. ``plan`` must
    have ``quantizer.method == "gptq"``. Units sharing one weight are quantized once, with the
    inputs of all of them. Activation quantization and bias corrections of the plan are not
    left on the returned model (``fake_quantize_model`` adds them). ``mode``: ``"block"`` runs a
    decoder one block at a time (:mod:`mpsearch.deploy.gptq_blocks`; same result, linear instead
    of quadratic in depth), ``"whole"`` the whole model for every unit, ``"auto"`` blocks when the
    model has a chain of them.
    """
    if plan.quantizer.method != "gptq":
        raise ConfigError(f"Sequential GPTQ needs a plan whose quantizer has method='gptq', but got "
                          f"method={plan.quantizer.method!r}. Build the plan with QuantizerConfig("
                          "method='gptq', ...) or use fake_quantize_model for round to nearest.")
    if mode not in ("auto", "block", "whole"):
        raise ConfigError(f"`mode` must be 'auto', 'block' or 'whole', but got mode={mode!r}. Pass 'auto'.")
    check_plan_for_model(plan, model)
    specs = _plan_specs(model, plan)
    batches = list(getattr(batches, "batches", batches))
    if not batches:
        raise DataError("GPTQ needs at least one calibration batch, but got none. Pass the "
                        "calibration batches (e.g. Calibration.classification(x, y).batches).")
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    owners: dict[int, list[str]] = {}
    for name, spec in specs.items():
        if not (isinstance(spec, int) and spec == FLOAT_BITS):
            owners.setdefault(id(modules[name].weight), []).append(name)
    modes = [(m, m.training) for m in target.modules()]
    target.eval()
    handles = []
    if plan.activation_bits:
        from mpsearch.kernels.activations import attach_activation_quant

        handles = attach_activation_quant(target, plan.activation_bits, plan.activation_ranges)
    results: dict[str, GPTQResult] = {}

    def quantize_step(step: tuple[list[list[str]], bool], feeds: list) -> None:
        groups, stop = step
        accs = _calibrate(target, [modules[n] for n in groups[0]], feeds, stop)
        if accs[0].count == 0:
            raise DataError(f"GPTQ needs inputs for every quantized unit, but {groups[0][0]!r} received none "
                            "from the calibration batches. Pass batches that reach it, or plan it at 16 bits.")
        hessians = [acc.hessian() for acc in accs]
        for group in groups:
            results.update(dict.fromkeys(group, _quantize_unit(modules[group[0]], hessians, specs[group[0]], plan)))

    try:
        names = [n for group in owners.values() for n in group]
        order, calls, first = _forward_order(target, names, batches[0])
        steps = calibration_steps(order, owners, modules, calls, first)
        del first
        chain = None if mode == "whole" or not steps else block_chain(target, names, batches[0])
        split = split_by_block(steps, chain, modules)
        if mode == "block" and split is None:
            raise ConfigError("mode='block' needs the planned units in a chain of blocks (an nn.ModuleList whose "
                              "blocks run in order, each on the previous one's output), but this model has none. "
                              "Pass mode='auto' or 'whole'.")
        before, per_block, after = split if split is not None else (steps, [], [])
        for step in before:
            quantize_step(step, _model_feeds(target, batches))
        if any(per_block):
            blocks = chain or []
            last = max(i for i, s in enumerate(per_block) if s)
            inputs = capture_inputs(target, blocks[0], batches)
            for block, block_steps in zip(blocks[:last + 1], per_block):
                for step in block_steps:
                    quantize_step(step, block_feeds(block, inputs))
                inputs = replay(block, inputs) if block is not blocks[last] else []
        for step in after:
            quantize_step(step, _model_feeds(target, batches))
    finally:
        for h in handles:
            h.remove()
        for m, mode_ in modes:
            m.training = mode_
    return target, results


def gptq_quantize_model(model: nn.Module, plan: BitPlan, batches: Iterable[Any] | Any, *,
                        inplace: bool = False) -> nn.Module:
    """``model`` with its planned weights replaced by sequential GPTQ's (see :func:`run_gptq`).

    >>> net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> from mpsearch.core.config import QuantizerConfig
    >>> plan = BitPlan(bits={"0": 3, "2": 16}, quantizer=QuantizerConfig(method="gptq"))
    >>> q = gptq_quantize_model(net, plan, [torch.randn(32, 8)])
    >>> torch.equal(q[2].weight, net[2].weight), len(torch.unique(q[0].weight[0])) <= 8
    (True, True)
    """
    return run_gptq(model, plan, batches, inplace=inplace)[0]


def gptq_quantized_weights(model: nn.Module, plan: BitPlan, batches: Iterable[Any] | Any) -> dict[str, QuantizedWeight]:
    """The integer form (codes, scales, zero-points) GPTQ gives each unit under 16 bits, by unit name,
    for the packed layers; ``model`` is left unchanged. Units with a group at 16 bits have no codes
    and are left out."""
    _, results = run_gptq(model, plan, batches)
    return {n: r.qweight for n, r in results.items() if r.qweight is not None}


__all__ = ["gptq_quantize_model", "gptq_quantized_weights", "run_gptq"]
