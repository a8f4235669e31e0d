"""Weighted squared quantization errors per group, at several widths, from one grouping of the weights.

``sum_{j in g} s_j (Q_b(W) - W)_j^2`` for every group g of a (out, fan_in) matrix and every
width b: the error-weighted cost of the group-wise recipe (:mod:`mpsearch.pricing.recipes`).
The matrix is grouped and its ranges taken once; each width then costs one fake-quantization
of the grouped copy, the same arithmetic as :func:`~mpsearch.kernels.quantize.quantize`
(scales chosen the same way, clipping search included), in float32 with float64 sums per group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mpsearch.core.config import FLOAT_BITS, QuantizerConfig, check_bits
from mpsearch.core.errors import DataError
from mpsearch.kernels.quantize import _choose_params, _fake, _grouped

__all__ = ["weighted_group_errors"]


def weighted_group_errors(w2d: Tensor, bits: Sequence[int], config: QuantizerConfig, weights: Tensor | None = None) -> np.ndarray:
    """(out * n_groups, len(bits)) float64 array of ``sum_g s (Q_b(W) - W)^2``, rows in (output row, group) order.

    ``weights`` (the s) is (out, fan_in), (1, fan_in) or (fan_in,); None weighs every weight 1.
    Width 16 (kept in floating point) has no error.

    >>> cfg = QuantizerConfig(group_size=2)
    >>> weighted_group_errors(torch.tensor([[0.3, 1.5, 0.0, 1.0]]), [2], cfg).ravel().round(4).tolist()
    [0.09, 0.0]
    """
    wg = _grouped(w2d, config)
    out, fan_in = w2d.shape
    sg = None
    if weights is not None:
        if weights.shape[-1:] != (fan_in,) or weights.dim() > 2 or (weights.dim() == 2 and weights.shape[0] not in (1, out)):
            raise DataError(f"weights of a ({out}, {fan_in}) matrix must be ({out}, {fan_in}), (1, {fan_in}) or "
                            f"({fan_in},), but got {tuple(weights.shape)}. Pass one value per weight or per input.")
        s = weights.detach().to(torch.float32).reshape(-1, fan_in).expand(out, fan_in)
        sg = F.pad(s, (0, wg.numel() // out - fan_in)).reshape(wg.shape)
    table = np.empty((wg.shape[0], len(bits)))
    for j, b in enumerate(bits):
        if check_bits(b, config.scheme, allow_float=True) == FLOAT_BITS:
            table[:, j] = 0.0
            continue
        err = _fake(wg.clone(), *_choose_params(wg, b, config), b).sub_(wg).square_()
        if sg is not None:
            err.mul_(sg)
        table[:, j] = err.sum(dim=1, dtype=torch.float64).numpy()
    return table
