"""Relevance through a BERT-style transformer (MiniLM), where softmax, LayerNorm and GELU have no LRP rule.

The approximation follows Ali et al., "XAI for Transformers: Better
Explanations through Conservative Propagation" (ICML 2022): the forward pass
is left numerically unchanged, but three operations are made locally linear
by holding a factor constant (detached from the gradient):

* attention: the softmax probabilities are constants, so
  ``out = A V`` is a linear map of the values (their "AH rule");
* LayerNorm: ``(x - mean) / std`` with ``std`` constant, a linear map of x
  (their "LN rule"; the centring stays in the graph);
* GELU: ``gelu(x) = x * (gelu(x) / x)`` with the ratio constant, a
  gate like a ReLU's (ratio 1/2 at x = 0).

The network is then a product of linear maps and constant gates, where
gradient x input equals LRP-0 (epsilon -> 0): the relevance of a unit's
output neuron is ``z * dF/dz``, and of a weight ``w * dF/dw``. Biases absorb
relevance, as in LRP. The explained output is ``F = <e, sg(e)>``, with e the
mean-pooled sentence embedding and sg the stop-gradient: the embedding's
squared norm, so each dimension starts with relevance ``e_k^2 >= 0``.

Query and key projections only feed the softmax, whose output is held
constant, so they receive no relevance under this rule; each gets the
relevance score of the value projection of its own attention module (they
shape the same attention output). The pooler (unused by mean pooling) gets 0.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mpsearch.sensitivity._tensors import params_requiring_grad
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.forward import batch_inputs, pooled, token_mask
from mpsearch.space.hooks import ModelHooks

ATTN_NAME = "mpsearch_constant_attention"


def _constant_attention(module: nn.Module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1).detach()
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def _register_attention() -> None:
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.modeling_utils import AttentionInterface

    if ATTN_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_NAME, _constant_attention)
    if ATTN_NAME not in AttentionMaskInterface._global_mapping:  # additive float masks, as for eager
        AttentionMaskInterface.register(ATTN_NAME, eager_mask)


@contextmanager
def _constant_attention_in(config: Any) -> Iterator[None]:
    """The model's attention implementation switched to the held-softmax one for the block."""
    saved = config._attn_implementation
    config._attn_implementation = ATTN_NAME
    try:
        yield
    finally:
        config._attn_implementation = saved


def _layernorm_hook(module: nn.LayerNorm, args, out):
    x = args[0]
    mean = x.mean(dim=-1, keepdim=True)
    std = (x.var(dim=-1, unbiased=False, keepdim=True) + module.eps).sqrt().detach()
    y = (x - mean) / std
    if module.weight is not None:
        y = y * module.weight
    if module.bias is not None:
        y = y + module.bias
    return y


def _gelu_hook(module: nn.Module, args, out):
    x = args[0]
    safe = torch.where(x.abs() > 1e-12, x, torch.ones_like(x))
    ratio = torch.where(x.abs() > 1e-12, out / safe, torch.full_like(x, 0.5)).detach()
    return x * ratio


def _is_gelu(module: nn.Module) -> bool:
    return "GELU" in type(module).__name__.upper()


def transformer_relevance(
    model: nn.Module, data: Calibration, names: list[str], modules: list[nn.Module], *,
    weights: bool, progress: bool, time_limit: float | None,
) -> tuple[dict[str, float], dict[str, torch.Tensor], dict[str, Any]]:
    """Summed |relevance| of each unit's outputs (and |relevance| of its weights) over the data."""
    start = time.perf_counter()
    _register_attention()
    outputs: dict[str, torch.Tensor] = {}
    sums = {n: 0.0 for n in names}
    wsums: dict[str, torch.Tensor] = {}
    used = 0
    with (ModelHooks(model, train=None) as hooks, params_requiring_grad([m.weight for m in modules]),
          _constant_attention_in(model.config)):
        for name, module in zip(names, modules):
            hooks.forward(module, lambda m, a, o, n=name: outputs.__setitem__(n, o))
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                hooks.forward(module, _layernorm_hook)
            elif _is_gelu(module):
                hooks.forward(module, _gelu_hook)
        for batch in tqdm(data.batches, desc="lrp", disable=not progress, leave=False):
            if used and time_limit is not None and time.perf_counter() - start > time_limit:
                break
            outputs.clear()
            args, kwargs = batch_inputs(batch)
            with torch.enable_grad():
                hidden = model(*args, **kwargs).last_hidden_state
                e = pooled(hidden, token_mask(batch))
                target = (e * e.detach()).sum()
                live = [n for n in names if outputs.get(n) is not None and outputs[n].requires_grad]
                tensors = [outputs[n] for n in live]
                params = [modules[names.index(n)].weight for n in live] if weights else []
                grads = torch.autograd.grad(target, tensors + params, allow_unused=True)
            for i, n in enumerate(live):
                g = grads[i]
                if g is not None:
                    sums[n] += float((tensors[i].detach() * g).abs().sum(dtype=torch.float64))
                if weights:
                    gw = grads[len(live) + i]
                    r = torch.zeros_like(params[i]) if gw is None else (params[i].detach() * gw).abs()
                    wsums[n] = wsums[n] + r if n in wsums else r
            used += 1
    borrowed = {}
    for n in names:
        for part in (".query", ".key"):
            sibling = n[: -len(part)] + ".value" if n.endswith(part) else None
            if sibling is not None and sibling in sums:
                sums[n] = sums[sibling]
                borrowed[n] = sibling
                if weights and sibling in wsums and wsums[sibling].shape == wsums.get(n, wsums[sibling]).shape:
                    wsums[n] = wsums[sibling].clone()
    return sums, wsums, {"batches_used": used, "borrowed_from_value": borrowed}
