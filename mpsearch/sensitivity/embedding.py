"""Block importance from output embeddings (LIM) and from weight outliers (z-score).

Dumitru et al., "Layer-Wise Quantization: A Pragmatic and Effective Method for
Quantizing LLMs Beyond Integer Bit-Levels" (2024) rank residual blocks by two
scores, both computed here:

* LIM (layer input modification): ``1 - cos(block input, block output)``,
  averaged over the calibration samples. A block that barely changes its
  input is unimportant. Transformer layers are compared token by token
  (hidden size), averaged over real tokens; a ResNet BasicBlock compares the
  flattened feature maps of one image. Where a block changes shape (a
  stride-2 BasicBlock), the input is first mapped by the block's own
  ``shortcut`` (subsample and zero-pad), the identity path it is added to.
* z-score: the share of the block's weights (all its quantizable units
  together) whose z-score ``(w - mean) / std`` exceeds 1 in magnitude. Needs
  no data.

Mapping onto units: every unit inside a block gets the block's score
(``scale="none"``), or the block score times the unit's share of the block's
weights (``scale="weights"``). Units outside every block (the stem conv, the
classifier, BERT's pooler) get the mean block score (``outside="mean"``) or
a given number. Blocks are the ResNet ``BasicBlock`` modules (``layerX.Y``)
and the transformer layers (modules whose class name ends in ``Layer``,
e.g. BERT's ``encoder.layer.N``), or the modules named by ``blocks``
patterns. The z-score needs no residual structure: in a model without
blocks (a plain ``nn.Sequential``) each unit is its own block.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from mpsearch.core.errors import ConfigError
from mpsearch.sensitivity._protocols import is_basic_block
from mpsearch.sensitivity.base import ESTIMATORS, Estimator, Sensitivity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import SearchSpace, unit_modules
from mpsearch.space.forward import batch_inputs, token_mask
from mpsearch.space.hooks import ModelHooks


def find_blocks(model: nn.Module, patterns: Sequence[str] | None = None) -> list[str]:
    """Names of the residual blocks of ``model``, outermost first, in module order.

    >>> from mpsearch.zoo import cifar_resnet
    >>> find_blocks(cifar_resnet(20))[:2]
    ['layer1.0', 'layer1.1']
    """
    names = []
    for name, module in model.named_modules():
        if not name:
            continue
        if patterns is not None:
            hit = any(fnmatch.fnmatchcase(name, p) for p in patterns)
        else:
            cls = type(module).__name__
            hit = is_basic_block(module) or (cls.endswith("Layer") and "layer." in name)
        if hit and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    if not names:
        raise ConfigError(
            f"block scores need residual blocks, but none were found in {type(model).__name__} "
            f"(patterns={patterns!r}). Pass `blocks=` patterns such as ['encoder.layer.*']."
        )
    return names


def block_of(unit: str, blocks: Sequence[str]) -> str | None:
    """The block holding ``unit`` (a unit may be a block of its own), or None."""
    return next((b for b in blocks if unit == b or unit.startswith(b + ".")), None)


def zscore_share(weights: Sequence[torch.Tensor]) -> float:
    """Share of all given weights whose |z-score| exceeds 1 (mean and std over all of them).

    >>> zscore_share([torch.tensor([0.0, 0.0, 0.0, 10.0])])
    0.25
    """
    flat = torch.cat([w.detach().reshape(-1).double() for w in weights])
    std = flat.std(unbiased=False)
    if float(std) == 0.0:
        return 0.0
    z = (flat - flat.mean()) / std
    return float((z.abs() > 1).double().mean())


def _output_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def lim_of(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> tuple[float, int]:
    """Summed ``1 - cos`` and the count: per token for (B, T, H), per sample otherwise."""
    if x.dim() == 3 and y.shape == x.shape:
        cos = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1)  # (B, T)
        keep = torch.ones_like(cos, dtype=torch.bool) if mask is None else mask.bool()
        return float((1 - cos)[keep].clamp(min=0).sum()), int(keep.sum())
    cos = torch.nn.functional.cosine_similarity(x.flatten(1).double(), y.flatten(1).double(), dim=1)
    return float((1 - cos).clamp(min=0).sum()), int(cos.numel())


class _BlockScores(Estimator):
    """Shared mapping of block scores onto units."""

    def __init__(self, *, blocks: Sequence[str] | None = None, scale: str = "none", outside: str | float = "mean",
                 seed: int = 0, progress: bool = True, time_limit: float | None = None) -> None:
        if scale not in ("none", "weights"):
            raise ConfigError(f"`scale` must be 'none' or 'weights', but got scale={scale!r}. Use 'none'.")
        if outside != "mean" and not (isinstance(outside, (int, float)) and outside >= 0):
            raise ConfigError(f"`outside` must be 'mean' or a non-negative number, but got outside={outside!r}.")
        self.blocks, self.scale, self.outside = blocks, scale, outside
        self.seed, self.progress, self.time_limit = seed, progress, time_limit

    def settings(self) -> dict:
        return {"blocks": self.blocks, "scale": self.scale, "outside": self.outside, "seed": self.seed}

    def block_scores(self, model: nn.Module, data: Calibration, blocks: list[str]) -> tuple[dict[str, float], dict]:
        raise NotImplementedError

    def find(self, model: nn.Module, space: SearchSpace) -> list[str]:
        return find_blocks(model, self.blocks)

    def estimate(self, model: nn.Module, data: Calibration, space: SearchSpace) -> Sensitivity:
        start = time.perf_counter()
        modules = dict(zip(space.names, unit_modules(model, space)))
        blocks = self.find(model, space)
        per_block, details = self.block_scores(model, data, blocks)
        members = {b: [u for u in space.units if block_of(u.name, blocks) == b] for b in blocks}
        default = float(sum(per_block.values()) / len(per_block)) if self.outside == "mean" else float(self.outside)
        scores = {}
        for unit in space.units:
            block = block_of(unit.name, blocks)
            if block is None:
                scores[unit.name] = default
                continue
            share = 1.0
            if self.scale == "weights":
                share = unit.n_weights / sum(u.n_weights for u in members[block])
            scores[unit.name] = per_block[block] * share
        details = {**details, "block_scores": per_block, "outside_default": default,
                   "unit_block": {n: block_of(n, blocks) for n in modules}}
        return Sensitivity(method=self.name, scores=scores, settings=self.settings(),
                           seconds=time.perf_counter() - start, details=details)


@ESTIMATORS.register("lim")
class LayerInputModification(_BlockScores):
    """LIM block importance: ``1 - cos(block input, block output)`` on calibration data.

    >>> est = LayerInputModification(progress=False)
    >>> # sens = est.estimate(load_pretrained("resnet20"), calib, space)
    """

    name = "lim"
    contract_skip = "LIM needs residual blocks (ResNet BasicBlocks, transformer layers); the contract net has none"

    def block_scores(self, model: nn.Module, data: Calibration, blocks: list[str]) -> tuple[dict[str, float], dict]:
        start = time.perf_counter()
        named = dict(model.named_modules())
        sums = {b: 0.0 for b in blocks}
        counts = {b: 0 for b in blocks}
        state: dict = {"mask": None}

        def hook(name):
            def fn(module, args, kwargs, out):
                x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
                y = _output_tensor(out)
                if x.shape != y.shape and hasattr(module, "shortcut"):
                    x = module.shortcut(x)
                if x.shape != y.shape:
                    raise ConfigError(f"LIM compares a block's input and output, but {name!r} maps {tuple(x.shape)} "
                                      f"to {tuple(y.shape)} without a `shortcut`. Pass `blocks=` of shape-preserving blocks.")
                s, c = lim_of(x, y, state["mask"])
                sums[name] += s
                counts[name] += c
            return fn

        used = 0
        with ModelHooks(model) as hooks, torch.no_grad():
            for b in blocks:
                hooks.forward(named[b], hook(b), with_kwargs=True)
            for batch in tqdm(data.batches, desc="lim", disable=not self.progress, leave=False):
                if used and self.time_limit is not None and time.perf_counter() - start > self.time_limit:
                    break
                state["mask"] = token_mask(batch)
                args, kwargs = batch_inputs(batch)
                model(*args, **kwargs)
                used += 1
        return {b: sums[b] / max(counts[b], 1) for b in blocks}, {"batches_used": used}


@ESTIMATORS.register("zscore")
class ZScoreOutliers(_BlockScores):
    """z-score block importance: the share of a block's weights with |z| > 1 (no data needed).

    >>> est = ZScoreOutliers(progress=False)
    >>> # sens = est.estimate(model, calib, space)  # calib is not used
    """

    name = "zscore"

    def find(self, model: nn.Module, space: SearchSpace) -> list[str]:
        try:
            return find_blocks(model, self.blocks)
        except ConfigError:
            if self.blocks is not None:
                raise
            return list(space.names)  # no residual blocks: every unit is its own block

    def block_scores(self, model: nn.Module, data: Calibration, blocks: list[str]) -> tuple[dict[str, float], dict]:
        from mpsearch.kernels.fake import quantizable_kind

        named = dict(model.named_modules())
        out = {}
        for b in tqdm(blocks, desc="zscore", disable=not self.progress, leave=False):
            weights = [m.weight for m in named[b].modules() if quantizable_kind(m) is not None]
            out[b] = zscore_share(weights) if weights else 0.0
        return out, {}


__all__ = ["LayerInputModification", "ZScoreOutliers", "find_blocks", "lim_of", "zscore_share"]
