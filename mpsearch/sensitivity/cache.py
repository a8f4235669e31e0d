"""An on-disk cache of sensitivity results, so a costly estimate runs once per model, data and settings.

An entry is two files named by its key: ``<key>.npz`` (the group scores, when
any) and ``<key>.json`` (everything else, with the SHA-256 of the npz bytes).
Both are written atomically, npz first, so a JSON file exists only beside a
complete npz. The key is the SHA-256 of

* the model fingerprint: every state_dict tensor's name, dtype, shape and bytes,
* the data fingerprint: every calibration tensor's bytes, the batch sizes, and
  the loss function's qualified name,
* the search space (unit names, bit choices, weight shapes, quantizer settings),
* the estimator's class and ``settings()``.

A missing entry is computed and stored. An entry that cannot be read (truncated,
corrupt, foreign format, checksum mismatch) triggers a :class:`CacheWarning`, is
recomputed and overwritten: a broken cache never stops a run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpsearch.core.io import atomic_write_bytes, atomic_write_text
from mpsearch.sensitivity.base import Estimator, Sensitivity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import SearchSpace

FORMAT = "mpsearch.sensitivity"
VERSION = 1


class CacheWarning(UserWarning):
    """A cache entry could not be used and is being recomputed."""


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of every state_dict entry's name, dtype, shape and bytes (and the model's class)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _hash_value(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(_tensor_bytes(value))
    elif isinstance(value, dict):
        for k in sorted(value):
            digest.update(f"K{k}".encode())
            _hash_value(digest, value[k])
    elif isinstance(value, (tuple, list)):
        digest.update(f"L{len(value)}".encode())
        for v in value:
            _hash_value(digest, v)
    else:
        digest.update(f"V{value!r}".encode())


def data_fingerprint(data: Calibration) -> str:
    """SHA-256 of the calibration tensors, batch sizes and loss function."""
    digest = hashlib.sha256()
    fn = data.loss_fn
    digest.update(f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}|{data.sizes}".encode())
    _hash_value(digest, list(data.batches))
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return value


class SensitivityCache:
    """Sensitivity results on disk, keyed by model, data, space and estimator settings.

    Example:
        >>> cache = SensitivityCache("~/.cache/mpsearch")  # doctest: +SKIP
        >>> sens = cache.get_or_compute(HutchinsonTrace(seed=0), model, calib, space)  # doctest: +SKIP
        >>> cache.hits, cache.misses  # doctest: +SKIP
        (0, 1)
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser()
        self.hits = self.misses = 0

    def key(self, estimator: Estimator, model: nn.Module, data: Calibration, space: SearchSpace) -> str:
        parts = {
            "model": model_fingerprint(model),
            "data": data_fingerprint(data),
            "space": [[u.name, list(u.bits), list(u.weight_shape)] for u in space.units] + [space.quantizer.to_dict()],
            "estimator": f"{type(estimator).__module__}.{type(estimator).__qualname__}",
            "settings": _jsonable(estimator.settings()),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()[:32]

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.directory / f"{key}.json", self.directory / f"{key}.npz"

    def save(self, key: str, sens: Sensitivity) -> None:
        """Store ``sens`` under ``key`` (npz first, then the JSON that points at it)."""
        json_path, npz_path = self.paths(key)
        groups = dict(sens.group_scores or {})
        npz_sha = None
        if sens.group_scores is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **{f"g{i}": a for i, a in enumerate(groups.values())})
            atomic_write_bytes(npz_path, buffer.getvalue())
            npz_sha = hashlib.sha256(buffer.getvalue()).hexdigest()
        doc = {
            "format": FORMAT, "version": VERSION, "key": key, "method": sens.method,
            "scores": {n: float(v) for n, v in sens.scores.items()}, "settings": _jsonable(dict(sens.settings)),
            "seconds": sens.seconds, "details": _jsonable(dict(sens.details)),
            "unit_costs": None if sens.unit_costs is None else _jsonable({n: dict(c) for n, c in sens.unit_costs.items()}),
            "group_units": list(groups), "npz_sha256": npz_sha,
        }
        atomic_write_text(json_path, json.dumps(doc, sort_keys=True, default=repr))

    def load(self, key: str) -> Sensitivity | None:
        """The stored result, or None when absent; a broken entry warns and gives None."""
        json_path, npz_path = self.paths(key)
        if not json_path.exists():
            return None
        try:
            doc = json.loads(json_path.read_bytes())
            if doc.get("format") != FORMAT or doc.get("version") != VERSION or doc.get("key") != key:
                raise ValueError(f"format {doc.get('format')!r} version {doc.get('version')!r}")
            groups = None
            if doc["npz_sha256"] is not None:
                raw = npz_path.read_bytes()
                if hashlib.sha256(raw).hexdigest() != doc["npz_sha256"]:
                    raise ValueError("npz checksum mismatch")
                with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
                    groups = {n: arrays[f"g{i}"] for i, n in enumerate(doc["group_units"])}
            costs = doc["unit_costs"]
            return Sensitivity(
                method=doc["method"], scores=doc["scores"], settings=doc["settings"], seconds=float(doc["seconds"]),
                details=doc["details"], group_scores=groups,
                unit_costs=None if costs is None else {n: {int(b): float(c) for b, c in v.items()} for n, v in costs.items()},
            )
        except Exception as err:
            warnings.warn(
                f"a sensitivity cache entry must be complete and valid, but {json_path.name} is not "
                f"({type(err).__name__}: {err}). Recomputing it and overwriting the entry.",
                CacheWarning, stacklevel=3,
            )
            return None

    def get_or_compute(self, estimator: Estimator, model: nn.Module, data: Calibration, space: SearchSpace) -> Sensitivity:
        """The cached result if there is a valid one, else ``estimator.estimate(...)``, stored."""
        key = self.key(estimator, model, data, space)
        found = self.load(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        sens = estimator.estimate(model, data, space)
        self.save(key, sens)
        return sens


def cached_estimate(
    estimator: Estimator, model: nn.Module, data: Calibration, space: SearchSpace, *, cache_dir: str | os.PathLike[str]
) -> Sensitivity:
    """One-call form of :meth:`SensitivityCache.get_or_compute`.

    >>> # sens = cached_estimate(FisherDiagonal(), model, calib, space, cache_dir=".mpsearch-cache")
    """
    return SensitivityCache(cache_dir).get_or_compute(estimator, model, data, space)
