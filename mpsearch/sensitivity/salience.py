"""Gradient salience: Fisher diagonal, first-order |w * g|, and GWQ's gradient outliers.

All three read gradients of the calibration loss with respect to the unit
weights, taken with :func:`torch.autograd.grad` (no ``.grad`` is written), and
reduce a per-weight quantity to a per-unit mean and, with a grouped quantizer,
a per-group mean over each group of G inputs of one output row.

* ``fisher``: the empirical Fisher diagonal, F_j = (1/N) sum_i g_ij^2 over
  *per-sample* gradients g_i (``micro_batch=1``, the default). With
  ``micro_batch=m`` the gradients are those of m-sample mean losses, weighted by
  their size: cheaper, but it underestimates F by about a factor m where
  per-sample gradients are uncorrelated.
* ``first_order``: |w_j * g_j| with g the gradient of the mean calibration loss
  (the first-order Taylor saliency of removing w_j).
* ``gwq``: GWQ (Shao et al., "Gradient-aware weight quantization for LLMs"):
  the weights whose |g_j| (gradient of the mean calibration loss) is among the
  top ``fraction`` (1 %) of all searched weights are the outliers. A unit's
  (group's) score is the fraction of its own weights that are outliers, an
  outlier density comparable across sizes; ``details["share"]`` gives each
  unit's share of all outliers (its count / the total), which sums to 1.

These estimators are deterministic; ``seed`` is kept for the uniform interface.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from mpsearch.core.errors import ConfigError
from mpsearch.sensitivity._tensors import Deadline, grads_or_zeros, slice_batch, unit_reduce, weights_requiring_grad
from mpsearch.sensitivity.base import ESTIMATORS, Estimator, Sensitivity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import SearchSpace, unit_modules


def mean_loss_gradient(
    model: nn.Module, data: Calibration, params: list[torch.Tensor], progress: bool = False, deadline: Deadline | None = None
) -> list[torch.Tensor]:
    """Gradient of the size-weighted mean calibration loss (float64, one tensor per parameter).

    A ``deadline`` stops after the batch in progress; the mean is then over the samples seen.
    """
    total = [torch.zeros(p.shape, dtype=torch.float64) for p in params]
    seen = 0
    for batch, size in tqdm(list(zip(data.batches, data.sizes)), desc="gradient", disable=not progress, leave=False):
        for t, g in zip(total, grads_or_zeros(data.loss_fn(model, batch), params)):
            t.add_(g.double(), alpha=size)
        seen += size
        if deadline is not None and deadline.expired():
            break
    return [t.div_(seen) for t in total]


def fisher_diagonal(
    model: nn.Module, data: Calibration, params: list[torch.Tensor], *, micro_batch: int = 1, progress: bool = False,
    deadline: Deadline | None = None,
) -> list[torch.Tensor]:
    """(1/N) sum over micro-batches of size n_i of n_i * g_i^2 (per-sample squared gradients when micro_batch=1).

    A ``deadline`` stops after the micro-batch in progress; N is then the number of samples seen.
    """
    total = [torch.zeros(p.shape, dtype=torch.float64) for p in params]
    steps = sum(math.ceil(s / micro_batch) for s in data.sizes)
    seen = 0
    with tqdm(total=steps, desc="fisher", disable=not progress, leave=False, mininterval=0.5) as bar:
        for batch, size in zip(data.batches, data.sizes):
            for lo in range(0, size, micro_batch):
                n = min(micro_batch, size - lo)
                grads = grads_or_zeros(data.loss_fn(model, slice_batch(batch, lo, lo + n)), params)
                for t, g in zip(total, grads):
                    t.add_(g.double().square(), alpha=n)
                seen += n
                bar.update(1)
                if deadline is not None and deadline.expired():
                    return [t.div_(seen) for t in total]
    return [t.div_(seen) for t in total]


class _GradientEstimator(Estimator):
    """Shared plumbing: settings, parameter access, reduction to units and groups."""

    supports_groups = True

    def __init__(self, *, seed: int = 0, progress: bool = True, time_limit: float | None = None) -> None:
        self.seed, self.progress, self.time_limit = seed, progress, time_limit
        self.deadline = Deadline(None)

    def settings(self) -> dict:
        return {"seed": self.seed}

    def per_weight(self, model: nn.Module, data: Calibration, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], dict]:
        raise NotImplementedError

    def estimate(self, model: nn.Module, data: Calibration, space: SearchSpace) -> Sensitivity:
        start = time.perf_counter()
        params = [m.weight for m in unit_modules(model, space)]
        self.deadline = Deadline(self.time_limit)
        with weights_requiring_grad(model, params):
            values, details = self.per_weight(model, data, params)
        scores, groups = unit_reduce(values, space)
        details = {**details, "calibration_samples": data.n_samples, "time_limited": self.deadline.hit}
        return Sensitivity(
            method=self.name, scores=scores, settings=self.settings(), seconds=time.perf_counter() - start,
            details=details, group_scores=groups,
        )


@ESTIMATORS.register("fisher")
class FisherDiagonal(_GradientEstimator):
    """Empirical Fisher diagonal from per-sample gradients, averaged per unit and per group.

    Example:
        >>> est = FisherDiagonal(progress=False)          # micro_batch=1: per-sample gradients
        >>> # sens = est.estimate(model, Calibration.classification(x, y), space)
    """

    name = "fisher"

    def __init__(self, *, micro_batch: int = 1, seed: int = 0, progress: bool = True, time_limit: float | None = None) -> None:
        if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
            raise ConfigError(f"`micro_batch` must be a positive integer, but got micro_batch={micro_batch!r}. "
                              "Pass 1 for per-sample gradients.")
        super().__init__(seed=seed, progress=progress, time_limit=time_limit)
        self.micro_batch = micro_batch

    def settings(self) -> dict:
        return {"micro_batch": self.micro_batch, "seed": self.seed}

    def per_weight(self, model, data, params):
        return fisher_diagonal(model, data, params, micro_batch=self.micro_batch, progress=self.progress, deadline=self.deadline), {
            "gradients": "per-sample" if self.micro_batch == 1 else f"per-{self.micro_batch}-sample micro-batch"
        }


@ESTIMATORS.register("first_order")
class FirstOrderSalience(_GradientEstimator):
    """|w * g| per weight with g the mean-loss gradient, averaged per unit and per group.

    Example:
        >>> # sens = FirstOrderSalience(progress=False).estimate(model, calib, space)
    """

    name = "first_order"

    def per_weight(self, model, data, params):
        grads = mean_loss_gradient(model, data, params, self.progress, self.deadline)
        return [(p.detach().double() * g).abs() for p, g in zip(params, grads)], {}


@ESTIMATORS.register("gwq")
class GradientOutliers(_GradientEstimator):
    """GWQ: density of the top-``fraction`` |gradient| weights (over all units) in each unit and group.

    Example:
        >>> # sens = GradientOutliers(fraction=0.01, progress=False).estimate(model, calib, space)
        >>> # sens.details["share"]     # each unit's share of all outliers
    """

    name = "gwq"

    def __init__(self, *, fraction: float = 0.01, seed: int = 0, progress: bool = True, time_limit: float | None = None) -> None:
        if not 0 < fraction <= 1:
            raise ConfigError(f"`fraction` must be within (0, 1], but got fraction={fraction!r}. Pass 0.01 for GWQ's top 1 %.")
        super().__init__(seed=seed, progress=progress, time_limit=time_limit)
        self.fraction = float(fraction)

    def settings(self) -> dict:
        return {"fraction": self.fraction, "seed": self.seed}

    def per_weight(self, model, data, params):
        grads = mean_loss_gradient(model, data, params, self.progress, self.deadline)
        flat = torch.cat([g.abs().reshape(-1) for g in grads])
        k = max(1, math.ceil(self.fraction * flat.numel()))
        mask = torch.zeros(flat.numel(), dtype=torch.float64)
        mask[torch.topk(flat, k, sorted=False).indices] = 1.0
        masks = list(mask.split([g.numel() for g in grads]))
        masks = [m.reshape(g.shape) for m, g in zip(masks, grads)]
        counts = [int(m.sum()) for m in masks]
        details = {"outliers": k, "threshold": float(flat.topk(k).values.min()), "share_list": [c / k for c in counts]}
        return masks, details

    def estimate(self, model: nn.Module, data: Calibration, space: SearchSpace) -> Sensitivity:
        sens = super().estimate(model, data, space)
        details = dict(sens.details)
        details["share"] = dict(zip(space.names, details.pop("share_list")))
        return Sensitivity(method=sens.method, scores=sens.scores, settings=sens.settings, seconds=sens.seconds,
                           details=details, group_scores=sens.group_scores)
