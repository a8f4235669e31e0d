"""OBS salience of SliM-LLM: w^2 / [H^-1]_jj^2 with H = X^T X from each unit's own inputs.

SliM-LLM (Huang et al., "Salience-driven mixed-precision quantization for LLMs")
scores a weight w_ij of a layer whose calibration inputs are the rows of X
(samples x fan_in) by ``w_ij^2 / [H^-1]_jj^2`` with ``H = X^T X``, and a group by
the sum over its weights. Here:

* X is collected with forward pre-hooks while the calibration loss runs (no
  gradients): for ``Linear``/``Conv1D`` every token or sample is a row; for
  ``Conv2d`` every output position is a row of the unfolded input patch
  (``F.unfold``: channel-major, then kernel row and column, the same order as
  ``weight.reshape(out, -1)``). Rows of all batches are summed into H (float64).
* H is damped by ``damp * mean(diag H)`` on the diagonal (1 % by default, as
  GPTQ does) before the Cholesky inverse, so that dead inputs do not make it singular.
* Scores are means, like every estimator here: a unit's score is the mean salience
  of its weights, a group's the mean over its weights; SliM-LLM's summed group
  salience is ``group_score * group size``.

It needs no gradient and no labels, only inputs that reach the units.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mpsearch.core.errors import ConfigError
from mpsearch.kernels.quantize import weight_matrix
from mpsearch.sensitivity._tensors import Deadline, unit_reduce
from mpsearch.sensitivity.base import ESTIMATORS, Estimator, Sensitivity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import SearchSpace, unit_modules
from mpsearch.space.hooks import ModelHooks


def layer_input_rows(module: nn.Module, kind: str, x: torch.Tensor) -> torch.Tensor:
    """The rows of X for one forward call: (rows, fan_in), ordered as the weight matrix's columns."""
    if kind != "conv2d":
        return x.reshape(-1, x.shape[-1])
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str) and module.padding != "valid":
        raise ConfigError(
            f"OBS salience needs plain convolutions (groups=1, zero padding given as numbers), but got groups={module.groups}, "
            f"padding={module.padding!r}, padding_mode={module.padding_mode!r}. Exclude this unit from the space."
        )
    padding = 0 if isinstance(module.padding, str) else module.padding
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def input_hessians(
    model: nn.Module, data: Calibration, space: SearchSpace, progress: bool = False, deadline: Deadline | None = None
) -> tuple[list[torch.Tensor], list[int]]:
    """H_u = X_u^T X_u (float64, fan_in x fan_in) for every unit, and the number of rows seen.

    A ``deadline`` stops after the batch in progress (H then sums the rows seen so far).
    """
    modules = unit_modules(model, space)
    hessians = [torch.zeros(u.fan_in, u.fan_in, dtype=torch.float64) for u in space.units]
    rows = [0] * len(modules)

    def hook_for(i: int, kind: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            x = layer_input_rows(module, kind, inputs[0].detach()).double()
            hessians[i].addmm_(x.t(), x)
            rows[i] += x.shape[0]
        return hook

    with ModelHooks(model) as hooks, torch.no_grad():
        for i, (m, u) in enumerate(zip(modules, space.units)):
            hooks.pre(m, hook_for(i, u.kind))
        for batch in tqdm(data.batches, desc="obs inputs", disable=not progress, leave=False):
            data.loss_fn(model, batch)
            if deadline is not None and deadline.expired():
                break
    return hessians, rows


def obs_salience(weight2d: torch.Tensor, hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """w_ij^2 / [H^-1]_jj^2 for a (out, fan_in) weight, H damped by ``damp * mean(diag H)``."""
    h = hessian.clone()
    diag = h.diagonal()
    diag += damp * float(diag.mean()) if float(diag.mean()) > 0 else max(damp, 1e-12)
    try:
        inv_diag = torch.cholesky_inverse(torch.linalg.cholesky(h)).diagonal()
    except RuntimeError:
        raise ConfigError(
            f"the input Hessian X^T X must be positive definite after damping, but it is singular with damp={damp}. "
            "Raise `damp` (e.g. 0.01) or calibrate on more samples."
        ) from None
    return weight2d.double().square() / inv_diag.square()[None, :]


@ESTIMATORS.register("obs")
class OBSSalience(Estimator):
    """SliM-LLM's OBS salience w^2 / [H^-1]_jj^2, averaged per unit and per group of G inputs.

    Example:
        >>> est = OBSSalience(damp=0.01, progress=False)
        >>> # sens = est.estimate(model, calib, space)   # calib batches only need to reach the units
    """

    embeddings = False  # statistics of input activations
    name = "obs"
    supports_groups = True

    def __init__(self, *, damp: float = 0.01, seed: int = 0, progress: bool = True, time_limit: float | None = None) -> None:
        if not 0 <= damp < 10:
            raise ConfigError(f"`damp` must be within [0, 10), but got damp={damp!r}. Pass e.g. damp=0.01 (1 % of the mean diagonal).")
        self.damp, self.seed, self.progress, self.time_limit = float(damp), seed, progress, time_limit

    def settings(self) -> dict:
        return {"damp": self.damp, "seed": self.seed}

    def estimate(self, model: nn.Module, data: Calibration, space: SearchSpace) -> Sensitivity:
        start = time.perf_counter()
        deadline = Deadline(self.time_limit)
        hessians, rows = input_hessians(model, data, space, self.progress, deadline)
        values = []
        for unit, module, h, n in zip(space.units, unit_modules(model, space), hessians, rows):
            w2d = weight_matrix(module.weight.detach(), unit.kind)
            values.append(obs_salience(w2d, h, self.damp) if n else torch.zeros(w2d.shape, dtype=torch.float64))
        # unit_reduce views values through weight_matrix, so hand it weight-shaped tensors
        shaped = [v.reshape(u.weight_shape) if u.kind != "conv1d" else v.t() for v, u in zip(values, space.units)]
        scores, groups = unit_reduce(shaped, space)
        details = {
            "rows": dict(zip(space.names, rows)),
            "salience_sum": {u.name: float(v.sum()) for u, v in zip(space.units, values)},
            "unreached": [u.name for u, n in zip(space.units, rows) if n == 0],
            "calibration_samples": data.n_samples,
            "time_limited": deadline.hit,
        }
        return Sensitivity(
            method=self.name, scores=scores, settings=self.settings(), seconds=time.perf_counter() - start,
            details=details, group_scores=groups,
        )
