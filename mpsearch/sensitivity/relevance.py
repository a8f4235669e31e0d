"""Layer relevance (LRP) as a unit's importance, after LRP-QViT.

Ranjan and Savakis, "LRP-QViT: Mixed-Precision Vision Transformer
Quantization via Layer-wise Relevance Propagation" (arXiv:2401.11243, 2024)
propagate the relevance of the predicted class back through the network and
turn the relevance of each layer's neurons into a layer contribution score,
which then ranks layers for bit allocation. Here a unit's score is its share
of the summed absolute relevance: ``sum_n |R_n^u| / sum_v sum_n |R_n^v|``,
with ``R^u`` the relevance of unit u's output neurons, summed over the
calibration samples. (This is the share-of-absolute-relevance reading of the
paper's layer score; the absolute value keeps the negative relevance the
epsilon rule produces; the paper's exact normalisation could not be checked
against its text here, so treat this as our reading.) The cost table multiplies it with
``||Q_b(W) - W||^2`` like every score.

How the propagation is done:

* CIFAR ResNets (:mod:`mpsearch.zoo.resnet`) and plain ``nn.Sequential``
  stacks of Conv2d, Linear, BatchNorm2d, ReLU, average pooling and Flatten are
  re-expressed as explicit rule-aware programs (:mod:`._lrp_rules`): the
  epsilon or the z+ rule per affine layer, proportional splitting at residual
  additions. Each BatchNorm2d that follows a conv is folded into it
  (``W' = W gamma / sigma``, ``b' = beta - gamma mu / sigma``); its bias
  then absorbs relevance like any bias, so relevance is conserved exactly only
  in networks without biases and BatchNorm shifts. A BatchNorm2d that follows
  no conv is a per-channel affine layer under the same rule.
* BERT-style encoders (MiniLM): gradient x input on a graph with attention,
  LayerNorm and GELU held locally linear (:mod:`._relevance_bert`), LRP-0.

Note that under the z+ rule every relevance is non-negative and conserved, so
on a bias-free network all units would get the same share; the epsilon rule
(default) is the informative one. On a grouped space (quantizer with a
``group_size``), ``group_scores[unit]`` (out, n_groups) splits the unit's
score over its groups in proportion to the summed |relevance| of the group's
weights (``w * dF/dw``), so a unit's group scores add up to its score.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mpsearch.core.errors import ConfigError
from mpsearch.kernels.fake import quantizable_kind
from mpsearch.kernels.quantize import num_groups, weight_matrix
from mpsearch.sensitivity._lrp_rules import RULES, Op, Program, propagate
from mpsearch.sensitivity._protocols import is_cifar_resnet
from mpsearch.sensitivity.base import ESTIMATORS, Estimator, Sensitivity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import SearchSpace, unit_modules
from mpsearch.space.forward import batch_inputs, batch_labels, is_encoder_batch
from mpsearch.space.hooks import model_mode

SUPPORTED = "Conv2d, Linear, BatchNorm2d, ReLU, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity"


def _conv_fn(conv: nn.Conv2d):
    if conv.padding_mode != "zeros":
        raise ConfigError(f"LRP supports zero-padded convs, but got padding_mode={conv.padding_mode!r}.")
    return lambda x, w, b: F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)


def _linear_fn(x, w, b):
    return F.linear(x, w, b)


def _channel_affine(x, w, b):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * w.view(shape) + (0 if b is None else b.view(shape))


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = 1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.weight is not None:
        scale, shift = scale * bn.weight, shift * bn.weight
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, src: int, unit: str) -> Op:
    w = conv.weight.detach()
    b = None if conv.bias is None else conv.bias.detach()
    if bn is not None:
        scale, shift = _bn_scale_shift(bn)
        w = w * scale.view(-1, 1, 1, 1)
        b = shift if b is None else b * scale + shift
    return Op("affine", (src,), fn=_conv_fn(conv), weight=w, bias=b, unit=unit)


def resnet_program(model: nn.Module) -> Program:
    """The CIFAR ResNet as an LRP program (BN folded, residual adds split proportionally)."""
    prog = Program()
    v = prog.add(_conv_bn(model.conv1, model.bn1, 0, "conv1"))
    v = prog.add(Op("relu", (v,)))
    for s, stage in enumerate((model.layer1, model.layer2, model.layer3), start=1):
        for i, blk in enumerate(stage):
            name, inp = f"layer{s}.{i}", v
            a = prog.add(_conv_bn(blk.conv1, blk.bn1, inp, f"{name}.conv1"))
            a = prog.add(Op("relu", (a,)))
            a = prog.add(_conv_bn(blk.conv2, blk.bn2, a, f"{name}.conv2"))
            sc = inp if isinstance(blk.shortcut, nn.Identity) else prog.add(Op("linear", (inp,), fn=blk.shortcut))
            v = prog.add(Op("relu", (prog.add(Op("add", (a, sc))),)))
    v = prog.add(Op("linear", (v,), fn=lambda x: F.adaptive_avg_pool2d(x, 1)))
    v = prog.add(Op("flatten", (v,)))
    lin = model.linear
    prog.add(Op("affine", (v,), fn=_linear_fn, weight=lin.weight.detach(), bias=lin.bias.detach(), unit="linear"))
    return prog


def sequential_program(model: nn.Sequential, prefix: str = "") -> Program:
    """A flat ``nn.Sequential`` as an LRP program; a BatchNorm2d after a conv is folded into it."""
    prog, v = Program(), 0
    children = list(model.named_children())
    i = 0
    while i < len(children):
        name, m = children[i]
        nxt = children[i + 1][1] if i + 1 < len(children) else None
        if isinstance(m, nn.Conv2d):
            bn = nxt if isinstance(nxt, nn.BatchNorm2d) else None
            v = prog.add(_conv_bn(m, bn, v, prefix + name))
            i += 2 if bn is not None else 1
            continue
        if isinstance(m, nn.Linear):
            b = None if m.bias is None else m.bias.detach()
            v = prog.add(Op("affine", (v,), fn=_linear_fn, weight=m.weight.detach(), bias=b, unit=prefix + name))
        elif isinstance(m, nn.BatchNorm2d):
            scale, shift = _bn_scale_shift(m)
            v = prog.add(Op("affine", (v,), fn=_channel_affine, weight=scale, bias=shift))
        elif isinstance(m, nn.ReLU):
            v = prog.add(Op("relu", (v,)))
        elif isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            v = prog.add(Op("linear", (v,), fn=m))
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ConfigError(f"LRP supports Flatten(1, -1) only, but got {m!r}.")
            v = prog.add(Op("flatten", (v,)))
        elif not isinstance(m, (nn.Dropout, nn.Identity)):
            raise ConfigError(
                f"LRP rules exist for {SUPPORTED}, but layer {prefix + name!r} is {type(m).__name__}. "
                "Use a model built from those layers, a CIFAR ResNet, or a BERT encoder."
            )
        i += 1
    return prog


def build_program(model: nn.Module) -> Program:
    """The LRP program of a supported model, or a ConfigError naming what is supported."""
    if is_cifar_resnet(model):
        return resnet_program(model)
    if isinstance(model, nn.Sequential):
        return sequential_program(model)
    raise ConfigError(
        f"LRP needs a CIFAR ResNet, an nn.Sequential of {SUPPORTED}, or a BERT encoder, "
        f"but got {type(model).__name__}. Use another estimator for this model."
    )


def group_sums(r_weight: torch.Tensor, kind: str, config) -> np.ndarray:
    """|relevance| of a weight summed per quantization group: (out, n_groups)."""
    mat = weight_matrix(r_weight.abs(), kind).double()
    n = num_groups(mat.shape[1], config)
    g = -(-mat.shape[1] // n)
    return F.pad(mat, (0, n * g - mat.shape[1])).reshape(mat.shape[0], n, g).sum(-1).numpy()


@ESTIMATORS.register("lrp")
class LayerRelevance(Estimator):
    """LRP-QViT layer relevance: a unit's share of the summed absolute relevance.

    >>> est = LayerRelevance(rule="epsilon", eps=1e-2, progress=False)
    >>> # sens = est.estimate(load_pretrained("resnet20"), calib, discover(model))
    """

    name = "lrp"
    supports_groups = True

    def __init__(self, *, rule: str = "epsilon", eps: float = 1e-2, target: str = "predicted",
                 seed: int = 0, progress: bool = True, time_limit: float | None = None) -> None:
        if rule not in RULES:
            raise ConfigError(f"`rule` must be one of {RULES}, but got rule={rule!r}. Use 'epsilon'.")
        if not eps > 0:
            raise ConfigError(f"`eps` must be positive, but got eps={eps!r}. Use e.g. 1e-2.")
        if target not in ("predicted", "label"):
            raise ConfigError(f"`target` must be 'predicted' or 'label', but got target={target!r}.")
        self.rule, self.eps, self.target = rule, eps, target
        self.seed, self.progress, self.time_limit = seed, progress, time_limit

    def settings(self) -> dict:
        return {"rule": self.rule, "eps": self.eps, "target": self.target, "seed": self.seed}

    def _start(self, logits: torch.Tensor, batch) -> torch.Tensor:
        labels = batch_labels(batch)
        idx = labels if self.target == "label" and labels is not None else logits.argmax(dim=1)
        start = torch.zeros_like(logits)
        rows = torch.arange(len(logits))
        start[rows, idx] = logits[rows, idx]
        return start

    def _program_relevance(self, model, data, names, start_time, groups):
        prog = build_program(model)
        covered = {op.unit for op in prog.ops if op.unit}
        missing = [n for n in names if n not in covered]
        if missing:
            raise ConfigError(f"every unit must be a layer of the LRP program, but {missing} are not. Re-run discover(model).")
        sums = {n: 0.0 for n in names}
        wsums: dict[str, torch.Tensor] = {}
        used = 0
        for batch in tqdm(data.batches, desc="lrp", disable=not self.progress, leave=False):
            if used and self.time_limit is not None and time.perf_counter() - start_time > self.time_limit:
                break
            (x,), _ = batch_inputs(batch)
            with torch.no_grad():
                logits = prog.forward(x)[-1]
            res = propagate(prog, x, self._start(logits, batch), rule=self.rule, eps=self.eps, weights=groups)
            for n in names:
                sums[n] += float(res.unit_outputs[n].abs().sum(dtype=torch.float64))
                if groups:
                    r = res.unit_weights[n].abs()
                    wsums[n] = wsums[n] + r if n in wsums else r
            used += 1
        return sums, wsums, {"batches_used": used}

    def estimate(self, model: nn.Module, data: Calibration, space: SearchSpace) -> Sensitivity:
        start = time.perf_counter()
        modules = unit_modules(model, space)
        names = list(space.names)
        groups = space.quantizer.group_size is not None
        with model_mode(model):
            if is_encoder_batch(data.batches[0]) and hasattr(model, "config"):
                from mpsearch.sensitivity._relevance_bert import transformer_relevance

                sums, wsums, info = transformer_relevance(
                    model, data, names, modules, weights=groups, progress=self.progress, time_limit=self.time_limit
                )
                method_info = "gradient x input, attention/LayerNorm/GELU held linear (LRP-0)"
            else:
                sums, wsums, info = self._program_relevance(model, data, names, start, groups)
                method_info = f"explicit LRP program, {self.rule} rule"
        total = sum(sums.values())
        scores = {n: (sums[n] / total if total > 0 else 0.0) for n in names}
        details = {"relevance": sums, "propagation": method_info, **info}
        group_scores = None
        if groups:
            group_scores = {}
            for n, m in zip(names, modules):
                per_group = group_sums(wsums.get(n, torch.zeros_like(m.weight)), quantizable_kind(m), space.quantizer)
                total_w = float(per_group.sum())
                if total_w > 0:
                    group_scores[n] = scores[n] * per_group / total_w
                else:  # no weight relevance (e.g. an unused pooler): spread the score evenly
                    group_scores[n] = np.full(per_group.shape, scores[n] / per_group.size)
        return Sensitivity(method=self.name, scores=scores, settings=self.settings(),
                           seconds=time.perf_counter() - start, details=details, group_scores=group_scores)


__all__ = ["LayerRelevance", "build_program", "group_sums", "resnet_program", "sequential_program"]
