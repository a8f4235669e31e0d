"""GPTQ: quantize one weight matrix column by column, compensating each column's rounding error.

After Frantar et al., *GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers* (ICLR 2023). For a layer with inputs X (K, n), ``H = 2 X X^T / n`` is the Hessian
of the layer-output error ``||(W_q - W) X||^2 / n`` in each row of W. Columns are quantized in
order; the error of column j is spread over the columns not yet quantized so as to minimise that
output error (the optimal-brain-surgeon update), with the rows of the upper Cholesky factor U of
``H^-1`` as update directions::

    q_j = Q(w_j);   e = (w_j - q_j) / U[j, j];   W[:, j+1:] -= e U[j, j+1:]

Updates within a block of ``block_size`` columns are applied at once, and to the columns after the
block in one matrix product when the block ends (the "lazy batch" form); the arithmetic is the
same. Scales and zero-points follow :mod:`mpsearch.kernels.quantize` exactly (unsigned codes with a
zero-point, the fp16 scale rounded up before codes are computed, MSE clipping when configured),
so ``dequantize(result.qweight)`` is bit for bit the quantized weight GPTQ settled on, and an
identity Hessian gives round-to-nearest's codes.

A group's scale and zero-point are chosen when the loop reaches its first column, from the
weights as updated by then; per-channel parameters, and every group's with ``act_order``, are
chosen up front from the original weights. ``act_order`` processes columns by decreasing
``diag(H)`` while groups stay blocks of G consecutive inputs, so the stored layout is the plain one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mpsearch.core.config import FLOAT_BITS, QuantizerConfig, check_bits, num_groups
from mpsearch.core.errors import DataError
from mpsearch.kernels.quantize import (
    SCALE_DTYPES,
    QuantizedWeight,
    _choose_params,
    _group_width,
    _grouped,
    check_group_bits,
    check_weight_matrix,
)


@dataclass(frozen=True, eq=False)
class GPTQResult:
    """What GPTQ made of one (out, K) matrix.

    ``weight``: float32 (out, K) quantized values (groups at 16 bits hold their error-updated
    floats). ``qweight``: the integer form, ``dequantize(qweight) == weight`` bit for bit; with
    mixed widths its ``bits`` is the widest one and ``group_bits`` gives each group's width;
    None when some group stays at 16 bits (no codes exist for it). ``error``: the layer-output
    error ``tr((W_q - W) H (W_q - W)^T)`` under the undamped ``H``. ``column_errors`` (only when
    asked for): (out, K) float32, each weight's share ``e^2`` of the output error under the damped
    Hessian GPTQ minimised (dead columns' diagonal set to 1, then ``damp * mean(diag)`` added):
    ``W - W_q = E U`` with ``U`` the upper Cholesky factor of its inverse, so the shares are
    non-negative and sum exactly to ``tr((W_q - W) H_damped (W_q - W)^T)``.
    """

    weight: Tensor
    qweight: QuantizedWeight | None
    error: float
    group_bits: Tensor | None
    column_errors: Tensor | None = None


class HessianAccumulator:
    """Running ``H = 2 X X^T / n`` over input rows, in float32, one (K, K) matrix.

    >>> acc = HessianAccumulator(2); acc.add(torch.tensor([[1.0, 0.0], [1.0, 2.0]]))
    >>> acc.hessian().tolist()
    [[2.0, 2.0], [2.0, 4.0]]
    """

    def __init__(self, fan_in: int) -> None:
        self.sum = torch.zeros(fan_in, fan_in, dtype=torch.float32)
        self.count = 0

    def add(self, rows: Tensor) -> None:
        """Add input rows (n, K) (one row per token, patch or sample)."""
        if rows.dim() != 2 or rows.shape[1] != self.sum.shape[0]:
            raise DataError(f"Inputs to a Hessian must be (n, {self.sum.shape[0]}) rows, but got "
                            f"shape {tuple(rows.shape)}. Flatten tokens or patches into rows first.")
        x = rows.detach().to(torch.float32)
        self.sum.addmm_(x.t(), x)
        self.count += x.shape[0]

    def hessian(self) -> Tensor:
        if self.count == 0:
            raise DataError("A Hessian needs at least one input row, but none was added. Run "
                            "calibration batches that reach this layer.")
        return self.sum * (2.0 / self.count)


def output_error(delta: Tensor, hessian: Tensor) -> float:
    """``tr(delta H delta^T)`` for a weight change ``delta`` (out, K): the summed output error."""
    d = delta.to(torch.float32)
    return float(((d @ hessian.to(torch.float32)) * d).sum(dtype=torch.float64))


def _width_array(bits: int | Tensor, out: int, fan_in: int, config: QuantizerConfig) -> Tensor:
    """(out, n_groups) int64 widths; one int is every group's width."""
    if not isinstance(bits, (Tensor, np.ndarray)):
        b = check_bits(bits, config.scheme)
        return torch.full((out, num_groups(fan_in, config)), b, dtype=torch.int64)
    bpg = torch.as_tensor(bits)
    if bpg.dim() == 1:
        bpg = bpg.expand(out, -1)
    return check_group_bits(bpg, out, fan_in, config).to(torch.int64)


def _group_params(wg: Tensor, widths: Tensor, config: QuantizerConfig) -> tuple[Tensor, Tensor]:
    """Scale and zero for each row of ``wg`` (rows, G) at its own width (16: scale 1, zero 0)."""
    scale = torch.ones(wg.shape[0], dtype=torch.float32)
    zero = torch.zeros(wg.shape[0], dtype=torch.float32)
    for b in torch.unique(widths).tolist():
        if b != FLOAT_BITS:
            rows = widths == b
            scale[rows], zero[rows] = _choose_params(wg[rows], b, config)
    return scale, zero


def _check_inputs(w2d: Tensor, hessian: Tensor, config: QuantizerConfig) -> None:
    check_weight_matrix(w2d)
    K = w2d.shape[1]
    if tuple(hessian.shape) != (K, K) or not bool(torch.isfinite(hessian).all()):
        raise DataError(f"The Hessian must be a finite ({K}, {K}) matrix for a weight with fan_in "
                        f"{K}, but got shape {tuple(hessian.shape)}. Accumulate it from this "
                        "layer's inputs with HessianAccumulator.")


def _inverse_factor(hessian: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1``."""
    h = hessian.clone()
    idx = torch.arange(h.shape[0])
    h[idx, idx] += damp * float(h.diagonal().mean())
    factor, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise DataError(f"GPTQ needs a positive definite damped Hessian, but it is singular with "
                        f"damp={damp}. Raise QuantizerConfig.damp (e.g. 0.1) or calibrate on more "
                        "samples.")
    inverse = torch.cholesky_solve(torch.eye(h.shape[0]), factor)  # several times faster than cholesky_inverse
    return torch.linalg.cholesky(inverse, upper=True)


_SUB = 16  # columns updated one by one inside a block; the rest of the block gets them in one product


def _block_end(i1: int, K: int, block: int, G: int | None) -> int:
    """End of the block starting at ``i1``: cut before a group that would straddle the block end,
    so a group's parameters are always chosen from fully updated weights."""
    i2 = min(i1 + block, K)
    if G is not None and i2 < K:
        start = (i2 - 1) // G * G
        if i1 < start and start + G > i2:
            i2 = start
    return i2


def _flush(W1: Tensor, U1: Tensor, Err1: Tensor, a: int, b: int) -> None:
    """Give the columns of the block past sub-block ``[a, a + SUB)`` the errors of columns a..b-1."""
    start = min(a + _SUB, W1.shape[0])
    if b > a and start < W1.shape[0]:
        W1[start:].addmm_(U1[a:b, start:].t(), Err1[a:b], alpha=-1)


def _sweep(Wt: Tensor, U: Tensor, perm: Tensor | None, params: list[Tensor], widths_t: Tensor,
           config: QuantizerConfig, G: int, dynamic: bool, losses: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The column loop on ``Wt`` (K, out), columns as rows in processing order, updated in place.

    ``params`` = [scale, zero] (n_groups, out), filled at each group's first column if ``dynamic``.
    Returns (codes, quantized values), both (K, out) with rows in natural column order; fills
    ``losses`` (K, out), if given, with each column's squared scaled error ``e^2``.
    """
    K, out = Wt.shape
    scale_t, zero_t = params
    floating_t = widths_t == FLOAT_BITS
    maxq_t = torch.where(floating_t, 255, (1 << widths_t.clamp(max=8)) - 1).to(torch.float32)
    any_float = bool(floating_t.any())
    codes = torch.zeros(K, out, dtype=torch.uint8)
    Qt = torch.empty(K, out)
    i1 = 0
    while i1 < K:
        i2 = _block_end(i1, K, config.block_size, G if dynamic else None)
        n = i2 - i1
        W1, U1, Err1 = Wt[i1:i2], U[i1:i2, i1:i2], torch.empty(n, out)
        a = 0  # first column of the sub-block whose updates are still applied one by one
        for i in range(n):
            col = int(perm[i1 + i]) if perm is not None else i1 + i
            g = col // G
            if dynamic and col % G == 0:  # a group's first column: bring its columns up to date
                _flush(W1, U1, Err1, a, i)
                a = i
                cur = F.pad(Wt[i1 + i:i1 + i + G].t(), (0, G - min(G, K - col))).contiguous()
                scale_t[g], zero_t[g] = _group_params(cur, widths_t[g], config)
            w, s, z = W1[i], scale_t[g], zero_t[g]
            c = torch.minimum((w / s).round_().add_(z).clamp_(min=0), maxq_t[g])
            q = (c - z) * s
            if any_float:
                q = torch.where(floating_t[g], w, q)
                c = torch.where(floating_t[g], 0.0, c)
            codes[col], Qt[col] = c, q
            err = Err1[i]
            torch.div(w - q, U1[i, i], out=err)
            e = min(a + _SUB, n)
            W1[i + 1:e].addr_(U1[i, i + 1:e], err, alpha=-1)
            if i + 1 == e:
                _flush(W1, U1, Err1, a, e)
                a = e
        Wt[i2:].addmm_(U[i1:i2, i2:].t(), Err1, alpha=-1)
        if losses is not None:
            losses[perm[i1:i2] if perm is not None else slice(i1, i2)] = Err1.square()
        i1 = i2
    return codes, Qt


def gptq_quantize(w2d: Tensor, hessian: Tensor, bits: int | Tensor,
                  config: QuantizerConfig | None = None, *, column_errors: bool = False) -> GPTQResult:
    """Quantize a (out, K) matrix with GPTQ under the (K, K) input Hessian ``2 X X^T / n``.

    ``bits``: one width 1..8 for the whole matrix, or per-group widths (1..8, or 16 to keep a
    group in floating point) of shape (out, n_groups) or (n_groups,), which needs
    ``config.group_size``. Settings ``damp``, ``block_size`` and ``act_order`` come from
    ``config`` (its ``method`` is not read here). Columns whose diagonal in H is 0 (inputs never
    seen) are rounded to nearest and neither give nor receive updates. ``column_errors`` also
    returns each weight's share of the damped output error (see :class:`GPTQResult`).
    """
    config = config or QuantizerConfig()
    _check_inputs(w2d, hessian, config)
    out, K = w2d.shape
    widths = _width_array(bits, out, K, config)
    G, n_groups = _group_width(K, config), widths.shape[1]
    dynamic = n_groups > 1 and not config.act_order
    original = w2d.detach().to(torch.float32)
    H = hessian.detach().to(torch.float32).clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    scale_t, zero_t = torch.ones(n_groups, out), torch.zeros(n_groups, out)
    if not dynamic:  # every group's parameters from the original weights, as round-to-nearest does
        s, z = _group_params(_grouped(original, config), widths.reshape(-1), config)
        scale_t, zero_t = s.reshape(out, n_groups).t().contiguous(), z.reshape(out, n_groups).t().contiguous()
    Wt = original.t().clone(memory_format=torch.contiguous_format)  # columns as rows, contiguous
    perm = torch.argsort(H.diagonal(), descending=True, stable=True) if config.act_order else None
    if perm is not None:
        Wt, H = Wt[perm], H[perm][:, perm]
    U = _inverse_factor(H, config.damp)
    del H
    losses = torch.empty(K, out) if column_errors else None
    codes, Qt = _sweep(Wt, U, perm, [scale_t, zero_t], widths.t().contiguous(), config, G, dynamic, losses)
    del Wt, U
    Q = Qt.t().contiguous()
    error = output_error(Q - original, hessian)
    qweight = None
    if not bool((widths == FLOAT_BITS).any()):
        scale = scale_t.t().to(SCALE_DTYPES[config.scale_dtype]).contiguous()
        qweight = QuantizedWeight(codes=codes.t().contiguous(), scale=scale, zero=zero_t.t().to(torch.uint8).contiguous(),
                                  bits=int(widths.max()), config=config)
    mixed = isinstance(bits, (Tensor, np.ndarray))
    return GPTQResult(weight=Q, qweight=qweight, error=error, group_bits=widths if mixed else None,
                      column_errors=None if losses is None else losses.t().contiguous())


__all__ = ["GPTQResult", "HessianAccumulator", "gptq_quantize", "output_error"]
