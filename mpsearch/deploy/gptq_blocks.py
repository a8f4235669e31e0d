"""The order of sequential GPTQ's work: calibration steps, and a decoder run one block at a time.

Steps: units are calibrated in the order the model calls them; consecutive units called once on
the very same input tensor (a layer's q, k and v projections, an MLP's gate and up projections)
share one Hessian, so one forward serves them all.

Calibrating unit after unit through the whole model reruns every earlier layer for each unit:
quadratic in depth. When the units sit in a chain of blocks (an ``nn.ModuleList`` whose block
i+1 takes block i's output, as a decoder's layers do), the inputs of the first block are captured
once, each unit is calibrated by running only its own block on them, and the block's outputs
(computed after its units are quantized) become the next block's inputs. The other arguments
(attention mask, rotary position embeddings) are passed on unchanged, the cache switched off.
The chain is checked on one calibration batch before it is used: every block is called once,
in list order, on its predecessor's output; otherwise the whole model is run for every unit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from mpsearch.core.errors import DataError
from mpsearch.kernels._hooks import ModelHooks
from mpsearch.kernels.fake import quantizable_kind
from mpsearch.kernels.quantize import weight_matrix
from mpsearch.space.forward import batch_inputs, token_mask

__all__ = ["BlockInput", "block_chain", "calibration_steps", "capture_inputs", "feeds", "replay", "split_by_block"]

_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")

BlockInput = tuple[tuple, dict, "Tensor | None"]  # positional and keyword arguments of a block call, token mask


class _Captured(Exception):
    """Raised by the capture hook: nothing after the first block needs to run."""


def _hidden(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _first_arg(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs.get("hidden_states")


def _geometry(module: nn.Module) -> tuple:
    """What, besides the input tensor, decides a unit's input rows (and so its Hessian)."""
    if quantizable_kind(module) == "conv2d":
        return ("conv2d", module.in_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.padding_mode)
    return ("rows", weight_matrix(module.weight, quantizable_kind(module)).shape[1])


def calibration_steps(order: list[str], owners: dict[int, list[str]], modules: dict[str, nn.Module],
           calls: dict[str, int], first: dict[str, Any]) -> list[tuple[list[list[str]], bool]]:
    """Calibration steps in forward order: (weight groups, stop early). A weight group is the units
    sharing one weight; consecutive units called once on the same input tensor (a layer's q, k and
    v projections) form one step and are quantized with one Hessian, as their inputs do not depend
    on each other."""
    steps: list[tuple[list[list[str]], bool]] = []
    done: set[str] = set()
    for name in order:
        if name in done:
            continue
        group = owners[id(modules[name].weight)]
        done.update(group)
        single = len(group) == 1 and calls[name] == 1
        if steps and single and steps[-1][1] and first.get(name) is not None:
            head = steps[-1][0][0][0]
            if first[name] is first.get(head) and _geometry(modules[name]) == _geometry(modules[head]):
                steps[-1][0].append(group)
                continue
        steps.append(([group], single))
    return steps


def split_by_block(steps: list, blocks: list[nn.Module] | None, modules: dict[str, nn.Module]) -> tuple | None:
    """(steps before the blocks, steps per block, steps after), or None when the steps do not run
    block after block (a weight shared across blocks, units outside the blocks between them)."""
    if blocks is None:
        return None
    owner = {id(m): b for b, block in enumerate(blocks) for m in block.modules()}
    where = []
    for groups, _ in steps:
        found = {owner.get(id(modules[n]), -1) for g in groups for n in g}
        if len(found) != 1:
            return None
        where.append(found.pop())
    lo = next((i for i, w in enumerate(where) if w >= 0), len(where))
    hi = len(where) - next((i for i, w in enumerate(reversed(where)) if w >= 0), len(where))
    inner = where[lo:hi]
    if any(w < 0 for w in inner) or inner != sorted(inner):
        return None
    per_block: list[list] = [[] for _ in blocks]
    for step, w in zip(steps[lo:hi], inner):
        per_block[w].append(step)
    return steps[:lo], per_block, steps[hi:]


def block_chain(model: nn.Module, names: list[str], batch: Any) -> list[nn.Module] | None:
    """The blocks of the ``nn.ModuleList`` holding the most of ``names``, if they form a chain on ``batch``."""
    best: tuple[int, list[nn.Module]] = (0, [])
    for prefix, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            inside = sum(1 for n in names if n.startswith(f"{prefix}."))
            if inside > best[0]:
                best = (inside, list(module))
    blocks = best[1]
    if not blocks:
        return None
    seen: list[tuple[int, Any, Any]] = []

    def watch(index: int):
        def hook(_module, args, kwargs, out):
            seen.append((index, _first_arg(args, kwargs), _hidden(out)))
        return hook

    with ModelHooks(model, train=None) as hooks, torch.no_grad():
        for i, block in enumerate(blocks):
            hooks.forward(block, watch(i), with_kwargs=True)
        args, kwargs = batch_inputs(batch)
        model(*args, **kwargs)
    chained = [i for i, _, _ in seen] == list(range(len(blocks))) and all(
        seen[i][1] is seen[i - 1][2] for i in range(1, len(seen)))
    return blocks if chained else None


def capture_inputs(model: nn.Module, first: nn.Module, batches: list[Any]) -> list[BlockInput]:
    """The arguments of ``first`` (the first block) for every batch, with the batch's token mask."""
    captured: list[BlockInput] = []
    current: dict[str, Any] = {"mask": None}

    def hook(_module, args, kwargs):
        kwargs = {k: (None if k in _CACHE_KWARGS else v) for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        captured.append((tuple(a.detach() if isinstance(a, Tensor) else a for a in args), kwargs, current["mask"]))
        raise _Captured

    with ModelHooks(model, train=None) as hooks, torch.no_grad():
        hooks.pre(first, hook, with_kwargs=True)
        for batch in batches:
            args, kwargs = batch_inputs(batch)
            current["mask"] = token_mask(batch)
            try:
                model(*args, **kwargs)
            except _Captured:
                continue
            raise DataError("GPTQ block by block needs every calibration batch to reach the first block, but one did "
                            "not. Pass batches of the model's usual inputs, or mode='whole'.")
    return captured


def feeds(block: nn.Module, inputs: list[BlockInput]) -> list[tuple[Callable[[], Any], Tensor | None]]:
    """One forward of ``block`` per captured input, with its token mask."""
    return [((lambda a=args, k=kwargs: block(*a, **k)), mask) for args, kwargs, mask in inputs]


@torch.no_grad()
def replay(block: nn.Module, inputs: list[BlockInput]) -> list[BlockInput]:
    """Run ``block`` on each captured input; its outputs are the next block's inputs."""
    out = []
    for args, kwargs, mask in inputs:
        hidden = _hidden(block(*args, **kwargs)).detach()
        out.append(((hidden, *args[1:]), kwargs, mask) if args else ((), {**kwargs, "hidden_states": hidden}, mask))
    return out
