"""Quantized layers that hold packed integer weights: what a deployed mixed-precision model runs.

:class:`QuantLinear` (``nn.Linear``, and transformers' ``Conv1D`` with ``kind="conv1d"``) and
:class:`QuantConv2d` keep the weight only in packed form, so ``state_dict()`` holds the codes,
never a float weight. Buffers of one unit, with ``K`` the fan-in as
:func:`~mpsearch.kernels.quantize.weight_matrix` flattens it and ``G`` the group size::

    packed  uint8           (out, ceil(K * bits / 8))   little-endian bit stream per row
    scale   scale dtype     (out, n_groups)             float16 by default
    zero    uint8           (out, n_groups)             affine only; symmetric implies 2^(bits-1)
    bias    float32 param   (out,)                      only if the original module had one

``bits``, ``K``, ``G`` and ``kind`` are plain attributes (shown by ``repr``), not buffers.
The ``backend``, a name in :data:`~mpsearch.kernels.backends.BACKENDS`, picks how forward
multiplies: ``"reference"`` dequantizes with the reference formula and calls the float op
(equal to the fake-quant model), ``"numba"`` runs the fused CPU kernels, ``"torch"`` the
portable packed matmul; a backend of your own runs the ops it declares
(:mod:`mpsearch.kernels.backends`).

>>> from torch import nn
>>> q = QuantLinear.from_float(nn.Linear(8, 3), bits=4, backend="torch")
>>> sorted(q.state_dict()), q(torch.ones(2, 8)).shape
(['bias', 'packed', 'scale'], torch.Size([2, 3]))
"""

from __future__ import annotations

import math
from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpsearch.core.config import QuantizerConfig, Scheme, check_bits
from mpsearch.core.errors import DataError, PlanMismatchError
from mpsearch.deploy import dispatch
from mpsearch.kernels.backends import BACKENDS, get_backend, reference_dequantize
from mpsearch.kernels.packing import pack, packed_row_bytes, unpack
from mpsearch.kernels.quantize import (
    SCALE_DTYPES,
    QuantizedWeight,
    num_groups,
    quantize,
    weight_matrix,
)


def check_backend(backend: str) -> str:
    """``backend`` if it names a backend, else :class:`UnknownNameError` listing them."""
    get_backend(backend)
    return backend


def conv_unpackable(groups: int, padding: tuple[int, int] | str, padding_mode: str) -> str | None:
    """Why a backend that multiplies packed weights cannot run a Conv2d of these settings, or
    None: its im2col path needs ``groups=1`` and zero padding given as numbers."""
    why = []
    if groups != 1:
        why.append(f"groups={groups}")
    if padding_mode != "zeros":
        why.append(f"padding_mode={padding_mode!r}")
    if isinstance(padding, str):
        why.append(f"padding={padding!r}")
    return ", ".join(why) or None


class _PackedUnit(nn.Module):
    """Buffers, dequantization and the backend matmul shared by the quantized layers."""

    kind: str

    def __init__(self, out_features: int, K: int, bits: int, config: QuantizerConfig,
                 bias: bool, backend: str) -> None:
        super().__init__()
        self.bits = check_bits(bits, config.scheme)
        self.out_features, self.K = int(out_features), int(K)
        self.G = config.group_size
        self.scheme = Scheme(config.scheme).value
        self.scale_dtype = config.scale_dtype
        self.backend = check_backend(backend)
        n = num_groups(self.K, config)
        self.register_buffer("packed", torch.zeros(self.out_features,
                                                   packed_row_bytes(self.K, self.bits),
                                                   dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(self.out_features, n,
                                                 dtype=SCALE_DTYPES[self.scale_dtype]))
        if self.scheme == Scheme.AFFINE.value:
            self.register_buffer("zero", torch.zeros(self.out_features, n, dtype=torch.uint8))
        else:
            self.zero = None
        self.bias = nn.Parameter(torch.zeros(self.out_features), requires_grad=False) \
            if bias else None

    @property
    def config(self) -> QuantizerConfig:
        """The quantizer settings the codes were made with."""
        return QuantizerConfig(scheme=self.scheme, group_size=self.G, scale_dtype=self.scale_dtype)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """Move or cast like any module, except that the stored scales keep their dtype: a
        model cast to bfloat16 or float16 keeps its quantized weights exactly (only the bias
        and the layers left in float are cast) and computes in the input's dtype."""
        kept = self._buffers.get("scale")
        out = super()._apply(fn, recurse)
        new = self._buffers.get("scale")
        if kept is not None and new is not None and new.dtype != kept.dtype:
            self._buffers["scale"] = kept.to(new.device)
        return out

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        dispatch.forget(self)  # a prepared batch-1 weight would keep the old codes
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[arg-type]

    def _load_quantized(self, qw: QuantizedWeight, bias: Tensor | None) -> None:
        dispatch.forget(self)
        with torch.no_grad():
            self.packed.copy_(pack(qw.codes, self.bits))
            self.scale.copy_(qw.scale)
            if self.zero is not None:
                self.zero.copy_(qw.zero)
            if bias is not None:
                self.bias.copy_(bias.detach().to(torch.float32))

    def zero_points(self) -> Tensor:
        """The (out, n_groups) uint8 zero-points (for symmetric, the implied 2^(bits-1))."""
        if self.zero is not None:
            return self.zero
        return torch.full(self.scale.shape, 1 << (self.bits - 1), dtype=torch.uint8,
                          device=self.packed.device)

    def codes(self) -> Tensor:
        """The (out, K) uint8 codes, unpacked: bit-exact with the reference quantizer's."""
        return unpack(self.packed, self.bits, self.K)

    def dequantized(self) -> Tensor:
        """The float32 (out, K) weight matrix by the reference formula."""
        return reference_dequantize(self.packed, self.scale, self.zero_points(), self.bits,
                                    self.K, self.G)

    def _float_weight(self) -> Tensor | None:
        """The (out, K) weight that forward runs the float op with, or None when the backend
        multiplies the packed weight itself (:meth:`_matmul`)."""
        backend = get_backend(self.backend)
        if backend.multiplies:
            return None
        return backend.op("dequantize")(self.packed, self.scale, self.zero_points(), self.bits,
                                        self.K, self.G)

    def _matmul(self, x2d: Tensor) -> Tensor:
        """(B, K) float32 -> (B, out) float32 with the backend's packed product."""
        return get_backend(self.backend).matmul(self.packed, self.scale, self.zero_points(), x2d,
                                                self.bits, self.K, self.G)

    @classmethod
    def empty_like(cls, module: nn.Module, bits: int, config: QuantizerConfig,
                   backend: str = "reference") -> Self:
        """A layer shaped for ``module`` with zeroed buffers (to be filled by a state dict)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a float module; use "
                                  f"QuantLinear or QuantConv2d.")

    @classmethod
    def from_float(cls, module: nn.Module, bits: int, config: QuantizerConfig | None = None,
                   backend: str = "reference") -> Self:
        """Quantize a float ``module`` with the reference quantizer and pack it."""
        config = config or QuantizerConfig()
        q = cls.empty_like(module, bits, config, backend)
        q._load_quantized(quantize(weight_matrix(module.weight.detach(), q.kind), bits, config),
                          module.bias)
        return q

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, out={self.out_features}, K={self.K}, bits={self.bits}, "
                f"G={self.G}, scheme={self.scheme}, backend={self.backend}, "
                f"bias={self.bias is not None}")


class QuantLinear(_PackedUnit):
    """A packed ``nn.Linear`` (``kind="linear"``) or transformers ``Conv1D`` (``"conv1d"``).

    Both compute ``y = x W^T + b`` for inputs (..., K); ``Conv1D`` only stores W transposed.

    >>> q = QuantLinear(4, 16, bits=3, config=QuantizerConfig(), bias=False)
    >>> q.packed.shape, q.scale.dtype
    (torch.Size([4, 6]), torch.float16)
    """

    def __init__(self, out_features: int, K: int, bits: int, config: QuantizerConfig, *,
                 bias: bool = True, backend: str = "reference", kind: str = "linear") -> None:
        if kind not in ("linear", "conv1d"):
            raise DataError(f"`kind` of a QuantLinear must be 'linear' or 'conv1d', but got "
                            f"kind={kind!r}. Use QuantConv2d for 'conv2d'.")
        super().__init__(out_features, K, bits, config, bias, backend)
        self.kind = kind

    @classmethod
    def empty_like(cls, module: nn.Module, bits: int, config: QuantizerConfig,
                   backend: str = "reference") -> QuantLinear:
        """A layer shaped for ``module`` with zeroed buffers (to be filled by a state dict)."""
        kind = "linear" if isinstance(module, nn.Linear) else "conv1d"
        shape = module.weight.shape
        out, K = (shape[1], shape[0]) if kind == "conv1d" else (shape[0], shape[1])
        return cls(out, K, bits, config, bias=module.bias is not None, backend=backend,
                   kind=kind).to(module.weight.device)

    def forward(self, x: Tensor) -> Tensor:
        if self.backend == dispatch.ROUTED and (y := dispatch.one_row(self, x)) is not None:
            if self.bias is not None:  # one decoded token: the shortest way to the kernel
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)
        w = self._float_weight()
        if w is not None:
            w = w.to(x.dtype)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            if self.kind == "conv1d":  # as transformers' Conv1D computes it
                w = w.t().contiguous()
                y = x.reshape(-1, self.K) @ w if bias is None \
                    else torch.addmm(bias, x.reshape(-1, self.K), w)
                return y.reshape(*x.shape[:-1], self.out_features)
            return F.linear(x, w, bias)
        if self.backend == dispatch.ROUTED:  # computes in x's float dtype
            y = dispatch.linear(self, x.reshape(-1, self.K), self.bias)
        else:
            y = self._matmul(x.reshape(-1, self.K).to(torch.float32))
            if self.bias is not None:
                y = y + self.bias.to(torch.float32)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class QuantConv2d(_PackedUnit):
    """A packed ``nn.Conv2d``: the weight decoded per call, then ``F.conv2d``.

    Grouped convolutions and padding modes other than zeros run only on the reference
    backend (the packed backends raise :class:`~mpsearch.core.errors.PlanMismatchError`).
    """

    kind = "conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int],
                 bits: int, config: QuantizerConfig, *, stride: tuple[int, int] = (1, 1),
                 padding: tuple[int, int] | str = (0, 0), dilation: tuple[int, int] = (1, 1),
                 groups: int = 1, padding_mode: str = "zeros", bias: bool = True,
                 backend: str = "reference") -> None:
        self.in_channels, self.kernel_size = int(in_channels), tuple(kernel_size)
        self.stride, self.padding, self.dilation = tuple(stride), padding, tuple(dilation)
        self.groups, self.padding_mode = int(groups), padding_mode
        K = self.in_channels // self.groups * math.prod(self.kernel_size)
        why = conv_unpackable(self.groups, padding, padding_mode)
        if why and get_backend(backend).multiplies:
            raise PlanMismatchError(
                f"The {backend!r} backend multiplies packed weights, which needs Conv2d with "
                f"groups=1 and zero padding given as numbers, but got {why}. Use "
                f"backend='reference' for this model (or keep this unit at 16 bits).")
        super().__init__(out_channels, K, bits, config, bias, backend)

    @classmethod
    def empty_like(cls, module: nn.Conv2d, bits: int, config: QuantizerConfig,
                   backend: str = "reference") -> QuantConv2d:
        """A layer shaped for ``module`` with zeroed buffers (to be filled by a state dict)."""
        return cls(module.in_channels, module.out_channels, module.kernel_size, bits, config,
                   stride=module.stride, padding=module.padding, dilation=module.dilation,
                   groups=module.groups, padding_mode=module.padding_mode,
                   bias=module.bias is not None, backend=backend).to(module.weight.device)

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_channels // self.groups, *self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        # Packed backends decode the weight (into a reused buffer on numba) and run torch's
        # own convolution: an im2col product would copy every input K/C times over.
        if self.backend == dispatch.ROUTED:
            w = dispatch.dense_weight(self, x, self._weight_shape())
        else:
            w = self._float_weight()
            w = (dispatch.dense_weight(self, x) if w is None else w).reshape(self._weight_shape())
        if w.dtype != x.dtype:
            w = w.to(x.dtype)
        if self.padding_mode != "zeros":
            pad = [p for p in reversed(self.padding) for _ in range(2)]
            return F.conv2d(F.pad(x, pad, mode=self.padding_mode), w, self.bias, self.stride, 0,
                            self.dilation, self.groups)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_features}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, " + super().extra_repr())


__all__ = ["BACKENDS", "QuantConv2d", "QuantLinear", "check_backend", "conv_unpackable"]
