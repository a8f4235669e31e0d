"""A packed token embedding, alone or sharing its codes with a tied ``lm_head``.

:class:`QuantEmbedding` stores an ``nn.Embedding`` table as packed codes in the layout of a
packed Linear (:mod:`mpsearch.deploy.modules`): one output channel per row of the table, groups
of G along the hidden dimension. A lookup dequantizes only the rows it reads, with the backend's
dequantize kernel (Numba's on ``"numba"``, bit-exact with the reference formula), so the table
is never decoded whole. In a decoder whose ``lm_head`` reads the embedding's weight, the two are
one unit: :meth:`QuantEmbedding.tied_to` builds a table that holds no buffers of its own and reads
the ``lm_head`` :class:`~mpsearch.deploy.modules.QuantLinear`'s codes, scales and zero-points, so
the packed model and its ``state_dict`` hold one copy, and moving the model moves it once.

>>> from torch import nn
>>> q = QuantEmbedding.from_float(nn.Embedding(10, 16), bits=4)
>>> q(torch.tensor([[1, 2, 3]])).shape, sorted(q.state_dict())
(torch.Size([1, 3, 16]), ['packed', 'scale'])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from mpsearch.core.config import FLOAT_BITS, QuantizerConfig
from mpsearch.core.errors import DataError, PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy import dispatch
from mpsearch.deploy.modules import QuantLinear, _PackedUnit
from mpsearch.kernels.backends import get_backend
from mpsearch.kernels.dequant import dequantize_into
from mpsearch.kernels.quantize import quantize
from mpsearch.space.units import embedding_blocker, is_token_embedding, scan_model

_SHARED = ("packed", "scale", "zero")


class QuantEmbedding(_PackedUnit):
    """A packed ``nn.Embedding``: ``forward(ids)`` returns the dequantized rows ``ids`` select.

    Buffers as :class:`~mpsearch.deploy.modules.QuantLinear` (``packed``, ``scale``, ``zero``),
    with ``out_features`` the vocabulary and ``K`` the hidden size; none when tied (they are the
    ``lm_head``'s). The rows come back in ``dtype``, the float table's dtype.
    """

    kind = "embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, config: QuantizerConfig, *,
                 padding_idx: int | None = None, backend: str = "reference",
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(num_embeddings, embedding_dim, bits, config, bias=False, backend=backend)
        self.padding_idx = padding_idx
        self.dtype = dtype

    def __getattr__(self, name: str) -> Any:
        shared = self.__dict__.get("_shared")
        if shared is not None and name in _SHARED:
            return getattr(shared, name)
        return super().__getattr__(name)

    @property
    def tied(self) -> QuantLinear | None:
        """The packed layer whose codes this table reads, or None when it holds its own."""
        return self.__dict__.get("_shared")

    @staticmethod
    def check_replaceable(module: nn.Module) -> nn.Embedding:
        """``module`` if a packed table computes what it computes, else :class:`PlanMismatchError`."""
        why = "it is not an nn.Embedding with a 2-D float weight" if not is_token_embedding(module) \
            else embedding_blocker(module)
        if why:
            raise PlanMismatchError(f"a packed table must compute what the embedding computes, but {why} "
                                    f"({type(module).__name__}). Plan it at 16 bits to keep it in floating point.")
        return module  # type: ignore[return-value]

    @classmethod
    def empty_like(cls, module: nn.Module, bits: int, config: QuantizerConfig,
                   backend: str = "reference") -> QuantEmbedding:
        """A table shaped for the ``nn.Embedding`` ``module`` with zeroed buffers."""
        table = cls.check_replaceable(module)
        rows, dim = table.weight.shape
        return cls(rows, dim, bits, config, padding_idx=table.padding_idx, backend=backend,
                   dtype=table.weight.dtype).to(table.weight.device)

    @classmethod
    def from_float(cls, module: nn.Module, bits: int, config: QuantizerConfig | None = None,
                   backend: str = "reference") -> QuantEmbedding:
        """Quantize the table of ``module`` per row with the reference quantizer and pack it."""
        config = config or QuantizerConfig()
        q = cls.empty_like(module, bits, config, backend)
        q._load_quantized(quantize(module.weight.detach(), bits, config), None)
        return q

    @classmethod
    def tied_to(cls, layer: QuantLinear, module: nn.Module) -> QuantEmbedding:
        """A table for ``module`` (an ``nn.Embedding`` whose weight ``layer`` was packed from)
        that reads ``layer``'s buffers: one copy of the codes for both."""
        table = cls.check_replaceable(module)
        shape = (layer.out_features, layer.K)
        if "group_bits" in layer._buffers:
            raise PlanMismatchError(
                "a tied embedding reads its layer's codes, so the unit needs one width, but it mixes per-group "
                "widths. Give the tied unit one width, or use fake_quantize_model.")
        if not isinstance(layer, QuantLinear) or layer.kind != "linear" or tuple(table.weight.shape) != shape:
            raise PlanMismatchError(
                f"a tied table must have the shape of its layer's (out, in) weight, but the embedding is "
                f"{tuple(table.weight.shape)} and the layer {layer.kind} {shape}. Tie an embedding to the Linear "
                "that reads its weight.")
        q = cls(1, layer.K, layer.bits, layer.config, padding_idx=table.padding_idx, backend=layer.backend,
                dtype=table.weight.dtype)
        for name in _SHARED:
            q._buffers.pop(name, None)
            q.__dict__.pop(name, None)
        q.out_features = layer.out_features
        q.__dict__["_shared"] = layer
        return q

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """As for the packed layers (scales keep their dtype); the rows looked up come out in
        the dtype the model was cast to (``.to(torch.bfloat16)``, ``.half()``, ``.float()``)."""
        out = super()._apply(fn, recurse)
        cast = fn(torch.zeros(1, dtype=self.dtype))
        if isinstance(cast, Tensor) and cast.is_floating_point():
            self.dtype = cast.dtype
        return out

    def _decode(self, packed: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
        """(rows, K) float32 from the selected rows' packed codes, on the backend's kernel."""
        if self.backend == dispatch.ROUTED and packed.device.type == "cpu":
            return dequantize_into(packed, scale, zero, self.bits, self.K, self.G)
        return get_backend(self.backend).op("dequantize")(packed, scale, zero, self.bits, self.K, self.G)

    def forward(self, ids: Tensor) -> Tensor:
        if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex():
            raise DataError(f"an embedding looks up integer token ids, but got "
                            f"{type(ids).__name__ if not isinstance(ids, Tensor) else ids.dtype}. Pass a LongTensor.")
        flat = ids.reshape(-1).to(torch.long)
        scale = self.scale.index_select(0, flat)
        zero = self.zero.index_select(0, flat) if self.zero is not None else \
            torch.full(scale.shape, 1 << (self.bits - 1), dtype=torch.uint8, device=scale.device)
        rows = self._decode(self.packed.index_select(0, flat).contiguous(), scale.contiguous(), zero.contiguous())
        return rows.reshape(*ids.shape, self.K).to(self.dtype)

    def extra_repr(self) -> str:
        tied = f", tied={True}" if self.tied is not None else ""
        return (f"{self.out_features}, {self.K}, bits={self.bits}, G={self.G}, scheme={self.scheme}, "
                f"backend={self.backend}{tied}")


def plan_tables(model: nn.Module, plan: BitPlan) -> list[str]:
    """The plan's units that are token embeddings (``nn.Embedding``), at any width."""
    return [n for n in plan.bits if isinstance(model.get_submodule(n), nn.Embedding)]


def without_tables(model: nn.Module, plan: BitPlan) -> BitPlan:
    """``plan`` without its embedding units, for GPTQ, which quantizes layers from their inputs:
    refused when one of them is below 16 bits."""
    tables = plan_tables(model, plan)
    low = sorted(n for n in tables if plan.bits[n] != FLOAT_BITS)
    if low:
        raise PlanMismatchError(
            "GPTQ quantizes a layer from the inputs it sees, which a token embedding does not have, but the plan "
            f"gives embedding unit(s) {low} fewer than 16 bits. Give them 16 bits, or use round-to-nearest "
            "(method='rtn') for this plan.")
    if not tables:
        return plan
    keep = [n for n in plan.bits if n not in tables]
    return replace(plan, bits={n: plan.bits[n] for n in keep},
                   pins={n: b for n, b in plan.pins.items() if n in keep},
                   activation_bits={n: b for n, b in plan.activation_bits.items() if n in keep},
                   activation_ranges={n: r for n, r in plan.activation_ranges.items() if n in keep})


def check_table_activations(model: nn.Module, plan: BitPlan) -> None:
    """Refuse activation bits on an embedding unit: its input is token ids, which quantizing would change."""
    bad = sorted(n for n in plan_tables(model, plan) if plan.activation_bits.get(n, FLOAT_BITS) != FLOAT_BITS)
    if bad:
        raise PlanMismatchError(f"activation bits quantize a unit's input, which for an embedding is token ids, but the "
                                f"plan gives {bad} activation bits. Leave embedding units out of activation_bits (or 16).")


def tied_names(model: nn.Module, names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """For each of ``names`` that is a unit whose weight other modules read, those modules."""
    wanted = set(names)
    return {u.name: u.tied for u in scan_model(model, embeddings=True)[0] if u.name in wanted and u.tied}


__all__ = ["QuantEmbedding", "check_table_activations", "plan_tables", "tied_names", "without_tables"]
