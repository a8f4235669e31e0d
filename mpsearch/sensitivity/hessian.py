"""Hessian trace per unit by Hutchinson's method (HAWQ-V2).

For a Rademacher vector v (entries +-1), E[v^T H v] = tr(H). Restricted to the
weights of unit u, v_u^T (H v)_u is an unbiased estimate of tr(H_uu), so one
Hessian-vector product per probe (a double backward pass) estimates every
unit's trace at once. The score of a unit is its trace divided by its number
of weights (the mean Hessian diagonal), which multiplies ``||Q_b(W) - W||^2``
into the HAWQ-V3 cost.

Stopping rule: after ``min_probes``, stop when every unit's relative standard
error (standard error of the mean over probes / |mean|) is below ``tol``, or
at ``max_probes``, or at ``time_limit`` seconds. Pinned units (one bit
choice, so their cost never changes a plan) are estimated but do not hold up
the stopping rule. Each probe runs through one calibration batch, in
rotation, so small batches give many cheap probes. The result records how many
probes ran and whether the tolerance was met.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mpsearch.core.errors import MPSearchError
from mpsearch.sensitivity._tensors import Deadline, grads_or_zeros, weights_requiring_grad
from mpsearch.sensitivity.base import ESTIMATORS, Estimator, Sensitivity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import SearchSpace, unit_modules


def _warn_short_limit(limit: float | None, first_s: float) -> None:
    import warnings

    from mpsearch.core.errors import MPSearchWarning

    warnings.warn(MPSearchWarning(
        f"a time limit must leave room for two Hutchinson probes (a standard error needs two), but the first took "
        f"{first_s:.3g} s against time_limit={limit:g} s, so this estimate takes up to about {2 * first_s:.2g} s. "
        "Raise --time-limit (time_limit=) well above that, or use a cheaper estimator (--estimator fisher)."
    ), stacklevel=4)


def rademacher(shape: torch.Size, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8)
    return (bits.to(dtype) * 2 - 1).to(device)


def hessian_vector_products(model: nn.Module, data: Calibration, params: list[torch.Tensor]):
    """Return a function (vs, k) -> H_k v for batch k, with H_k the Hessian of batch k's mean loss.

    The gradient graph of a batch is built when a probe first needs it and
    kept, so each later probe costs one extra backward pass through one batch,
    and a time-limited caller never pays for graphs it does not use. Averaged
    over whole cycles of batches (weighted by size), E[v^T H_k v] is the trace
    of the Hessian of the mean calibration loss.
    """
    grads: dict[int, tuple[torch.Tensor, ...]] = {}

    def hvp(vs: list[torch.Tensor], k: int) -> tuple[torch.Tensor, ...]:
        if k not in grads:
            grads[k] = tuple(grads_or_zeros(data.loss_fn(model, data.batches[k]), params, create_graph=True))
        # Parameters the loss does not use (an unused pooler) have constant zero
        # gradients: their Hessian rows are zero, and autograd must skip them.
        live = [i for i, g in enumerate(grads[k]) if g.requires_grad]
        out = [torch.zeros_like(p) for p in params]
        if live:
            got = torch.autograd.grad([grads[k][i] for i in live], params, grad_outputs=[vs[i] for i in live],
                                      retain_graph=True, allow_unused=True)
            out = [o if g is None else g for o, g in zip(out, got)]
        return tuple(out)

    return hvp


def _stratified(sums: np.ndarray, squares: np.ndarray, counts: np.ndarray, share: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Size-weighted mean of per-batch means, and its standard error (batches x tensors inputs)."""
    seen = counts > 0
    n = counts[seen][:, None]
    means = sums[seen] / n
    var = np.maximum(squares[seen] / n - means**2, 0.0) * n / np.maximum(n - 1, 1)
    total = counts.sum()
    if total >= 2 and (single := n[:, 0] < 2).any():
        # A batch probed once has no spread of its own: use the spread of all probes around
        # their plain mean, which also counts the spread between batches (an overestimate).
        pooled = sums.sum(axis=0) / total
        var[single] = np.maximum(squares.sum(axis=0) / total - pooled**2, 0.0) * total / (total - 1)
    weights = share[seen] / share[seen].sum()
    mean = (weights[:, None] * means).sum(axis=0)
    stderr = np.sqrt((weights[:, None] ** 2 * var / n).sum(axis=0))
    return mean, stderr


@ESTIMATORS.register("hessian")
class HutchinsonTrace(Estimator):
    """Per-unit Hessian trace by Hutchinson's method, averaged per parameter.

    >>> est = HutchinsonTrace(tol=0.1, max_probes=200, seed=0)
    >>> # sens = est.estimate(model, Calibration.classification(x, y), space)
    """

    name = "hessian"
    supports_groups = False
    double_backward = True
    quick_options: ClassVar[Mapping[str, Any]] = {"max_probes": 6, "min_probes": 2}

    def __init__(
        self,
        *,
        tol: float = 0.1,
        min_probes: int | None = None,
        max_probes: int = 200,
        seed: int = 0,
        progress: bool = True,
        time_limit: float | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 10,
    ) -> None:
        if not 0 < tol < 1:
            raise MPSearchError(f"`tol` must be within (0, 1), but got tol={tol!r}. Use e.g. 0.05 (5 % relative error).")
        if min_probes is None:  # default floor: 16 probes, or fewer under a smaller cap
            min_probes = min(16, max_probes)
        if not 2 <= min_probes <= max_probes:
            raise MPSearchError(
                f"probes must satisfy 2 <= min_probes <= max_probes, but got {min_probes} and {max_probes}."
            )
        self.tol, self.min_probes, self.max_probes = tol, min_probes, max_probes
        self.seed, self.progress, self.time_limit = seed, progress, time_limit
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_every = max(1, int(checkpoint_every))

    def settings(self) -> dict:
        return {"tol": self.tol, "min_probes": self.min_probes, "max_probes": self.max_probes, "seed": self.seed}

    def traces(
        self, model: nn.Module, data: Calibration, params: list[torch.Tensor], watch: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, int, bool, bool]:
        """Estimate tr(H_uu) per parameter tensor: (means, standard errors, probes, converged, time_limited).

        Probe k runs through batch k mod B. The estimate is stratified: the
        mean of each batch's probes, weighted by batch size, so the spread
        between batches (fixed, not random) never counts as noise; the
        standard error comes from the spread within each batch. Only the
        tensors flagged in ``watch`` take part in the stopping rule.

        ``time_limit`` is checked before every probe once two have run (a first
        estimate and its spread), so a run overshoots by at most one probe and
        the gradient graph of its batch; when the limit has passed before the
        second probe, that probe reuses the first one's batch. Batches not
        reached are left out of the weighted mean.
        """
        deadline = Deadline(self.time_limit)
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(self.seed)
        hvp = hessian_vector_products(model, data, params)
        n_batches = len(data.batches)
        share = np.array(data.sizes, dtype=np.float64) / data.n_samples
        watch = np.ones(len(params), bool) if watch is None else watch
        sums = np.zeros((n_batches, len(params)))
        squares = np.zeros_like(sums)
        counts = np.zeros(n_batches)
        floor = max(self.min_probes, 2 * n_batches)  # at least two probes per batch for a variance
        converged = False
        probes = done = 0
        key = self._checkpoint_key(model, data) if self.checkpoint is not None else ""
        if key:
            probes = done = self._resume(key, sums, squares, counts, generator)
        mean = stderr = np.zeros(len(params))
        bar = tqdm(total=self.max_probes, initial=done, desc="hutchinson", disable=not self.progress, leave=False, mininterval=0.5)
        try:
            for probes in range(done + 1, self.max_probes + 1):
                if probes > 2 and deadline.expired():
                    probes -= 1
                    break
                k = (probes - 1) % n_batches
                if probes == 2 and deadline.expired():
                    k = 0  # out of time: the second probe reuses the first one's graph instead of building another
                state_before = generator.get_state() if key else None
                vs = [rademacher(p.shape, generator, p.dtype, p.device) for p in params]
                hv = hvp(vs, k)
                sample = np.array([float((v * h).sum(dtype=torch.float64)) for v, h in zip(vs, hv)])
                sums[k] += sample
                squares[k] += sample * sample
                counts[k] += 1
                bar.update(1)
                if probes == 1 and deadline.expired():  # the limit cannot hold: say so now, with the measured cost
                    _warn_short_limit(self.time_limit, time.perf_counter() - started)
                if key and probes % self.checkpoint_every == 0:
                    self._save(key, probes, sums, squares, counts, generator.get_state())
                if probes < 2 * n_batches and probes < self.max_probes:
                    continue
                mean, stderr = _stratified(sums, squares, counts, share)
                rel = stderr / np.maximum(np.abs(mean), 1e-30)
                worst = float(rel[watch].max()) if watch.any() else 0.0
                bar.set_postfix(rel_err=f"{worst:.3f}", refresh=False)
                if probes >= floor and worst < self.tol:
                    converged = True
                    break
        except KeyboardInterrupt:
            if key and probes > done:  # keep every finished probe; the unfinished one is redrawn on resume
                finished = int(counts.sum())
                state = generator.get_state() if finished == probes else state_before
                self._save(key, finished, sums, squares, counts, state)
            raise
        finally:
            bar.close()
        if not converged and counts.sum() > 0:
            mean, stderr = _stratified(sums, squares, counts, share)
        if key and self.checkpoint.exists():
            self.checkpoint.unlink()  # finished: the result belongs in the sensitivity cache now
        return mean, stderr, probes, converged, deadline.hit

    # ---- checkpoints: an interrupted run resumes with the same random stream ----
    def _checkpoint_key(self, model: nn.Module, data: Calibration) -> str:
        import hashlib
        import json

        from mpsearch.sensitivity.cache import data_fingerprint, model_fingerprint

        text = json.dumps({"model": model_fingerprint(model), "data": data_fingerprint(data), "seed": self.seed}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _save(self, key: str, probes: int, sums, squares, counts, rng_state: torch.Tensor) -> None:
        import io

        from mpsearch.core.io import atomic_write_bytes

        buffer = io.BytesIO()
        np.savez(buffer, key=np.array(key), probes=np.array(probes), sums=sums, squares=squares, counts=counts,
                 rng=rng_state.numpy())
        atomic_write_bytes(self.checkpoint, buffer.getvalue())

    def _resume(self, key: str, sums, squares, counts, generator: torch.Generator) -> int:
        """Load a matching checkpoint into the arrays and generator; the number of probes it holds."""
        import warnings

        if not self.checkpoint.is_file():
            return 0
        try:
            with np.load(self.checkpoint, allow_pickle=False) as saved:
                if str(saved["key"]) != key or saved["sums"].shape != sums.shape:
                    warnings.warn(f"{self.checkpoint} belongs to another model, data or seed; starting afresh.", stacklevel=3)
                    return 0
                sums[:], squares[:], counts[:] = saved["sums"], saved["squares"], saved["counts"]
                generator.set_state(torch.from_numpy(saved["rng"].copy()))
                return int(saved["probes"])
        except Exception as err:  # a truncated or foreign file: never fatal, just start over
            warnings.warn(f"{self.checkpoint} is unreadable ({err!r}); starting afresh.", stacklevel=3)
            sums[:], squares[:], counts[:] = 0, 0, 0
            return 0

    def estimate(self, model: nn.Module, data: Calibration, space: SearchSpace) -> Sensitivity:
        start = time.perf_counter()
        modules = unit_modules(model, space)
        params = [m.weight for m in modules]
        with weights_requiring_grad(model, params):
            watch = np.array([not u.pinned for u in space.units])
            mean, stderr, probes, converged, time_limited = self.traces(model, data, params, watch)
        sizes = np.array([u.n_weights for u in space.units], dtype=np.float64)
        # A trained network's curvature is positive, but a noisy estimate of a
        # nearly flat unit can dip below zero; it is clamped to zero and reported.
        negative = [n for n, t in zip(space.names, mean) if t < 0]
        scores = {n: max(float(t), 0.0) / s for n, t, s in zip(space.names, mean, sizes)}
        details = {
            "trace": {n: float(t) for n, t in zip(space.names, mean)},
            "trace_stderr": {n: float(e) for n, e in zip(space.names, stderr)},
            "probes": probes,
            "converged": converged,
            "time_limited": time_limited,
            "clamped_negative": negative,
            "calibration_samples": data.n_samples,
        }
        if not all(math.isfinite(v) for v in mean):
            raise MPSearchError("the Hessian trace came out non-finite; check the model and data for NaN or inf.")
        return Sensitivity(
            method=self.name, scores=scores, settings=self.settings(), seconds=time.perf_counter() - start, details=details
        )
