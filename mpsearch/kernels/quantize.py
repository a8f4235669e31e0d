"""The reference quantizer: the one definition of Q_b(W) that every other part relies on.

A weight is seen as a matrix (out, fan_in) (:func:`weight_matrix`). Each output row is cut into
groups of G consecutive fan-in elements (one group per row when ``group_size`` is None; the last
group may be partial). Each group has its own scale and zero-point, and codes are unsigned::

    value = (code - zero) * scale                     code in [0, 2^b - 1]
    symmetric: scale = clip / (2^(b-1) - 1), zero = 2^(b-1)   (signed q = code - zero)
    affine:    scale = (hi - lo) / (2^b - 1), zero = round(-lo / scale), lo <= 0 <= hi

The scale is rounded to its storage dtype *before* codes are computed, so dequantizing the stored
values gives exactly what :func:`fake_quantize` gives. Rounding is half-to-even (``torch.round``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mpsearch.core.config import FLOAT_BITS, QuantizerConfig, Scheme, check_bits, num_groups
from mpsearch.core.errors import ConfigError, DataError
from mpsearch.core.storage import overhead_bits

SCALE_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}
KINDS = ("linear", "conv2d", "conv1d")
MIN_CLIP_RATIO = 0.2
_SEARCH_BLOCK = 1 << 22  # elements per block of the clipping search; bounds its memory


def _matrix_shape(shape: torch.Size, kind: str) -> tuple[int, int]:
    ndim = 4 if kind == "conv2d" else 2
    if kind not in KINDS or len(shape) != ndim:
        raise DataError(f"`kind` must be one of {list(KINDS)} with a {ndim}-D weight (conv2d 4-D), "
                        f"but got kind={kind!r}, shape {tuple(shape)}. Use quantizable_kind().")
    return (shape[1], shape[0]) if kind == "conv1d" else (shape[0], math.prod(shape[1:]))


def weight_matrix(weight: Tensor, kind: str) -> Tensor:
    """The (out, fan_in) view of a weight: "linear" (out, in); "conv2d" (out, in*kh*kw);
    "conv1d" (transformers' ``Conv1D``, stored (in, out)) transposed.

    >>> weight_matrix(torch.zeros(3, 5), "conv1d").shape
    torch.Size([5, 3])
    """
    rows, cols = _matrix_shape(weight.shape, kind)
    return weight.t() if kind == "conv1d" else weight.reshape(rows, cols)


def matrix_to_weight(mat: Tensor, shape: Iterable[int], kind: str) -> Tensor:
    """Inverse of :func:`weight_matrix`: a (out, fan_in) matrix back to the weight ``shape``."""
    shape = torch.Size(shape)
    expected = _matrix_shape(shape, kind)
    if tuple(mat.shape) != expected:
        raise DataError(f"A matrix for a {kind} weight of shape {tuple(shape)} must have shape "
                        f"{expected}, but got {tuple(mat.shape)}. Pass weight_matrix's output.")
    return mat.t().contiguous() if kind == "conv1d" else mat.reshape(shape)


def _group_width(fan_in: int, config: QuantizerConfig) -> int:
    return fan_in if num_groups(fan_in, config) == 1 else config.group_size  # type: ignore


def check_weight_matrix(w2d: Tensor) -> None:
    """A quantizer's input: a 2-D floating (out, fan_in) matrix with fan_in >= 1 and finite values."""
    if w2d.dim() != 2 or not w2d.is_floating_point() or w2d.shape[1] == 0:
        raise DataError(f"A weight matrix must be a 2-D floating tensor with fan_in >= 1, but got "
                        f"shape {tuple(w2d.shape)}, {w2d.dtype}. Use weight_matrix(weight, kind).")
    if not bool(torch.isfinite(w2d).all()):
        raise DataError("Weights must be finite, but the matrix holds NaN or inf. "
                        "Fix or re-initialize the weights before quantizing.")


def _grouped(w2d: Tensor, config: QuantizerConfig) -> Tensor:
    """(out * n_groups, G) float32 copy, the partial last group padded with zeros.

    Padding changes nothing: a range always holds 0 already, and 0 is quantized exactly.
    """
    check_weight_matrix(w2d)
    out, fan_in = w2d.shape
    n, g = num_groups(fan_in, config), _group_width(fan_in, config)
    return F.pad(w2d.detach().to(torch.float32), (0, n * g - fan_in)).reshape(out * n, g)


def _ranges(wg: Tensor, scheme: Scheme) -> tuple[Tensor, Tensor]:
    """Per-row range (lo, hi) with lo <= 0 <= hi; symmetric uses (-amax, amax)."""
    if scheme is Scheme.SYMMETRIC:
        amax = wg.abs().amax(dim=1)
        return -amax, amax
    return wg.amin(dim=1).clamp(max=0.0), wg.amax(dim=1).clamp(min=0.0)


def _params(lo: Tensor, hi: Tensor, bits: int, config: QuantizerConfig,
            alpha: float) -> tuple[Tensor, Tensor]:
    """Scale (float32 holding stored-dtype values) and zero-point for ranges shrunk by alpha."""
    symmetric = config.scheme is Scheme.SYMMETRIC
    lo = lo * alpha
    scale = hi * alpha / (2 ** (bits - 1) - 1) if symmetric else (hi * alpha - lo) / (2**bits - 1)
    dtype = SCALE_DTYPES[config.scale_dtype]
    info = torch.finfo(dtype)
    tiny = info.smallest_normal * info.eps  # the dtype's smallest positive (subnormal) value
    scale = torch.where(scale > 0, scale.clamp(min=tiny), 1.0)  # all-zero group: scale 1
    # Round the stored scale up, never down: a scale rounded down (coarsely so
    # among fp16 subnormals) would clip the largest weights of the group.
    stored = scale.to(dtype)
    below = stored.to(torch.float32) < scale
    stored = torch.where(below, torch.nextafter(stored, torch.full_like(stored, math.inf)), stored)
    scale = stored.to(torch.float32)
    if not bool(torch.isfinite(scale).all()):
        raise DataError(f"Quantization scales must fit scale_dtype={config.scale_dtype!r}, but "
                        "some overflow it. Use scale_dtype='float32' for weights this large.")
    if symmetric:
        return scale, torch.full_like(scale, float(2 ** (bits - 1)))
    return scale, torch.round(-lo / scale).clamp_(0, 2**bits - 1)


def _codes(wg: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    return (wg / scale[:, None]).round_().add_(zero[:, None]).clamp_(0, 2**bits - 1)


def _fake(wg: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    return _codes(wg, scale, zero, bits).sub_(zero[:, None]).mul_(scale[:, None])


def _choose_params(wg: Tensor, bits: int, config: QuantizerConfig) -> tuple[Tensor, Tensor]:
    """Scale and zero per group; with ``clip_search``, the MSE-best of ``clip_grid`` ratios.

    Ratios shrink the range from 1.0 to ``MIN_CLIP_RATIO``. All groups of a block of rows are
    searched at once, keeping a running best, so memory stays a few times the block.
    """
    if not config.clip_search:
        return _params(*_ranges(wg, config.scheme), bits, config, 1.0)
    scales, zeros = [], []
    for block in wg.split(max(1, _SEARCH_BLOCK // wg.shape[1])):
        lo, hi = _ranges(block, config.scheme)
        block64, best = block.double(), None
        for alpha in np.linspace(1.0, MIN_CLIP_RATIO, config.clip_grid).tolist():
            s, z = _params(lo, hi, bits, config, alpha)
            err = _fake(block, s, z, bits).double().sub_(block64).square_().sum(dim=1)
            if best is not None:  # strict: a tie keeps the earlier, wider range
                better = err < best[0]
                err, s, z = (torch.where(better, new, old) for new, old in zip((err, s, z), best))
            best = (err, s, z)
        scales.append(best[1])  # type: ignore[index]
        zeros.append(best[2])  # type: ignore[index]
    return torch.cat(scales), torch.cat(zeros)


@dataclass
class QuantizedWeight:
    """Integer form of a (out, fan_in) matrix: value = (codes - zero) * scale, per group.

    ``codes`` uint8 (out, fan_in); ``scale`` (out, n_groups) in ``config.scale_dtype``;
    ``zero`` uint8 (out, n_groups) in code units (constant 2^(bits-1) when symmetric).
    """

    codes: Tensor
    scale: Tensor
    zero: Tensor
    bits: int
    config: QuantizerConfig


def quantize(w2d: Tensor, bits: int, config: QuantizerConfig | None = None) -> QuantizedWeight:
    """Quantize a (out, fan_in) matrix to ``bits`` (1..8).

    >>> qw = quantize(torch.tensor([[-1.0, 0.0, 0.5, 1.0]]), 2)
    >>> qw.codes.tolist(), qw.zero.tolist(), dequantize(qw).tolist()
    ([[1, 2, 2, 3]], [[2]], [[-1.0, 0.0, 0.0, 1.0]])
    """
    config = config or QuantizerConfig()
    bits = check_bits(bits, config.scheme)
    wg = _grouped(w2d, config)
    out, fan_in = w2d.shape
    scale, zero = _choose_params(wg, bits, config)
    codes = _codes(wg, scale, zero, bits).reshape(out, -1)[:, :fan_in]
    return QuantizedWeight(codes=codes.to(torch.uint8).contiguous(),
                           scale=scale.reshape(out, -1).to(SCALE_DTYPES[config.scale_dtype]),
                           zero=zero.reshape(out, -1).to(torch.uint8), bits=bits, config=config)


def dequantize(qw: QuantizedWeight) -> Tensor:
    """float32 (out, fan_in) values of a :class:`QuantizedWeight`."""
    out, fan_in = qw.codes.shape
    n, g = qw.scale.shape[1], _group_width(fan_in, qw.config)
    codes = F.pad(qw.codes.to(torch.float32), (0, n * g - fan_in)).reshape(out, n, g)
    deq = (codes - qw.zero.to(torch.float32)[..., None]) * qw.scale.to(torch.float32)[..., None]
    return deq.reshape(out, n * g)[:, :fan_in].contiguous()


def fake_quantize(w2d: Tensor, bits: int, config: QuantizerConfig | None = None) -> Tensor:
    """Q_b(W) in the input's dtype and shape; bits=16 returns an unchanged copy.

    >>> fake_quantize(torch.tensor([[-0.75, 0.0, 0.3, 1.5]]), 3).tolist()
    [[-1.0, 0.0, 0.5, 1.5]]
    """
    config = config or QuantizerConfig()
    if check_bits(bits, config.scheme, allow_float=True) == FLOAT_BITS:
        return w2d.detach().clone()
    return dequantize(quantize(w2d, bits, config)).to(w2d.dtype)


def quant_error(w2d: Tensor, bits: int, config: QuantizerConfig | None = None) -> float:
    """||Q_b(W) - W||^2, summed in float64 (0.0 for bits=16)."""
    config = config or QuantizerConfig()
    if check_bits(bits, config.scheme, allow_float=True) == FLOAT_BITS:
        return 0.0
    deq = dequantize(quantize(w2d, bits, config)).double()
    return float(deq.sub_(w2d.detach().double()).square_().sum())


def quant_errors(w2d: Tensor, bits_choices: Iterable[int],
                 config: QuantizerConfig | None = None) -> np.ndarray:
    """:func:`quant_error` for each width, as a float64 array in the order given."""
    config = config or QuantizerConfig()
    choices = [check_bits(b, config.scheme, allow_float=True) for b in bits_choices]
    return np.array([quant_error(w2d, b, config) for b in choices], dtype=np.float64)


def check_group_bits(bits_per_group: Tensor | np.ndarray, out_features: int, fan_in: int,
                     config: QuantizerConfig) -> Tensor:
    """Validate (out, n_groups) integer widths (each 1..8 or 16) and return them as a Tensor."""
    if config.group_size is None:
        raise ConfigError("Per-group bit widths need `group_size`, but got group_size=None. "
                               "Pass QuantizerConfig(group_size=128), or one int width per unit.")
    bpg = torch.as_tensor(bits_per_group)
    expected = (out_features, num_groups(fan_in, config))
    if tuple(bpg.shape) != expected or bpg.is_floating_point() or bpg.dtype == torch.bool:
        raise DataError(f"Per-group bit widths must be integers of shape {expected}, but got "
                        f"shape {tuple(bpg.shape)}, {bpg.dtype}. Pass (out, n_groups) int widths.")
    for b in torch.unique(bpg).tolist():
        check_bits(b, config.scheme, allow_float=True)
    return bpg


def fake_quantize_groups(w2d: Tensor, bits_per_group: Tensor, config: QuantizerConfig) -> Tensor:
    """Fake-quantize each group at its own width (16 leaves a group in floating point).

    >>> cfg = QuantizerConfig(group_size=2)
    >>> fake_quantize_groups(torch.tensor([[0.3, 1.5, 0.3, 1.5]]), torch.tensor([[2, 16]]), cfg)
    tensor([[0.0000, 1.5000, 0.3000, 1.5000]])
    """
    wg = _grouped(w2d, config)
    flat = check_group_bits(bits_per_group, *w2d.shape, config).reshape(-1)
    result = wg.clone()
    for b in torch.unique(flat).tolist():  # a loop over the few widths, never over groups
        if b != FLOAT_BITS:
            mask = flat == b
            sub = wg[mask]
            result[mask] = _fake(sub, *_choose_params(sub, b, config), b)
    out, fan_in = w2d.shape
    return result.reshape(out, -1)[:, :fan_in].to(w2d.dtype)


__all__ = [
    "FLOAT_BITS", "KINDS", "SCALE_DTYPES", "QuantizedWeight", "QuantizerConfig", "Scheme",
    "check_bits", "check_group_bits", "dequantize", "fake_quantize", "fake_quantize_groups",
    "matrix_to_weight", "num_groups", "overhead_bits", "quant_error", "quant_errors", "quantize",
    "weight_matrix",
]
