"""Cost tables over llama.cpp GGUF types, priced by each type's real quantization error.

A GGUF tensor is stored in one type (``q2_K`` .. ``q6_K``, ``iq4_nl``, ``q5_0``, ``q8_0``...), and
llama.cpp's quantizers are not round-to-nearest: the k-quants search their block scales and
minimums, ``iq4_nl`` rounds onto a non-linear grid, and with an importance matrix every one of
them weights its own error. So the cost of a type is measured on the real thing: quantize the
reference with llama-quantize once per type, decode each tensor back
(:func:`mpsearch.deploy.gguf_export.read_dequantized`) and weigh its error by a per-weight
sensitivity ``s``:

    cost[tensor, type] = 1/2 * sum_j s_j * (Q_type(W) - W)_j^2

With ``s`` the Fisher diagonal of the model's own predictive distribution (:func:`sampled_fisher`:
labels drawn from the model, not read from the text), this is the second-order estimate of the
mean per-token KL divergence between the reference and the quantized model, in nats: the
quantity llama-perplexity's ``--kl-divergence`` measures. The resource is each type's bits per
weight, block scales included (:data:`mpsearch.core.gguf_types.GGUF_TYPES`), so a byte budget is
the size of the tensors in the file.

:func:`gguf_type_table` makes the :class:`~mpsearch.core.costs.CostTable`: one item per tensor
(named by its module), one column per width of :func:`~mpsearch.core.gguf_types.type_menu`,
allowed where the row length can take that type. Any solver reads it; a plan's width maps back
to exactly the priced type through :func:`~mpsearch.core.gguf_types.type_for`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mpsearch.core.costs import CostTable
from mpsearch.core.errors import CostTableError, DataError
from mpsearch.core.gguf_types import GGUF_TYPES, type_menu
from mpsearch.sensitivity._tensors import weights_requiring_grad
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.sensitivity.salience import fisher_diagonal
from mpsearch.space.tokens import causal_lm_logits

__all__ = ["gguf_type_table", "mix_cost", "sampled_fisher", "weighted_error"]

_CHUNK = 1 << 22  # elements per step of weighted_error: no full-size float64 temporaries


def sampled_fisher(model: nn.Module, windows: torch.Tensor, params: Mapping[str, torch.Tensor], *, seed: int = 0,
                   progress: bool = False) -> dict[str, torch.Tensor]:
    """Per-token Fisher diagonal of the model's predictive distribution, per parameter (float64).

    For each window of ``windows`` (int64 (N, T) token ids) the next tokens are *drawn* from the
    model's own softmax, and the squared gradient of their summed log-loss is accumulated; divided
    by the predicted tokens per window, its mean is the Fisher diagonal whose quadratic form
    ``1/2 d^T F d`` is the KL divergence per token of a small weight change ``d``. Tied parameters
    (an embedding that is also the output head) get both uses in one gradient.
    """
    if not isinstance(windows, torch.Tensor) or windows.dtype != torch.int64 or windows.ndim != 2 or windows.shape[1] < 2:
        raise DataError(f"`windows` must be int64 token ids of shape (N, T) with T >= 2, but got "
                        f"{getattr(windows, 'dtype', type(windows).__name__)} {tuple(getattr(windows, 'shape', ()))}. "
                        "Pass text_windows(tokenizer, texts, seq_len).")
    generator = torch.Generator().manual_seed(seed)

    def drawn_label_loss(net: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        logits = causal_lm_logits(net, ids)[:, :-1].float()
        flat = logits.reshape(-1, logits.shape[-1])
        labels = torch.multinomial(F.softmax(flat.detach(), dim=-1), 1, generator=generator).squeeze(1)
        return F.cross_entropy(flat, labels, reduction="sum") / len(ids)

    data = Calibration.from_inputs(windows, loss_fn=drawn_label_loss, batch_size=1, name="sampled-fisher")
    names, tensors = list(params), list(params.values())
    with weights_requiring_grad(model, tensors):
        values = fisher_diagonal(model, data, tensors, micro_batch=1, progress=progress)
    per_token = windows.shape[1] - 1
    return {name: v.div_(per_token) for name, v in zip(names, values)}


def weighted_error(weight: np.ndarray, reconstruction: np.ndarray, value: np.ndarray) -> float:
    """``sum_j value_j * (reconstruction_j - weight_j)^2`` in float64; ``value`` may be (rows, cols) or (cols,)."""
    w, r = np.asarray(weight), np.asarray(reconstruction)
    v = np.asarray(value)
    if w.shape != r.shape or w.ndim != 2 or v.shape not in (w.shape, w.shape[1:]):
        raise CostTableError(f"weight, reconstruction and value must be (rows, cols) arrays (value may be (cols,)), but got "
                             f"{w.shape}, {r.shape} and {v.shape}. Line them up in one layout (gguf_layout).")
    rows = max(1, _CHUNK // max(w.shape[1], 1))
    total = 0.0
    for a in range(0, w.shape[0], rows):
        d = r[a : a + rows].astype(np.float64) - w[a : a + rows]
        s = v if v.ndim == 1 else v[a : a + rows]
        total += float(np.einsum("ij,ij->", d * d, np.broadcast_to(s, d.shape)))
    return total


def gguf_type_table(errors: Mapping[str, Mapping[str, float]], row_lengths: Mapping[str, int],
                    n_weights: Mapping[str, int], *, scale: float = 0.5, meta: Mapping[str, Any] | None = None) -> CostTable:
    """The GGUF type cost table: ``cost = scale * errors[unit][type]``, storage ``n_weights * bpw(type)``.

    ``errors`` maps each unit (module name) to ``{type: weighted squared error}`` measured with
    :func:`weighted_error`; every type of the unit's :func:`~mpsearch.core.gguf_types.type_menu`
    must be there. Columns are the widths of the menus; a width outside a unit's menu is not
    allowed for it. ``meta["gguf_types"]`` records each unit's ``{width: type}``.
    """
    units = tuple(errors)
    if not units:
        raise CostTableError("a GGUF type table needs at least one unit, but `errors` is empty. Measure some tensors.")
    menus = {}
    for unit in units:
        if unit not in row_lengths or unit not in n_weights:
            raise CostTableError(f"every unit needs its row length and weight count, but {unit!r} lacks one. "
                                 "Pass both for every unit of `errors`.")
        menus[unit] = type_menu(int(row_lengths[unit]))
        missing = sorted(set(menus[unit].values()) - set(errors[unit]))
        if missing:
            raise CostTableError(f"every type a tensor can take must be measured, but {unit!r} lacks {missing}. "
                                 "Quantize the reference once per type (llama-quantize --pure) and measure them.")
    bits = tuple(sorted({w for m in menus.values() for w in m}))
    cost = np.zeros((len(units), len(bits)))
    storage = np.zeros_like(cost)
    allowed = np.zeros(cost.shape, bool)
    for i, unit in enumerate(units):
        for j, width in enumerate(bits):
            kind = menus[unit].get(width)
            if kind is not None:
                allowed[i, j] = True
                cost[i, j] = scale * float(errors[unit][kind])
                storage[i, j] = int(n_weights[unit]) * GGUF_TYPES[kind].bpw
    info = {"recipe": "gguf-types", "gguf_types": {u: {str(w): k for w, k in menus[u].items()} for u in units},
            **dict(meta or {})}
    return CostTable(items=units, bits=bits, cost=cost, storage_bits=storage,
                     n_weights=np.array([int(n_weights[u]) for u in units]), allowed=allowed,
                     meta=info)


def mix_cost(errors: Mapping[str, Mapping[str, float]], types: Mapping[str, str], *, scale: float = 0.5) -> float:
    """Predicted cost of any assignment ``{unit: type}`` (e.g. the types of llama.cpp's own mix)."""
    unknown = sorted(u for u, k in types.items() if k not in errors.get(u, {}))
    if unknown:
        raise CostTableError(f"every (unit, type) must be measured, but {unknown[:3]} are not. Measure those types too.")
    return scale * float(sum(errors[u][k] for u, k in types.items()))
