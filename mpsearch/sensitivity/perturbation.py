"""ZeroQ's perturbation sensitivity: the damage of quantizing one unit alone.

For every unit u and each of its bit choices b, the weight of u alone is
fake-quantized to b bits in place, the calibration batches run, and the
output is compared with the full-precision output (Cai et al., "ZeroQ: A Novel
Zero Shot Quantization Framework", CVPR 2020, eq. 2):

* classifiers: ``KL(softmax(fp logits) || softmax(quantized logits))``, the
  mean over samples;
* sentence encoders (MiniLM, no classifier): ``1 - cos(e_fp, e_q)`` of the
  mean-pooled sentence embeddings, the mean over sentences. The embedding is
  used through cosine similarity, so the loss of cosine is the damage a user
  sees; a softmax over embedding dimensions would need an arbitrary
  temperature and is not a distribution the model was trained to produce.

These measured values fill ``Sensitivity.unit_costs`` (the cost table)
directly. The weight is saved once per unit and copied back with
``Tensor.copy_``, so it is restored bit-exactly; nothing is deep-copied.
``zeroq_bc`` (:class:`PerturbationKLCorrected`) measures the damage *after* bias correction
(Nagel et al. 2019; ``mpsearch.deploy.bias_correction``): with unit u quantized, the mean shift of each
of its output channels on the calibration data is subtracted from its output before the
divergence is taken. Plans carry that correction, so their cost is what remains after it; on
ResNet-20 at 2.5 bits this lifted the ILP plan from 82.6 to 84.7 % top-1 (README).
With a ``time_limit``, units not reached get ``ratio * ||Q_b(W) - W||^2``,
with ``ratio`` the median cost per unit of quantization error over the units
measured, and are listed in ``details["extrapolated"]``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mpsearch.core.errors import ConfigError
from mpsearch.kernels.fake import quantizable_kind
from mpsearch.kernels.quantize import fake_quantize, matrix_to_weight, weight_matrix
from mpsearch.sensitivity.base import ESTIMATORS, Estimator, Sensitivity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import SearchSpace, unit_modules
from mpsearch.space.forward import batch_output, channel_sums, is_encoder_batch, token_mask
from mpsearch.space.hooks import ModelHooks, model_mode
from mpsearch.space.quant_errors import quantization_errors

METRICS = ("auto", "kl", "cosine")


def output_divergence(reference: torch.Tensor, output: torch.Tensor, metric: str) -> torch.Tensor:
    """Summed divergence over the samples of a batch: KL of softmaxes, or 1 - cosine.

    >>> a = torch.tensor([[1.0, 2.0]])
    >>> float(output_divergence(a, a, "kl")), float(output_divergence(a, a, "cosine"))
    (0.0, 0.0)
    """
    if metric == "kl":
        log_p = torch.log_softmax(reference.double(), dim=-1)
        log_q = torch.log_softmax(output.double(), dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum().clamp(min=0.0)
    cos = torch.nn.functional.cosine_similarity(reference.double(), output.double(), dim=-1)
    return (1.0 - cos).clamp(min=0.0).sum()


@ESTIMATORS.register("zeroq")
class PerturbationKL(Estimator):
    """ZeroQ sensitivity: output divergence with only one unit quantized, per bit choice.

    >>> est = PerturbationKL(seed=0, progress=False)
    >>> # sens = est.estimate(model, Calibration.classification(x, y), space)
    >>> # costs = build_cost_table(model, space, sens)  # uses sens.unit_costs
    """

    embeddings = False  # quantizes one weight-matrix layer at a time
    name = "zeroq"

    def __init__(self, *, metric: str = "auto", seed: int = 0, progress: bool = True, time_limit: float | None = None) -> None:
        if metric not in METRICS:
            raise ConfigError(f"`metric` must be one of {METRICS}, but got metric={metric!r}. Use 'auto'.")
        if time_limit is not None and not time_limit > 0:
            raise ConfigError(f"`time_limit` must be positive seconds or None, but got {time_limit!r}.")
        self.metric, self.seed, self.progress, self.time_limit = metric, seed, progress, time_limit

    def settings(self) -> dict:
        return {"metric": self.metric, "seed": self.seed, "time_limit": self.time_limit}

    def _metric(self, data: Calibration) -> str:
        if self.metric != "auto":
            return self.metric
        return "cosine" if is_encoder_batch(data.batches[0]) else "kl"

    @torch.no_grad()
    def divergence(self, model: nn.Module, data: Calibration, references: list[torch.Tensor], metric: str) -> float:
        """Mean divergence of the model's current outputs from ``references`` over all samples."""
        total = 0.0
        for batch, ref in zip(data.batches, references):
            total += float(output_divergence(ref, batch_output(model, batch), metric))
        return total / data.n_samples

    def estimate(self, model: nn.Module, data: Calibration, space: SearchSpace) -> Sensitivity:
        start = time.perf_counter()
        modules = unit_modules(model, space)
        metric = self._metric(data)
        measured: dict[str, dict[int, float]] = {}
        with model_mode(model), torch.no_grad():
            references = [batch_output(model, b).detach() for b in data.batches]
            total = sum(len(u.bits) for u in space.units)
            bar = tqdm(total=total, desc=self.name, disable=not self.progress, leave=False, mininterval=0.5)
            try:
                for unit, module in zip(space.units, modules):
                    if self.time_limit is not None and measured and time.perf_counter() - start > self.time_limit:
                        break
                    measured[unit.name] = self._unit_costs(model, module, unit.bits, space, data, references, metric)
                    bar.update(len(unit.bits))
            finally:
                bar.close()
        costs, extrapolated = self._complete(model, space, measured)
        scores = {u.name: costs[u.name][min(u.bits)] for u in space.units}
        details = {"metric": metric, "extrapolated": extrapolated, "calibration_samples": data.n_samples}
        return Sensitivity(
            method=self.name, scores=scores, settings=self.settings(), seconds=time.perf_counter() - start,
            details=details, unit_costs=costs,
        )

    def _unit_costs(self, model, module, bits, space, data, references, metric) -> dict[int, float]:
        kind = quantizable_kind(module)
        weight = module.weight
        saved = weight.detach().clone()
        out: dict[int, float] = {}
        try:
            for b in bits:
                quantized = fake_quantize(weight_matrix(saved, kind), b, space.quantizer)
                weight.data.copy_(matrix_to_weight(quantized, saved.shape, kind))
                out[b] = self._measure(model, module, data, references, metric)
        finally:
            weight.data.copy_(saved)  # bit-exact restore, even on error
        return out

    def _measure(self, model, module, data, references, metric) -> float:
        """Divergence with the unit's current (quantized) weight; a hook for subclasses."""
        return self.divergence(model, data, references, metric)

    @staticmethod
    def _complete(model, space, measured) -> tuple[dict[str, dict[int, float]], list[str]]:
        missing = [u.name for u in space.units if u.name not in measured]
        if not missing:
            return measured, []
        errors = quantization_errors(model, space)
        ratios = [c / errors[n][b] for n, per in measured.items() for b, c in per.items() if errors[n][b] > 0]
        ratio = float(np.median(ratios)) if ratios else 0.0
        costs = dict(measured)
        for name in missing:
            costs[name] = {b: ratio * e for b, e in errors[name].items()}
        return costs, missing


@ESTIMATORS.register("zeroq_bc")
class PerturbationKLCorrected(PerturbationKL):
    """ZeroQ sensitivity measured after bias correction of the quantized unit.

    For each unit and width: the unit's output-channel means on the calibration data, with the
    weight quantized, minus those in full precision, are subtracted from its output (a forward
    hook), then the divergence is measured, as the plan's stored correction would do.
    """

    name = "zeroq_bc"

    def _measure(self, model, module, data, references, metric) -> float:
        shift = channel_means(model, module, data) - self._fp_means
        conv = quantizable_kind(module) == "conv2d"  # channels on dim 1, else on the last dim
        with ModelHooks(model, train=None) as hooks:
            hooks.forward(module, lambda m, i, o: o - shift.to(o.dtype).view(
                (1, -1) + (1,) * (o.dim() - 2) if conv else (1,) * (o.dim() - 1) + (-1,)))
            return self.divergence(model, data, references, metric)

    def _unit_costs(self, model, module, bits, space, data, references, metric):
        self._fp_means = channel_means(model, module, data)  # before the weight is quantized
        return super()._unit_costs(model, module, bits, space, data, references, metric)


@torch.no_grad()
def channel_means(model: nn.Module, module: nn.Module, data: Calibration) -> torch.Tensor:
    """Mean of each output channel of ``module`` over the calibration data, counted as
    :func:`~mpsearch.deploy.bias_correction.measure_bias_correction` counts it (every position of a
    conv; real tokens only for tokenizer batches), in float64."""
    kind = quantizable_kind(module)
    acc: dict[str, Any] = {"sum": 0.0, "n": 0.0, "mask": None}

    def hook(m, i, o):
        total, n = channel_sums(o.detach().double(), kind, acc["mask"])
        acc["sum"], acc["n"] = acc["sum"] + total, acc["n"] + n

    with ModelHooks(model, train=None) as hooks:
        hooks.forward(module, hook)
        for batch in data.batches:
            acc["mask"] = token_mask(batch)
            batch_output(model, batch)
    return acc["sum"] / max(acc["n"], 1.0)


__all__ = ["PerturbationKL", "PerturbationKLCorrected", "channel_means", "output_divergence"]
