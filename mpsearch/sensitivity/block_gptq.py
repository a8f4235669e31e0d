"""Sequential GPTQ of a decoder, one block at a time, on the block inputs captured once.

:func:`mpsearch.deploy.gptq.run_gptq` runs the calibration batches through the model from the
start for every unit: on a 30-block decoder with 210 units that is about a hundred whole-model
forwards. Here the first block's inputs are captured once (as for block-wise scoring,
:mod:`mpsearch.sensitivity.blockwise`) and each block runs on its own captured inputs: its units
are quantized in call order, a *stage* at a time (the units that read the same input tensor,
such as a layer's query, key and value projections, form one stage: quantizing one cannot change
the others' inputs), each stage calibrated on the outputs of the stages quantized before it;
then the quantized block's outputs become the next block's inputs. Every unit thus sees the
inputs :func:`~mpsearch.deploy.gptq.run_gptq` gives it, and the weights are the same
(``tests/sensitivity/test_block_gptq.py`` compares them), for a few block passes per block.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mpsearch.core.config import FLOAT_BITS
from mpsearch.core.errors import ConfigError
from mpsearch.core.plan import BitPlan
from mpsearch.kernels.fake import quantizable_kind
from mpsearch.kernels.gptq import HessianAccumulator, gptq_quantize
from mpsearch.kernels.quantize import matrix_to_weight, weight_matrix
from mpsearch.sensitivity.blockwise import capture_block_inputs, decoder_blocks, replay_block
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.sensitivity.salience_obs import layer_input_rows
from mpsearch.space.hooks import ModelHooks

__all__ = ["gptq_blockwise"]


class _StageDone(Exception):
    """Raised by a hook once every unit of the stage has been called in this batch."""


def _spec(plan: BitPlan, name: str, module: nn.Module) -> int | torch.Tensor:
    value = plan.bits[name]
    if isinstance(value, tuple):
        out = weight_matrix(module.weight, quantizable_kind(module)).shape[0]
        return torch.from_numpy(plan.group_widths(name, int(out)))
    return int(value)


def _calibrate_stage(block: nn.Module, inputs: list[tuple[tuple, dict]], remaining: list[tuple[str, nn.Module]]
                     ) -> dict[str, HessianAccumulator]:
    """Hessians of the next stage: the first remaining unit called and those reading its input tensor."""
    stage: dict[str, HessianAccumulator] = {}
    state: dict[str, Any] = {"first": True, "input": None, "seen": set()}

    def hook_for(name: str, module: nn.Module):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            if state["first"] and (state["input"] is None or x is state["input"]):
                state["input"] = x  # held, so the identity test cannot meet a reused buffer
                stage.setdefault(name, HessianAccumulator(weight_matrix(module.weight, quantizable_kind(module)).shape[1]))
            if name in stage and name not in state["seen"]:
                stage[name].add(layer_input_rows(module, quantizable_kind(module), x.detach()))
                state["seen"].add(name)
            elif name not in stage:  # a later stage's unit: this stage's inputs are all seen
                raise _StageDone
        return hook

    with ModelHooks(block, train=None) as hooks, torch.no_grad():
        for name, module in remaining:
            hooks.pre(module, hook_for(name, module))
        for args, kwargs in inputs:
            state["seen"] = set()
            try:
                block(*args, **kwargs)
            except _StageDone:
                pass
            state["first"], state["input"] = False, None
    return stage


@torch.no_grad()
def gptq_blockwise(model: nn.Module, plan: BitPlan, data: Calibration, *, progress: bool = False) -> nn.Module:
    """A copy of ``model`` with every planned unit under 16 bits quantized by sequential GPTQ, block by block.

    Every such unit must sit inside the decoder blocks (an ``nn.ModuleList``); a plan quantizing a
    unit outside them (e.g. an untied ``lm_head``), or setting activation bits, is refused: use
    :func:`mpsearch.deploy.gptq.run_gptq`. Bias corrections of the plan are not added.
    """
    if plan.quantizer.method != "gptq":
        raise ConfigError(f"block-wise GPTQ needs a plan whose quantizer has method='gptq', but got "
                          f"method={plan.quantizer.method!r}. Build the plan with QuantizerConfig(method='gptq', ...).")
    if plan.activation_bits:
        raise ConfigError("block-wise GPTQ quantizes weights only, but the plan sets activation bits. "
                          "Use mpsearch.deploy.gptq.run_gptq for it.")
    target = copy.deepcopy(model).eval()
    modules = dict(target.named_modules())
    todo = [n for n, v in plan.bits.items() if not (isinstance(v, int) and v == FLOAT_BITS)]
    blocks = decoder_blocks(target, todo)
    owner = {id(m): b for b, block in enumerate(blocks) for m in block.modules()}
    outside = [n for n in todo if id(modules[n]) not in owner]
    if outside:
        raise ConfigError(f"block-wise GPTQ quantizes units inside the decoder blocks only, but the plan quantizes "
                          f"{outside[:3]}. Plan them at 16 bits, or use mpsearch.deploy.gptq.run_gptq.")
    inputs = capture_block_inputs(target, blocks[0], data)
    for b, block in enumerate(tqdm(blocks, desc="gptq blocks", disable=not progress, leave=False)):
        remaining = [(n, modules[n]) for n in todo if owner[id(modules[n])] == b]
        order = {id(m): i for i, m in enumerate(block.modules())}
        remaining.sort(key=lambda item: order[id(item[1])])
        while remaining:
            stage = _calibrate_stage(block, inputs, remaining)
            if not stage:
                raise ConfigError(f"block-wise GPTQ needs inputs for every planned unit, but {remaining[0][0]!r} "
                                  "received none from the calibration batches. Plan it at 16 bits.")
            for name, acc in stage.items():
                module = modules[name]
                kind = quantizable_kind(module)
                result = gptq_quantize(weight_matrix(module.weight.detach(), kind), acc.hessian(),
                                       _spec(plan, name, module), plan.quantizer)
                module.weight.copy_(matrix_to_weight(result.weight.to(module.weight.dtype), module.weight.shape, kind))
            remaining = [(n, m) for n, m in remaining if n not in stage]
        inputs = replay_block(block, inputs)
    return target
