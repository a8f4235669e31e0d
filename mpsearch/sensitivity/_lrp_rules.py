"""Layer-wise relevance propagation over an explicit program of rule-aware operations.

A network is re-expressed as a :class:`Program`: a list of :class:`Op` that
each read earlier values (value 0 is the input) and write one new value.
Relevance flows back through the ops in reverse, each with its own rule:

* ``affine`` (Conv2d, Linear, a BatchNorm folded into its conv, a lone
  BatchNorm as a per-channel affine map): the epsilon rule
  ``R_i = x_i * sum_j w_ij R_j / (z_j + eps * sign(z_j))`` or the z+ rule
  ``R_i = x_i * sum_j w+_ij R_j / sum_i' x_i' w+_i'j`` (bias ignored, for
  x >= 0; a layer whose input has negative entries, such as the stem conv on
  normalised images, falls back to the epsilon rule). Both are computed by
  the gradient trick: ``R_in = x * grad_x(z . s)`` with ``s = R / z``
  held constant. The bias takes its share ``b_j s_j`` of the relevance,
  which is why conservation is exact only for bias-free layers.
* ``linear`` without weights (average / adaptive pooling, the option-A
  shortcut): the epsilon rule through the fixed linear map.
* ``relu``: relevance passes unchanged; ``flatten``: reshaped back.
* ``add`` (residual addition ``a + b``): each branch gets its share of the
  sum, ``R_a = a / (a + b) R`` (stabilised like the epsilon rule).

Besides the relevance of each value, an affine op with a weight also yields
the relevance of each weight, ``w * grad_w(z . s)`` (the contribution
``x_i w_ij s_j`` summed over positions), which sums to the op's input
relevance and is aggregated per quantization group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

RULES = ("epsilon", "zplus")


@dataclass
class Op:
    """One operation: ``kind`` in affine | linear | relu | flatten | add."""

    kind: str
    src: tuple[int, ...]
    fn: Callable[..., Tensor] | None = None  # affine: fn(x, w, b); linear: fn(x)
    weight: Tensor | None = None
    bias: Tensor | None = None
    unit: str | None = None


@dataclass
class Program:
    ops: list[Op] = field(default_factory=list)

    def add(self, op: Op) -> int:
        """Append ``op``; return the index of the value it writes."""
        self.ops.append(op)
        return len(self.ops)

    @property
    def last(self) -> int:
        return len(self.ops)

    def forward(self, x: Tensor) -> list[Tensor]:
        values = [x]
        for op in self.ops:
            ins = [values[i] for i in op.src]
            if op.kind == "affine":
                out = op.fn(ins[0], op.weight, op.bias)
            elif op.kind == "linear":
                out = op.fn(ins[0])
            elif op.kind == "relu":
                out = torch.relu(ins[0])
            elif op.kind == "flatten":
                out = ins[0].flatten(1)
            elif op.kind == "add":
                out = ins[0] + ins[1]
            else:
                raise ValueError(f"unknown op kind {op.kind!r}")
            values.append(out)
        return values


def stabilize(z: Tensor, eps: float) -> Tensor:
    """``z + eps * sign(z)`` with sign(0) = +1, so no division by zero."""
    return torch.where(z >= 0, z + eps, z - eps)


def _affine_rule(op: Op, x: Tensor, R: Tensor, rule: str, eps: float, want_w: bool) -> tuple[Tensor, Tensor | None]:
    use_zplus = rule == "zplus" and bool((x >= 0).all())
    w = op.weight.detach()
    w_used = w.clamp(min=0) if use_zplus else w
    b = None if (use_zplus or op.bias is None) else op.bias.detach()
    xg = x.detach().requires_grad_(True)
    wg = w_used.clone().requires_grad_(want_w)
    with torch.enable_grad():
        z = op.fn(xg, wg, b)
        s = (R / stabilize(z, eps)).detach()
        inputs = (xg, wg) if want_w else (xg,)
        grads = torch.autograd.grad(z, inputs, grad_outputs=s)
    R_in = xg.detach() * grads[0]
    if not want_w:
        return R_in, None
    if use_zplus:  # negative weights carry no relevance under z+
        return R_in, w_used * grads[1]
    return R_in, w * grads[1]


def _linear_rule(op: Op, x: Tensor, R: Tensor, eps: float) -> Tensor:
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = op.fn(xg)
        s = (R / stabilize(z, eps)).detach()
        (g,) = torch.autograd.grad(z, xg, grad_outputs=s)
    return xg.detach() * g


@dataclass
class LRPResult:
    """Relevance of every value (``values[k]``), of unit outputs and of unit weights."""

    values: list[Tensor | None]
    unit_outputs: dict[str, Tensor]
    unit_weights: dict[str, Tensor]


@torch.no_grad()
def propagate(program: Program, x: Tensor, start: Tensor, *, rule: str = "epsilon", eps: float = 1e-6,
              weights: bool = False) -> LRPResult:
    """Run ``program`` on ``x`` and propagate the output relevance ``start`` back to the input."""
    if rule not in RULES:
        raise ValueError(f"`rule` must be one of {RULES}, but got {rule!r}.")
    values = program.forward(x)
    R: list[Tensor | None] = [None] * len(values)
    R[-1] = start
    unit_out: dict[str, Tensor] = {}
    unit_w: dict[str, Tensor] = {}
    for k in range(len(program.ops), 0, -1):
        op, r = program.ops[k - 1], R[k]
        if r is None:
            continue
        ins = [values[i] for i in op.src]
        if op.unit is not None:
            unit_out[op.unit] = r
        if op.kind == "affine":
            r_in, r_w = _affine_rule(op, ins[0], r, rule, eps, weights and op.unit is not None)
            if r_w is not None:
                unit_w[op.unit] = r_w
            outs = [r_in]
        elif op.kind == "linear":
            outs = [_linear_rule(op, ins[0], r, eps)]
        elif op.kind == "relu":
            outs = [r]
        elif op.kind == "flatten":
            outs = [r.reshape(ins[0].shape)]
        else:  # add: split in proportion to each branch's contribution
            s = r / stabilize(ins[0] + ins[1], eps)
            outs = [ins[0] * s, ins[1] * s]
        for i, o in zip(op.src, outs):
            R[i] = o if R[i] is None else R[i] + o
    return LRPResult(values=R, unit_outputs=unit_out, unit_weights=unit_w)
