"""Backends that multiply packed weights, chosen by name, declared op by op.

A :class:`Backend` declares the ops it implements, each on the packed arrays of one layer
(``packed`` (out, ceil(K*bits/8)) uint8, ``scale`` (out, n_groups), ``zero`` (out, n_groups)
uint8, see :mod:`mpsearch.kernels.packing`), all returning float32 tensors:

=============  ===================================================  ==================
op             call                                                 result
=============  ===================================================  ==================
``gemv``       ``gemv(packed, scale, zero, x, bits, K, G)``, x (K,)  y = W x, (out,)
``gemm``       ``gemm(packed, scale, zero, X, bits, K, G)``, X (B, K)  X W^T, (B, out)
``dequantize`` ``dequantize(packed, scale, zero, bits, K, G)``      W, (out, K)
=============  ===================================================  ==================

An op a backend lacks runs on the reference, in plain PyTorch (unpack, the quantizer's own
:func:`~mpsearch.kernels.quantize.dequantize`, a float matmul), except that a batch-1 product
runs the backend's own ``gemm`` on one row when it has no ``gemv``. A backend with a product
(``gemv`` or ``gemm``) makes the quantized Linear layers multiply the packed weight
(convolutions decode their weight into a reused buffer and call torch's own conv, see
:mod:`mpsearch.deploy.dispatch`); one without runs the float op on its dequantized weight,
as ``"reference"`` does (bit for bit the fake-quant model, any convolution).

Built in: ``"reference"`` (dequantize only), ``"numba"`` (fused CPU kernels,
:mod:`mpsearch.kernels.numba_cpu`), ``"torch"`` (portable packed matmul,
:mod:`mpsearch.kernels.torch_packed`). Add one with :func:`register_backend`:

>>> from mpsearch.kernels.torch_packed import packed_matmul
>>> mine = Backend("mine", gemm=packed_matmul)  # then: register_backend(mine)
>>> mine.ops, mine.multiplies, mine.op("dequantize") is reference_dequantize
(('gemm',), True, True)
>>> get_backend("numba").ops
('gemv', 'gemm')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mpsearch.core.config import QuantizerConfig, Scheme
from mpsearch.core.errors import ConfigError, DataError, UnknownNameError
from mpsearch.core.registry import Registry
from mpsearch.kernels import numba_cpu
from mpsearch.kernels._operands import check_activations, check_operands
from mpsearch.kernels.packing import unpack
from mpsearch.kernels.quantize import QuantizedWeight, dequantize
from mpsearch.kernels.torch_packed import dequantize_packed, packed_matmul

OPS = ("gemv", "gemm", "dequantize")
NUMBA_ROWS = 8192  # activation rows per Numba gemm call: amortizes its per-call setup


@dataclass(frozen=True)
class Backend:
    """A named set of ops (``gemv``, ``gemm``, ``dequantize``; None: run on the reference).

    ``devices`` lists the device types (``"cpu"``, ``"cuda"``, ...) the ops run on; None means
    any device their inputs are on.
    """

    name: str
    gemv: Callable[..., Tensor] | None = None
    gemm: Callable[..., Tensor] | None = None
    dequantize: Callable[..., Tensor] | None = None
    devices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"A backend's `name` must be a non-empty string, but got "
                              f"name={self.name!r}. Pass e.g. Backend('mine', gemm=...).")
        for op in OPS:
            if getattr(self, op) is not None and not callable(getattr(self, op)):
                raise ConfigError(f"Backend op `{op}` must be callable or None, but got "
                                  f"{getattr(self, op)!r} for backend {self.name!r}. Pass a "
                                  f"function (signatures: mpsearch.kernels.backends).")
        if self.devices is not None:
            devices = tuple(self.devices)
            if not devices or not all(isinstance(d, str) and d for d in devices):
                raise ConfigError(f"`devices` must be None or device types such as ('cpu',), "
                                  f"but got devices={self.devices!r} for backend {self.name!r}.")
            object.__setattr__(self, "devices", devices)

    @property
    def ops(self) -> tuple[str, ...]:
        """The ops this backend implements itself."""
        return tuple(op for op in OPS if getattr(self, op) is not None)

    @property
    def multiplies(self) -> bool:
        """Whether it multiplies packed weights (else layers run the float op on its
        dequantized weight)."""
        return self.gemv is not None or self.gemm is not None

    def op(self, name: str) -> Callable[..., Tensor]:
        """The function that runs op ``name`` here: this backend's own, else the reference's
        (for ``gemv``: this backend's ``gemm`` on one row first)."""
        if name not in OPS:
            raise UnknownNameError(f"A backend op must be one of {list(OPS)}, but got "
                                   f"{name!r}. Pass one of those names.")
        own = getattr(self, name)
        if own is not None:
            return own
        if name == "gemv" and self.gemm is not None:
            gemm = self.gemm
            return lambda packed, scale, zero, x, bits, K, G: gemm(
                packed, scale, zero, x.reshape(1, -1), bits, K, G)[0]
        return _REFERENCE_OPS[name]

    def matmul(self, packed: Tensor, scale: Tensor, zero: Tensor, x2d: Tensor, bits: int,
               K: int, G: int | None) -> Tensor:
        """(B, K) float32 -> (B, out) float32: ``gemv`` for one row, ``gemm`` for others."""
        if self.devices is not None and x2d.device.type not in self.devices:
            raise DataError(f"The {self.name!r} backend runs on {' or '.join(self.devices)} "
                            f"only, but the input is on {x2d.device}. Move the model and its "
                            f"inputs there, or use backend='torch', which runs on any device.")
        if x2d.shape[0] == 1:
            return self.op("gemv")(packed, scale, zero, x2d[0], bits, K, G).reshape(1, -1)
        return self.op("gemm")(packed, scale, zero, x2d, bits, K, G)


def reference_dequantize(packed: Tensor, scale: Tensor, zero: Tensor, bits: int, K: int,
                         G: int | None) -> Tensor:
    """The float32 weight (out, K) by the quantizer's own formula, ``(code - zero) * scale``."""
    shape = check_operands(packed, scale, zero, bits, K, G)
    config = QuantizerConfig(scheme=Scheme.AFFINE,
                             group_size=None if shape.n_groups == 1 else shape.group)
    return dequantize(QuantizedWeight(codes=unpack(packed, shape.bits, shape.K), scale=scale,
                                      zero=zero, bits=shape.bits, config=config))


def reference_gemm(packed: Tensor, scale: Tensor, zero: Tensor, X: Tensor, bits: int, K: int,
                   G: int | None) -> Tensor:
    """``X W^T`` (B, out) with W dequantized in full first."""
    check_activations(X, K, "X")
    return X.to(torch.float32) @ reference_dequantize(packed, scale, zero, bits, K, G).T


def reference_gemv(packed: Tensor, scale: Tensor, zero: Tensor, x: Tensor, bits: int, K: int,
                   G: int | None) -> Tensor:
    """``W x`` (out,) with W dequantized in full first."""
    check_activations(x, K)
    return reference_dequantize(packed, scale, zero, bits, K, G) @ x.to(torch.float32)


_REFERENCE_OPS = {"gemv": reference_gemv, "gemm": reference_gemm,
                  "dequantize": reference_dequantize}


def _numba_gemm(packed: Tensor, scale: Tensor, zero: Tensor, X: Tensor, bits: int, K: int,
                G: int | None) -> Tensor:
    """Numba's gemm over chunks of :data:`NUMBA_ROWS` rows."""
    X = X.detach().contiguous()
    parts = [numba_cpu.gemm(packed, scale, zero, X[r:r + NUMBA_ROWS], bits, K, G)
             for r in range(0, X.shape[0], NUMBA_ROWS)]
    if not parts:
        return torch.zeros((0, packed.shape[0]), dtype=torch.float32, device=X.device)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


BACKENDS: Registry[Backend] = Registry("backend")


def register_backend(backend: Backend) -> Backend:
    """Make ``backend`` available by its name (to layers, :func:`~mpsearch.deploy.apply.apply`,
    :func:`~mpsearch.deploy.export.load`); names are unique. Returns ``backend``."""
    if not isinstance(backend, Backend):
        raise ConfigError(f"register_backend takes a Backend, but got {type(backend).__name__}. "
                          f"Wrap your ops: register_backend(Backend('mine', gemm=...)).")
    BACKENDS.register(backend.name)(_constant(backend))
    return backend


def _constant(backend: Backend) -> Callable[[], Backend]:
    def factory() -> Backend:
        return backend
    return factory


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; :class:`UnknownNameError` listing them otherwise."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise UnknownNameError(f"`backend` must be one of {list(BACKENDS.names())}, but got "
                               f"backend={name!r}. Pass backend='reference' to run anywhere, or "
                               f"register yours with mpsearch.kernels.backends.register_backend.")
    return BACKENDS.get(name)()


for _builtin in (Backend("reference", dequantize=reference_dequantize),
                 Backend("numba", gemv=numba_cpu.gemv, gemm=_numba_gemm, devices=("cpu",)),
                 Backend("torch", gemv=packed_matmul, gemm=packed_matmul,
                         dequantize=dequantize_packed)):
    register_backend(_builtin)

__all__ = ["BACKENDS", "OPS", "Backend", "get_backend", "reference_dequantize", "reference_gemm",
           "reference_gemv", "register_backend"]
