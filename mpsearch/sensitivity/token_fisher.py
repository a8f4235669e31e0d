"""Token-level Fisher diagonal: one squared gradient share per token, for transformers and causal LMs.

For a linear unit ``y = W x`` evaluated at tokens t, the weight gradient of the summed loss is
``sum_t g_t x_t^T`` with ``g_t = dl/dy_t``. The token-level Fisher keeps each token's share and
sums its square, ``sum_t (g_t^2)(x_t^2)^T``, dropping the cross-token terms of the per-window
empirical Fisher. It is on the loss scale (comparable across units, so a plan can be solved
globally), has one term per token instead of one per window (far less noise from the same
calibration windows), and costs one backward pass per batch.

For an embedding table (tokens in, rows out), token t's share falls on the row of its id only, so
row v sums the squared output gradients of the tokens whose id is v.

:func:`token_fisher_values` gives the per-weight values (the group-wise recipe prices each weight
with them, :mod:`mpsearch.pricing.recipes`); :class:`TokenFisher` (``token_fisher``) reduces them
to unit and group scores like every estimator.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mpsearch.core.errors import ConfigError
from mpsearch.sensitivity._tensors import reduce_matrix, scores_and_groups, weights_requiring_grad
from mpsearch.sensitivity.base import ESTIMATORS, Estimator, Sensitivity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.sensitivity.salience_obs import layer_input_rows
from mpsearch.space.discover import SearchSpace, unit_modules
from mpsearch.space.hooks import ModelHooks

__all__ = ["SKIP_FIRST", "TokenFisher", "predicted_tokens", "token_fisher_values"]

_KINDS = ("linear", "conv1d")

#: Positions dropped at the start of every window by default. The first token of a window is an
#: attention sink in most decoders, with activations orders of magnitude above the others: on
#: SmolLM2-135M it held 31 % of all token-Fisher mass (98 % of one down projection's) over 32
#: windows, and dropping it moved the G=128 3-bit RTN plan from perplexity 125.5 / 120.4 to
#: 87.9 / 90.0 on two calibration samples (uniform 3-bit 209.9, reference 38.1; docs/studies.md).
SKIP_FIRST = 1


def predicted_tokens(batch: Any, size: int) -> int:
    """Tokens whose loss a causal-LM batch averages: B * (T - 1) for int (B, T) windows, else the batch size."""
    if isinstance(batch, torch.Tensor) and batch.dim() == 2 and not batch.is_floating_point():
        return int(batch.shape[0] * (batch.shape[1] - 1))
    return int(size)


def _check_kinds(space: SearchSpace) -> None:
    bad = [(u.name, u.kind) for u in space.units if u.kind not in _KINDS]
    if bad:
        name, kind = bad[0]
        raise ConfigError(f"the token Fisher scores units that act on tokens (linear, conv1d, embedding), but {name!r} is a "
                          f"{kind} ({len(bad)} such unit(s)). Use --estimator fisher (estimator='fisher') for convolutional "
                          "networks.")


def _check_skip(skip_first: Any) -> None:
    if isinstance(skip_first, bool) or not isinstance(skip_first, int) or skip_first < 0:
        raise ConfigError(f"`skip_first` must be a number of positions >= 0, but got skip_first={skip_first!r}. Pass e.g. 1.")


def _readers(model: nn.Module, space: SearchSpace) -> list[tuple[int, nn.Module]]:
    """(unit index, module) for every module that reads a unit's weight: the unit's own and its tied ones."""
    named = dict(model.named_modules())
    return [(i, m) for i, (u, own) in enumerate(zip(space.units, unit_modules(model, space)))
            for m in (own, *(named[t] for t in u.tied if t in named))]


def token_fisher_values(model: nn.Module, data: Calibration, space: SearchSpace, *, skip_first: int = SKIP_FIRST,
                        progress: bool = False) -> list[torch.Tensor]:
    """Per weight, ``mean_t (dl/dy_ti)^2 x_tj^2`` over calibration tokens t: an (out, fan_in) float64 tensor per unit.

    ``l`` is the summed loss of the batch (its mean loss times :func:`predicted_tokens`).
    An embedding table gets ``mean_t [id_t = v] (dl/dy_ti)^2`` in row v; a weight read by several
    modules (a tied embedding and ``lm_head``) sums the shares of every read. Computed as
    ``(g^2)^T (x^2)`` per call. ``skip_first`` drops the shares of the first positions of every
    window (token-shaped (B, T, ...) calls only); their tokens still shape the others' gradients.
    By default the first position is dropped (see :data:`SKIP_FIRST`); 0 keeps every token.
    """
    _check_kinds(space)
    _check_skip(skip_first)
    readers = _readers(model, space)
    sums = [torch.zeros(u.out_features, u.fan_in, dtype=torch.float64) for u in space.units]
    seen: list[tuple[int, nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook_for(i: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen.append((i, module, inputs[0].detach(), output))
        return hook

    tokens = 0
    weights = list({id(m.weight): m.weight for _, m in readers}.values())
    with weights_requiring_grad(model, weights), ModelHooks(model) as hooks:
        for i, m in readers:
            hooks.forward(m, hook_for(i))
        for batch, size in tqdm(list(zip(data.batches, data.sizes)), desc="token fisher", disable=not progress, leave=False):
            seen.clear()
            loss = data.loss_fn(model, batch)
            n = predicted_tokens(batch, size)
            grads = torch.autograd.grad(loss * n, [out for *_, out in seen], allow_unused=True)
            for (i, module, x, _), g in zip(seen, grads):
                if g is None:
                    continue
                g = g.detach()
                if skip_first and g.dim() == 3:  # (B, T, out): drop the first positions of each window
                    g, x = g[:, skip_first:], x[:, skip_first:]
                g2 = g.reshape(-1, g.shape[-1]).float().square_()
                if isinstance(module, nn.Embedding):  # rows (vocab, dim): each token's share lands on its own row
                    sums[i].index_add_(0, x.reshape(-1), g2.double())
                    continue
                x2 = layer_input_rows(module, space.units[i].kind, x).float().square_()
                sums[i].add_(torch.mm(g2.t(), x2).double())
            tokens += n
        seen.clear()
    return [s_.div_(max(tokens, 1)) for s_ in sums]


@ESTIMATORS.register("token_fisher")
class TokenFisher(Estimator):
    """Token-level Fisher diagonal, averaged per unit and per group (the default for causal LMs on the CLI).

    Example:
        >>> est = TokenFisher(progress=False)
        >>> # sens = est.estimate(model, Calibration.causal_lm(windows), space)
    """

    name = "token_fisher"
    supports_groups = True
    contract_skip = ("the token Fisher scores token-level units (linear, conv1d, embedding) and the contract net is "
                     "convolutional; tests/sensitivity/test_token_fisher.py checks it against brute force")

    def __init__(self, *, skip_first: int = SKIP_FIRST, seed: int = 0, progress: bool = True) -> None:
        """``skip_first``: positions dropped at the start of every window (:func:`token_fisher_values`).
        ``seed`` is taken as every estimator takes it; the values are exact sums, so it changes nothing."""
        _check_skip(skip_first)
        self.skip_first, self.seed, self.progress = skip_first, seed, progress

    def settings(self) -> dict:
        return {"skip_first": self.skip_first}

    def estimate(self, model: nn.Module, data: Calibration, space: SearchSpace) -> Sensitivity:
        start = time.perf_counter()
        values = token_fisher_values(model, data, space, skip_first=self.skip_first, progress=self.progress)
        scores, groups = scores_and_groups(space, [reduce_matrix(v, space.quantizer) for v in values])
        return Sensitivity(method=self.name, scores=scores, settings=self.settings(),
                           seconds=time.perf_counter() - start, details={"calibration_samples": data.n_samples},
                           group_scores=groups)
