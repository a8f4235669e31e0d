"""Input-statistics scoring of a decoder, one block at a time (the way GPTQ-family tools walk a model).

Estimators that need only each unit's calibration inputs X (rows = tokens) can be computed
without running the whole model with every unit hooked at once. The inputs of the first
decoder block are captured once (one forward stopped at that block); then each block runs on
its own captured inputs, its units' ``X^T X`` are accumulated, the block's outputs become the
next block's inputs, and the block's statistics are reduced to scores before moving on. Peak
memory is the model, one block's statistics and the calibration activations (N x T x hidden,
twice), instead of every unit's statistics plus a whole-model forward.

The block outputs are the same tensors the whole model computes (same modules, same inputs, same
keyword arguments: attention mask and rotary position embeddings, the cache switched off), so
block-wise scores equal whole-model scores; ``tests/sensitivity/test_blockwise.py`` checks it.
Units outside the decoder blocks (e.g. an untied ``lm_head``) get their inputs from one
whole-model pass with only them hooked.

Which estimators allow it is a class attribute, ``modes``: ``("whole", "block")`` for the two
here, which read only inputs; gradient estimators (Fisher, first order, Hutchinson) need the
loss's gradient through every later block and have ``("whole",)``
(:func:`scoring_modes`).

* :class:`InputDiagonal` (``xtx``): per weight the mean squared input of its column,
  ``[X^T X]_jj / rows``: the diagonal of a linear layer's output-error Hessian, so that
  ``sum_ij s_ij dW_ij^2`` estimates the squared output error ``||dW X||^2 / rows``.
* :class:`BlockOBS` (``obs_block``): SliM-LLM's OBS salience ``w^2 / [H^-1]_jj^2``, as
  :class:`~mpsearch.sensitivity.salience_obs.OBSSalience` computes it, from full ``H = X^T X``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from mpsearch.core.errors import ConfigError
from mpsearch.kernels.quantize import weight_matrix
from mpsearch.sensitivity._tensors import reduce_matrix, scores_and_groups
from mpsearch.sensitivity.base import ESTIMATORS, Estimator, Sensitivity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.sensitivity.salience_obs import input_hessians, layer_input_rows, obs_salience
from mpsearch.space.discover import SearchSpace, unit_modules
from mpsearch.space.hooks import ModelHooks

__all__ = ["MODES", "BlockOBS", "InputDiagonal", "block_input_hessians", "capture_block_inputs", "decoder_blocks", "replay_block",
           "scoring_modes"]

MODES = ("whole", "block")
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")


def scoring_modes(estimator: Estimator) -> tuple[str, ...]:
    """The scoring modes an estimator supports: its ``modes`` attribute, else ``("whole",)``."""
    return tuple(getattr(estimator, "modes", ("whole",)))


def decoder_blocks(model: nn.Module, space: SearchSpace | Iterable[str]) -> list[nn.Module]:
    """The decoder blocks: the children of the ``nn.ModuleList`` that holds the most searched units (or named modules)."""
    names = set(space.names if isinstance(space, SearchSpace) else space)
    best: tuple[int, list[nn.Module]] = (0, [])
    for prefix, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            inside = sum(1 for n in names if n.startswith(f"{prefix}."))
            if inside > best[0]:
                best = (inside, list(module))
    if not best[1]:
        raise ConfigError("block-wise scoring needs a model whose searched units sit in a list of blocks (an nn.ModuleList, "
                          "like a decoder's layers), but none holds any. Use mode='whole'.")
    return best[1]


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the first block needs to run."""


def capture_block_inputs(model: nn.Module, first: nn.Module, data: Calibration) -> list[tuple[tuple, dict]]:
    """(args, kwargs) of the first block for every calibration batch, the cache switched off."""
    captured: list[tuple[tuple, dict]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = {k: (None if k in _CACHE_KWARGS else v) for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        captured.append((tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), kwargs))
        raise _StopForward

    with ModelHooks(model) as hooks, torch.no_grad():
        hooks.pre(first, hook, with_kwargs=True)
        for batch in data.batches:
            try:
                data.loss_fn(model, batch)
            except _StopForward:
                continue
            raise ConfigError("block-wise scoring must reach the first decoder block with every batch, but a batch ran "
                              "through the model without it. Use mode='whole'.")
    return captured


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def replay_block(block: nn.Module, inputs: list[tuple[tuple, dict]]) -> list[tuple[tuple, dict]]:
    """Run one block on each captured batch; its outputs replace the hidden states for the next block."""
    nxt = []
    for args, kwargs in inputs:
        out = _hidden(block(*args, **kwargs)).detach()
        if args:
            nxt.append(((out, *args[1:]), kwargs))
        else:
            nxt.append(((), {**kwargs, "hidden_states": out}))
    return nxt


def block_input_hessians(
    model: nn.Module, data: Calibration, space: SearchSpace, *, on_block: Callable[[list[int], list[torch.Tensor], list[int]], None],
    diagonal: bool = False, progress: bool = False,
) -> None:
    """Accumulate ``X^T X`` (or its diagonal) for the units of one block at a time and hand them to ``on_block``.

    ``on_block(unit_indices, hessians, rows)`` is called once per block (and once for the units
    outside every block) with the statistics of those units only, which may then be freed.
    Statistics are float64 sums over all calibration rows, equal to
    :func:`~mpsearch.sensitivity.salience_obs.input_hessians` (its diagonal with ``diagonal``).
    """
    blocks = decoder_blocks(model, space)
    modules = unit_modules(model, space)
    owner = {id(m): b for b, block in enumerate(blocks) for m in block.modules()}
    per_block: list[list[int]] = [[] for _ in blocks]
    outside: list[int] = []
    for i, m in enumerate(modules):
        (per_block[owner[id(m)]] if id(m) in owner else outside).append(i)

    def collect(indices: Sequence[int], run: Callable[[], None]) -> None:
        stats = [torch.zeros(space.units[i].fan_in, *(() if diagonal else (space.units[i].fan_in,)), dtype=torch.float64,
                             device=modules[i].weight.device) for i in indices]  # where the block runs
        rows = [0] * len(indices)

        def hook_for(k: int, kind: str):
            def hook(module: nn.Module, inputs: tuple) -> None:
                x = layer_input_rows(module, kind, inputs[0].detach()).double()
                stats[k].add_(x.square().sum(dim=0)) if diagonal else stats[k].addmm_(x.t(), x)
                rows[k] += x.shape[0]
            return hook

        with ModelHooks(model) as hooks, torch.no_grad():
            for k, i in enumerate(indices):
                hooks.pre(modules[i], hook_for(k, space.units[i].kind))
            run()
        on_block(list(indices), stats, rows)

    state = {"inputs": capture_block_inputs(model, blocks[0], data)}
    for b, block in enumerate(tqdm(blocks, desc="blocks", disable=not progress, leave=False)):
        def step(block: nn.Module = block) -> None:
            state["inputs"] = replay_block(block, state["inputs"])
        if per_block[b]:
            collect(per_block[b], step)
        else:
            with torch.no_grad():
                step()
    state.clear()
    if outside:
        collect(outside, lambda: [data.loss_fn(model, batch) for batch in data.batches])


class _InputEstimator(Estimator):
    """Shared plumbing of the input-statistics estimators: mode, statistics, reduction to units and groups."""

    supports_groups = True
    embeddings = False  # statistics of input activations
    modes: ClassVar[tuple[str, ...]] = MODES
    diagonal = True
    quick_options: ClassVar[Mapping[str, Any]] = {"mode": "whole"}  # the contract's network has no decoder blocks

    def __init__(self, *, mode: str = "block", damp: float = 0.01, seed: int = 0, progress: bool = True) -> None:
        """``mode``: "block" (one decoder block at a time) or "whole"; ``damp``: BlockOBS's Hessian damping.
        ``seed`` is taken as every estimator takes it; the statistics are exact sums, so it changes nothing."""
        if mode not in MODES:
            raise ConfigError(f"`mode` must be one of {MODES}, but got mode={mode!r}. Pass 'block' for one decoder block at a time.")
        if not 0 <= damp < 10:
            raise ConfigError(f"`damp` must be within [0, 10), but got damp={damp!r}. Pass e.g. 0.01.")
        self.mode, self.damp, self.progress = mode, float(damp), progress

    def settings(self) -> dict:
        return {"mode": self.mode, "damp": self.damp}

    def per_weight(self, weight2d: torch.Tensor, stat: torch.Tensor, rows: int) -> torch.Tensor:
        raise NotImplementedError

    def estimate(self, model: nn.Module, data: Calibration, space: SearchSpace) -> Sensitivity:
        start = time.perf_counter()
        modules = unit_modules(model, space)
        reduced: list[tuple[float, Any] | None] = [None] * len(space.units)
        seen = [0] * len(space.units)

        def reduce(indices: list[int], stats: list[torch.Tensor], rows: list[int]) -> None:
            # per-weight values are reduced at once: the whole model's never sit in memory together
            for i, stat, n in zip(indices, stats, rows):
                unit = space.units[i]
                w2d = weight_matrix(modules[i].weight.detach(), unit.kind)
                v = self.per_weight(w2d, stat, n) if n else torch.zeros(w2d.shape, dtype=torch.float64, device=w2d.device)
                reduced[i] = reduce_matrix(v, space.quantizer)
                seen[i] = n

        if self.mode == "block":
            block_input_hessians(model, data, space, on_block=reduce, diagonal=self.diagonal, progress=self.progress)
        else:
            hessians, rows = input_hessians(model, data, space, self.progress)
            stats = [h.diagonal().clone() for h in hessians] if self.diagonal else hessians
            reduce(list(range(len(space.units))), stats, rows)
        scores, groups = scores_and_groups(space, reduced)
        details = {"mode": self.mode, "rows": dict(zip(space.names, seen)), "calibration_samples": data.n_samples,
                   "unreached": [u.name for u, n in zip(space.units, seen) if n == 0]}
        return Sensitivity(method=self.name, scores=scores, settings=self.settings(), seconds=time.perf_counter() - start,
                           details=details, group_scores=groups)


@ESTIMATORS.register("xtx")
class InputDiagonal(_InputEstimator):
    """Mean squared input of each weight's column, ``[X^T X]_jj / rows``: the output-error Hessian diagonal.

    Example:
        >>> est = InputDiagonal(mode="block", progress=False)
        >>> # sens = est.estimate(model, Calibration.causal_lm(windows), space)
    """

    name = "xtx"

    def per_weight(self, weight2d: torch.Tensor, stat: torch.Tensor, rows: int) -> torch.Tensor:
        return (stat / rows)[None, :].expand(weight2d.shape).clone()


@ESTIMATORS.register("obs_block")
class BlockOBS(_InputEstimator):
    """SliM-LLM's OBS salience ``w^2 / [H^-1]_jj^2`` (full ``H = X^T X``, damped), whole-model or block-wise.

    Equal to :class:`~mpsearch.sensitivity.salience_obs.OBSSalience` with the same ``damp``.
    """

    name = "obs_block"
    diagonal = False

    def per_weight(self, weight2d: torch.Tensor, stat: torch.Tensor, rows: int) -> torch.Tensor:
        return obs_salience(weight2d, stat, self.damp)
