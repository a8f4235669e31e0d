"""Measured lookup tables: latency of our own packed kernels, interpolated between measured shapes.

A table (written by ``mpsearch hw calibrate``, :mod:`mpsearch.workflows.hw_calibrate`) holds the best
(minimum over repeats) time in ms of one ``numba_cpu.gemm`` call for every (bits, shape, batch) of a grid, where a shape
is a weight matrix (out, K) and batch the number of activation rows. :class:`LUTLatencyModel`
predicts any (out, K, bits, batch) this way:

* **Size and batch**: bilinear interpolation of log(ms) over (log(out*K), log(batch)) on the
  grid. The measured values come back exactly at measured points. Beyond the largest size or
  batch the last segment is extended with its log-log slope clamped to [0, 1] (time never falls
  and at most doubles when the work doubles); below the smallest the smallest value is kept
  (the per-call floor).
* **Monotone**: before interpolating, the table is replaced by its running maximum along size
  and along batch, so predictions never decrease with more weights or more rows (timing noise
  on a shared machine can make a larger shape measure faster). Measured points that were
  already monotone come back unchanged.
* **Bits**: linear interpolation between the measured widths, clamped at the ends.
* **im2col glue** (convolutions only, outside the table's GEMM times): the packed convolution
  unfolds its input and copies the columns and the output around the kernel call. The table
  holds this glue's time measured at a few convolutions (``im2col``: ``elements`` =
  rows * (K + out) and ``ms``), interpolated log-log in elements (proportional to elements past
  the largest, the smallest value below the smallest); it is added to every conv unit in :meth:`LUTLatencyModel.latency_column`
  and :meth:`LUTLatencyModel.model_latency_ms` (not in :meth:`LUTLatencyModel.predict_ms`).

A convolution is predicted as its im2col GEMM: (out_ch, in_ch*kh*kw) with batch =
out_h*out_w*N (``LayerShapes.rows * N``). The table is only valid on the machine and thread
count it was measured with (both recorded in ``machine``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mpsearch.core.documents import check_envelope, read_json
from mpsearch.core.errors import DataError
from mpsearch.hardware_models.shapes import LayerShapes, plan_bits_array

if TYPE_CHECKING:
    from mpsearch.core.costs import CostTable

FORMAT = "mpsearch.latency_lut"
VERSION = 1
FIX = "Run `mpsearch hw calibrate` again to write it."


def _axis(values: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower grid index and fraction t of ``x`` on a log grid (t may exceed 1 past the end)."""
    if len(values) == 1:
        return np.zeros(x.shape, np.int64), np.zeros(x.shape)
    lv, lx = np.log(values), np.log(np.maximum(x, 1e-300))
    i = np.clip(np.searchsorted(lv, lx, side="right") - 1, 0, len(values) - 2)
    t = (lx - lv[i]) / (lv[i + 1] - lv[i])
    return i, np.maximum(t, 0.0)


@dataclass(frozen=True, kw_only=True, eq=False)
class LUTLatencyModel:
    """Latency per (out, K, bits, batch) from a measured table (see the module docstring)."""

    bits: tuple[int, ...]
    shapes: np.ndarray  # (n_shapes, 2) (out, K), increasing out*K
    batches: np.ndarray  # increasing
    ms: np.ndarray  # (n_bits, n_shapes, n_batches) measured times
    machine: Mapping[str, Any] = field(default_factory=dict)
    im2col: Mapping[str, Any] = field(default_factory=dict)  # {"elements": [...], "ms": [...]}

    def __post_init__(self) -> None:
        shapes = np.asarray(self.shapes, np.int64).reshape(-1, 2)
        batches = np.asarray(self.batches, np.int64)
        ms = np.asarray(self.ms, np.float64)
        nw = shapes[:, 0] * shapes[:, 1]
        expect = (len(self.bits), len(shapes), len(batches))
        if (ms.shape != expect or not len(shapes) or not len(batches) or np.any(np.diff(nw) <= 0)
                or np.any(np.diff(batches) <= 0) or np.any(batches < 1) or list(self.bits) != sorted(set(self.bits))
                or not np.all(np.isfinite(ms)) or np.any(ms <= 0)):
            raise DataError(f"a latency table needs strictly increasing bits, weight counts and batches and "
                            f"positive times of shape {expect}, but got {ms.shape}. Re-run `mpsearch hw calibrate`.")
        object.__setattr__(self, "bits", tuple(int(b) for b in self.bits))
        object.__setattr__(self, "shapes", shapes)
        object.__setattr__(self, "batches", batches)
        object.__setattr__(self, "ms", ms)
        mono = np.maximum.accumulate(np.maximum.accumulate(ms, axis=1), axis=2)
        object.__setattr__(self, "_mono", mono)

    @property
    def n_weights(self) -> np.ndarray:
        return self.shapes[:, 0] * self.shapes[:, 1]

    def _at_bits(self, j: int, nw: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """ms at the j-th measured width (bilinear in log-log; measured points returned exactly)."""
        mono = self._mono[j]  # type: ignore[attr-defined]
        table = np.log(mono)
        lw, lb = np.log(self.n_weights.astype(np.float64)), np.log(self.batches.astype(np.float64))
        i, t = _axis(self.n_weights.astype(np.float64), nw)
        k, u = _axis(self.batches.astype(np.float64), batch)
        t0, u0 = np.minimum(t, 1.0), np.minimum(u, 1.0)
        i1, k1 = np.minimum(i + 1, len(lw) - 1), np.minimum(k + 1, len(lb) - 1)
        def at(tt, uu):
            return ((table[i, k] * (1 - uu) + table[i, k1] * uu) * (1 - tt)
                                     + (table[i1, k] * (1 - uu) + table[i1, k1] * uu) * tt)
        base = at(t0, u0)
        if len(lw) > 1:  # past the largest size: last segment's slope, clamped to [0, 1]
            seg = lw[i1] - lw[i]
            base = base + np.maximum(t - 1, 0) * seg * np.clip((at(1.0, u0) - at(0.0, u0)) / seg, 0, 1)
        if len(lb) > 1:
            seg = lb[k1] - lb[k]
            base = base + np.maximum(u - 1, 0) * seg * np.clip((at(t0, 1.0) - at(t0, 0.0)) / seg, 0, 1)
        value = np.exp(base)
        exact = np.isin(t, (0.0, 1.0)) & np.isin(u, (0.0, 1.0))
        if np.any(exact):
            ii = np.where(t == 1.0, i1, i)
            kk = np.where(u == 1.0, k1, k)
            value = np.where(exact, mono[ii, kk], value)
        return value

    def predict_ms(self, out_features: Any, fan_in: Any, bits: Any, batch: Any = 1) -> np.ndarray:
        """Predicted ms of one call, broadcast over the arguments.

        >>> lut = LUTLatencyModel(bits=(4,), shapes=[(10, 10), (100, 100)], batches=[1, 10],
        ...                       ms=[[[1.0, 2.0], [4.0, 8.0]]])
        >>> float(lut.predict_ms(100, 100, 4, 10)), round(float(lut.predict_ms(10, 100, 4, 1)), 3)
        (8.0, 2.0)
        """
        out, K, b, B = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (out_features, fan_in, bits, batch)))
        if np.any(out < 1) or np.any(K < 1) or np.any(B < 1) or np.any(b < 1):
            raise DataError("out_features, fan_in, bits and batch must all be >= 1. Pass real layer shapes.")
        vals = np.stack([self._at_bits(j, out * K, B) for j in range(len(self.bits))])
        known = np.asarray(self.bits, np.float64)
        if len(known) == 1:
            return vals[0]
        pos = np.interp(b, known, np.arange(len(known), dtype=np.float64))  # clamps at the ends
        lo = np.minimum(np.floor(pos).astype(np.int64), len(known) - 2)
        frac = pos - lo
        def pick(idx):
            return np.take_along_axis(vals, idx[None], 0)[0]
        return pick(lo) * (1 - frac) + pick(lo + 1) * frac

    def glue_ms(self, shapes: LayerShapes, batch: int = 1) -> np.ndarray:
        """Per-unit im2col time (ms) of the convolutions of ``shapes``; 0 for linear units."""
        elements = shapes.rows.astype(np.float64) * batch * (shapes.fan_in + shapes.out_features)
        xs = np.asarray(self.im2col.get("elements", ()), np.float64)
        ys = np.asarray(self.im2col.get("ms", ()), np.float64)
        if not len(xs) or np.any(np.diff(xs) <= 0) or len(ys) != len(xs) or np.any(ys <= 0):
            return np.zeros(len(shapes.names))
        lx = np.log(np.maximum(elements, 1.0))
        glue = np.exp(np.interp(lx, np.log(xs), np.log(ys)))
        glue = np.where(elements > xs[-1], ys[-1] * elements / xs[-1], glue)
        return np.where(shapes.is_conv & (shapes.rows > 0), glue, 0.0)

    def latency_column(self, costs: CostTable, shapes: LayerShapes, *, batch: int = 1) -> np.ndarray:
        """Resource column ``latency_ms`` (items x choices) for ``batch`` samples."""
        s = shapes.for_costs(costs)
        def col(a):
            return a[:, None]
        gemm = self.predict_ms(col(s.out_features), col(s.fan_in), np.asarray(costs.bits)[None, :],
                               col(np.maximum(s.rows, 1)) * batch)
        return gemm + col(self.glue_ms(s, batch))

    def model_latency_ms(self, shapes: LayerShapes, bits: Mapping[str, Any], *, batch: int = 1) -> float:
        """Predicted ms of every quantizable layer of a plan, summed (every unit needs 1..8 bits)."""
        b = plan_bits_array(shapes, bits)
        if np.any(b > 8):
            raise DataError("the latency table covers packed units (1..8 bits), but the plan leaves units in float. "
                            "Give every unit a width in 1..8.")
        called = shapes.rows > 0
        per = self.predict_ms(shapes.out_features, shapes.fan_in, b, np.maximum(shapes.rows, 1) * batch)
        return float(per[called].sum() + self.glue_ms(shapes, batch).sum())

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "machine": dict(self.machine), "bits": list(self.bits),
                "shapes": self.shapes.tolist(), "batches": self.batches.tolist(),
                "im2col": dict(self.im2col), "ms": {str(b): self.ms[j].tolist() for j, b in enumerate(self.bits)}}

    @classmethod
    def from_dict(cls, doc: Any) -> LUTLatencyModel:
        check_envelope(doc, error=DataError, what="a latency table", format=FORMAT, versions=(VERSION,), fix=FIX)
        try:
            bits = tuple(int(b) for b in doc["bits"])
            return cls(bits=bits, shapes=doc["shapes"], batches=doc["batches"],
                       ms=[doc["ms"][str(b)] for b in bits], machine=doc.get("machine", {}),
                       im2col=doc.get("im2col", {}))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"a latency table is malformed: {err!r}. {FIX}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> LUTLatencyModel:
        return cls.from_dict(read_json(path, error=DataError, what="a latency table", fix=FIX))
