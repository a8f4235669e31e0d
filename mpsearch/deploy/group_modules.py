"""Packed layers whose groups each carry their own bit width: group-wise plans, deployed.

A group-wise plan gives every group of G inputs of every output row its own width.
:class:`GroupQuantLinear` (``nn.Linear``, transformers' ``Conv1D``) and
:class:`GroupQuantConv2d` store such a weight in the layout of
:mod:`mpsearch.kernels.packing_groups`; their buffers, with ``K`` the fan-in::

    packed      uint8         (sum over groups of ceil(len_g * b_g / 8),)   groups row-major
    group_bits  uint8         (out, n_groups)     the plan's width map
    scale       scale dtype   (out, n_groups)
    zero        uint8         (out, n_groups)     affine only; symmetric implies 2^(b_g - 1)
    bias        float32 param (out,)              only if the original module had one

Backends: ``"reference"`` decodes the weight by the reference formula and calls the float op
(equal to the fake-quant model); ``"torch"`` decodes with tensor ops on any device;
``"numba"`` runs one row on the per-group batch-1 kernel and more rows (and convolutions) on
a weight decoded into the shared scratch buffer (:mod:`mpsearch.deploy.dispatch`).
``bits`` is the widest group's width; ``widths`` the sorted widths present.

>>> import torch
>>> from torch import nn
>>> from mpsearch.core.config import QuantizerConfig
>>> cfg = QuantizerConfig(group_size=4)
>>> q = GroupQuantLinear.from_float(nn.Linear(8, 2), torch.tensor([[2, 4], [3, 3]]), cfg)
>>> q.widths, tuple(q.packed.shape), q(torch.ones(1, 8)).shape
((2, 3, 4), (7,), torch.Size([1, 2]))
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import torch
from torch import Tensor, nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import PlanMismatchError
from mpsearch.deploy import dispatch
from mpsearch.deploy.modules import QuantConv2d, QuantLinear
from mpsearch.kernels.fake import quantizable_kind
from mpsearch.kernels.packing_groups import (
    check_group_map,
    dequantize_groups,
    pack_groups,
    packed_groups_bytes,
    quantize_groups,
    unpack_groups,
    zero_points_groups,
)
from mpsearch.kernels.quantize import QuantizedWeight, weight_matrix

GROUP_BACKENDS = ("reference", "torch", "numba")


class _GroupPacked:
    """Buffers and decoding shared by the per-group layers (mixed into QuantLinear/QuantConv2d)."""

    packed: Tensor
    scale: Tensor
    zero: Tensor | None
    bias: Tensor | None
    out_features: int
    K: int
    G: int | None
    backend: str
    scheme: str

    def _init_groups(self, group_bits: Any, config: QuantizerConfig) -> None:
        if self.backend not in GROUP_BACKENDS:
            raise PlanMismatchError(
                f"Layers with per-group widths run on the backends {list(GROUP_BACKENDS)}, but got "
                f"backend={self.backend!r}. Pass one of them, or a plan with one width per unit.")
        gb = check_group_map(group_bits, self.out_features, self.K, config)
        self.register_buffer("group_bits", gb)  # type: ignore[attr-defined]
        self.register_buffer("packed", torch.zeros(packed_groups_bytes(gb, self.K, self.G),  # type: ignore[attr-defined]
                                                   dtype=torch.uint8))
        self.widths = tuple(sorted(set(torch.unique(gb).tolist())))
        self.bits = max(self.widths)

    def zero_points(self) -> Tensor:
        """The (out, n_groups) uint8 zero-points (for symmetric, 2^(b-1) of each group's width)."""
        return self.zero if self.zero is not None else zero_points_groups(self.group_bits)

    def codes(self) -> Tensor:
        """The (out, K) uint8 codes, unpacked: bit-exact with the reference quantizer's."""
        return unpack_groups(self.packed, self.group_bits, self.K, self.G)

    def dequantized(self) -> Tensor:
        """The float32 (out, K) weight matrix by the reference formula."""
        return dequantize_groups(self.packed, self.scale, self.zero_points(), self.group_bits,
                                 self.K, self.G)

    def _float_weight(self) -> Tensor | None:
        return None if self.backend == dispatch.ROUTED else self.dequantized()

    def _matmul(self, x2d: Tensor) -> Tensor:
        return x2d @ self.dequantized().T

    def _load_quantized(self, qw: QuantizedWeight, bias: Tensor | None) -> None:
        dispatch.forget(self)  # type: ignore[arg-type]
        with torch.no_grad():
            self.packed.copy_(pack_groups(qw.codes.to(self.packed.device), self.group_bits, self.G))
            self.scale.copy_(qw.scale)
            if self.zero is not None:
                self.zero.copy_(qw.zero)
            if bias is not None and self.bias is not None:
                self.bias.copy_(bias.detach().to(torch.float32))

    def _group_repr(self) -> str:
        counts = torch.bincount(self.group_bits.reshape(-1).to(torch.int64), minlength=9)
        return ", ".join(f"{b}b:{int(counts[b])}" for b in self.widths)


def _place(unit: Any, device: torch.device) -> Any:
    """``unit`` moved to ``device``; on ``meta`` (a skeleton to load into) the width map stays
    on the CPU, so the layer still knows its geometry."""
    widths = unit.group_bits
    unit.to(device)
    if device.type == "meta":
        unit.group_bits = widths
    return unit


def _from_float(cls: Any, module: nn.Module, group_bits: Any, config: QuantizerConfig,
                backend: str) -> Any:
    unit = cls.empty_like(module, group_bits, config, backend)
    unit._load_quantized(quantize_groups(weight_matrix(module.weight.detach(), unit.kind),
                                         unit.group_bits, config), module.bias)
    return unit


class GroupQuantLinear(_GroupPacked, QuantLinear):
    """A packed ``nn.Linear`` or ``Conv1D`` with one width per group (see the module doc)."""

    def __init__(self, out_features: int, K: int, group_bits: Any, config: QuantizerConfig, *,
                 bias: bool = True, backend: str = "reference", kind: str = "linear") -> None:
        # 2 bits: the smallest one-width buffers any scheme allows, replaced at once
        super().__init__(out_features, K, 2, config, bias=bias, backend=backend, kind=kind)
        self._init_groups(group_bits, config)

    @classmethod
    def empty_like(cls, module: nn.Module, group_bits: Any, config: QuantizerConfig,  # type: ignore[override]
                   backend: str = "reference") -> Self:
        """A layer shaped for ``module`` and the (out, n_groups) widths, buffers zeroed."""
        kind = "linear" if isinstance(module, nn.Linear) else "conv1d"
        shape = module.weight.shape
        out, K = (shape[1], shape[0]) if kind == "conv1d" else (shape[0], shape[1])
        return _place(cls(out, K, group_bits, config, bias=module.bias is not None, backend=backend,
                          kind=kind), module.weight.device)

    @classmethod
    def from_float(cls, module: nn.Module, group_bits: Any, config: QuantizerConfig | None = None,  # type: ignore[override]
                   backend: str = "reference") -> Self:
        """Quantize ``module`` group by group with the reference quantizer and pack it."""
        return _from_float(cls, module, group_bits, config or QuantizerConfig(), backend)

    def extra_repr(self) -> str:
        return super().extra_repr().replace(f"bits={self.bits}", f"groups=({self._group_repr()})")


class GroupQuantConv2d(_GroupPacked, QuantConv2d):
    """A packed ``nn.Conv2d`` with one width per group: the weight decoded, then ``F.conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int],
                 group_bits: Any, config: QuantizerConfig, **kwargs: Any) -> None:
        super().__init__(in_channels, out_channels, kernel_size, 2, config, **kwargs)
        self._init_groups(group_bits, config)

    @classmethod
    def empty_like(cls, module: nn.Conv2d, group_bits: Any, config: QuantizerConfig,  # type: ignore[override]
                   backend: str = "reference") -> Self:
        """A layer shaped for ``module`` and the (out, n_groups) widths, buffers zeroed."""
        return _place(cls(module.in_channels, module.out_channels, module.kernel_size, group_bits,
                          config, stride=module.stride, padding=module.padding,
                          dilation=module.dilation, groups=module.groups,
                          padding_mode=module.padding_mode, bias=module.bias is not None,
                          backend=backend), module.weight.device)

    @classmethod
    def from_float(cls, module: nn.Module, group_bits: Any, config: QuantizerConfig | None = None,  # type: ignore[override]
                   backend: str = "reference") -> Self:
        """Quantize ``module`` group by group with the reference quantizer and pack it."""
        return _from_float(cls, module, group_bits, config or QuantizerConfig(), backend)

    def extra_repr(self) -> str:
        return super().extra_repr().replace(f"bits={self.bits}", f"groups=({self._group_repr()})")


def is_group_unit(module: nn.Module) -> bool:
    """Whether ``module`` is a packed layer with per-group widths."""
    return isinstance(module, _GroupPacked)


def unit_rows(module: nn.Module) -> int:
    """Output rows of a quantizable module's weight matrix (Linear, Conv1D, Conv2d)."""
    return int(module.weight.shape[1] if quantizable_kind(module) == "conv1d" else module.weight.shape[0])


def group_map(value: tuple[int, ...], out_features: int) -> np.ndarray:
    """A plan entry's per-group widths as an (out, n_groups) array."""
    return np.asarray(value, dtype=np.int64).reshape(out_features, -1)


__all__ = ["GROUP_BACKENDS", "GroupQuantConv2d", "GroupQuantLinear", "group_map", "is_group_unit", "unit_rows"]
