"""Hessian diagonal per weight by Hutchinson's method, reduced per unit and per group.

For a Rademacher vector v (entries +-1), E[v * (H v)] = diag(H) elementwise
(Bekas, Kokiopoulou and Saad 2007), so one Hessian-vector product per probe
estimates every weight's diagonal entry at once. Averaging the diagonal over a
group of G inputs of one output row gives that group's score; over a whole unit,
the unit's score (its trace / n_weights, the HAWQ-V2/V3 quantity). The cost of a
group at b bits is then ``mean diag * ||Q_b(W_g) - W_g||^2``.

Probes are spread evenly over the calibration batches (probe k uses batch
k mod B; ``probes`` is rounded up to a multiple of B), and each batch's mean is
weighted by its share of the samples, so the estimate is of the Hessian of the
mean calibration loss. The variance of one probe's entry j is
sum_{k != j} H_jk^2, so per-weight estimates are noisy; per-group means are far
less so. Negative means (noise, or true negative curvature away from a minimum)
are clamped to zero and counted in ``details``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mpsearch.core.errors import ConfigError
from mpsearch.sensitivity._tensors import Deadline, unit_reduce, weights_requiring_grad
from mpsearch.sensitivity.base import ESTIMATORS, Estimator, Sensitivity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.sensitivity.hessian import hessian_vector_products, rademacher
from mpsearch.space.discover import SearchSpace, unit_modules


def hutchinson_diagonal(
    model: nn.Module, data: Calibration, params: list[torch.Tensor], *, probes: int, seed: int, progress: bool = False,
    deadline: Deadline | None = None,
) -> tuple[list[torch.Tensor], int]:
    """diag(H) of the mean calibration loss restricted to ``params`` (float64, parameter shapes), and probes run.

    Probes go round the batches; a ``deadline`` stops after the round in progress, so every batch
    keeps the same number of probes and the weighting stays exact.
    """
    n_batches = len(data.batches)
    per_batch = max(1, math.ceil(probes / n_batches))
    total = per_batch * n_batches
    generator = torch.Generator().manual_seed(seed)
    hvp = hessian_vector_products(model, data, params)
    acc = [torch.zeros(p.shape, dtype=torch.float64) for p in params]
    share = [s / data.n_samples for s in data.sizes]
    rounds = 0
    with tqdm(total=total, desc="hessian diag", disable=not progress, leave=False, mininterval=0.5) as bar:
        for probe in range(total):
            k = probe % n_batches
            vs = [rademacher(p.shape, generator, p.dtype, p.device) for p in params]
            for a, v, h in zip(acc, vs, hvp(vs, k)):
                a.add_((v * h).double().cpu(), alpha=share[k])
            bar.update(1)
            if k == n_batches - 1:
                rounds += 1
                if deadline is not None and deadline.expired():
                    break
    for a in acc:
        a.div_(rounds)
    return acc, rounds * n_batches


@ESTIMATORS.register("hessian_diag")
class HutchinsonDiagonal(Estimator):
    """Hutchinson estimate of the Hessian diagonal, averaged per unit and per group of G inputs.

    Example:
        >>> est = HutchinsonDiagonal(probes=64, seed=0, progress=False)
        >>> # sens = est.estimate(model, calib, discover(model, quantizer=QuantizerConfig(group_size=32)))
        >>> # sens.group_scores["layer1.0.conv1"].shape == (16, 5)    # (out, ceil(144 / 32))
    """

    name = "hessian_diag"
    supports_groups = True
    double_backward = True
    quick_options: ClassVar[Mapping[str, Any]] = {"probes": 8}

    def __init__(self, *, probes: int = 64, seed: int = 0, progress: bool = True, time_limit: float | None = None) -> None:
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
            raise ConfigError(f"`probes` must be a positive integer, but got probes={probes!r}. Pass e.g. probes=64.")
        self.probes, self.seed, self.progress, self.time_limit = probes, seed, progress, time_limit

    def settings(self) -> dict:
        return {"probes": self.probes, "seed": self.seed}

    def estimate(self, model: nn.Module, data: Calibration, space: SearchSpace) -> Sensitivity:
        start = time.perf_counter()
        params = [m.weight for m in unit_modules(model, space)]
        with weights_requiring_grad(model, params):
            deadline = Deadline(self.time_limit)
            diag, probes = hutchinson_diagonal(
                model, data, params, probes=self.probes, seed=self.seed, progress=self.progress, deadline=deadline
            )
        if not all(bool(torch.isfinite(d).all()) for d in diag):
            raise ConfigError("the Hessian diagonal came out non-finite; check the model and data for NaN or inf.")
        means, groups = unit_reduce(diag, space)
        negative = [n for n, v in means.items() if v < 0]
        clamped = 0
        if groups is not None:
            clamped = int(sum((g < 0).sum() for g in groups.values()))
            groups = {n: np.maximum(g, 0.0) for n, g in groups.items()}
        details = {
            "trace": {u.name: float(d.sum()) for u, d in zip(space.units, diag)},
            "probes": probes,
            "time_limited": deadline.hit,
            "clamped_negative": negative,
            "clamped_negative_groups": clamped,
            "calibration_samples": data.n_samples,
        }
        return Sensitivity(
            method=self.name, scores={n: max(v, 0.0) for n, v in means.items()}, settings=self.settings(),
            seconds=time.perf_counter() - start, details=details, group_scores=groups,
        )
