"""Sensitivity estimators: how much each unit's (or group's) loss suffers from quantization noise.

Every estimator has one interface, ``estimate(model, data, space) -> Sensitivity``,
takes ``seed`` and ``progress`` options, and is registered by name in
:data:`ESTIMATORS` (``get_estimator("fisher")``). :func:`mpsearch.pricing.build_cost_table` turns any
result into a CostTable; :class:`SensitivityCache` stores results on disk;
:func:`distill_bn_data` makes data-free (ZeroQ) calibration inputs.

Scoring modes (an estimator's ``modes``, read by :func:`~mpsearch.sensitivity.blockwise.scoring_modes`):
``xtx`` (:class:`InputDiagonal`, the mean squared input of each weight's column) and ``obs_block``
(:class:`BlockOBS`, SliM-LLM's OBS salience) read only each unit's inputs, so they run one decoder
block at a time (``mode="block"``, the default, for causal LMs) or on the whole model
(``mode="whole"``, any network); block-wise and whole-model scores are equal. Every other
estimator needs the loss's gradient through all later layers, or the loss itself, and runs on the
whole model only.
"""

from __future__ import annotations

from mpsearch.sensitivity.base import ESTIMATORS, Estimator, Sensitivity, get_estimator
from mpsearch.sensitivity.blockwise import BlockOBS, InputDiagonal
from mpsearch.sensitivity.cache import CacheWarning, SensitivityCache, cached_estimate
from mpsearch.sensitivity.calibration import Calibration, pseudo_label_loss
from mpsearch.sensitivity.distill import DistilledData, bn_statistics_loss, distill_bn_data
from mpsearch.sensitivity.embedding import LayerInputModification, ZScoreOutliers
from mpsearch.sensitivity.hessian import HutchinsonTrace
from mpsearch.sensitivity.hessian_diag import HutchinsonDiagonal
from mpsearch.sensitivity.hessian_eig import PowerIterationEigen
from mpsearch.sensitivity.losses import embedding_distillation_loss, embedding_gn_calibration, minilm_calibration
from mpsearch.sensitivity.perturbation import PerturbationKL
from mpsearch.sensitivity.relevance import LayerRelevance
from mpsearch.sensitivity.salience import FirstOrderSalience, FisherDiagonal, GradientOutliers
from mpsearch.sensitivity.salience_obs import OBSSalience
from mpsearch.sensitivity.token_fisher import TokenFisher

__all__ = [
    "ESTIMATORS",
    "BlockOBS",
    "CacheWarning",
    "Calibration",
    "DistilledData",
    "Estimator",
    "FirstOrderSalience",
    "FisherDiagonal",
    "GradientOutliers",
    "HutchinsonDiagonal",
    "HutchinsonTrace",
    "InputDiagonal",
    "LayerInputModification",
    "LayerRelevance",
    "OBSSalience",
    "PerturbationKL",
    "PowerIterationEigen",
    "Sensitivity",
    "SensitivityCache",
    "TokenFisher",
    "ZScoreOutliers",
    "bn_statistics_loss",
    "cached_estimate",
    "distill_bn_data",
    "embedding_distillation_loss",
    "embedding_gn_calibration",
    "get_estimator",
    "minilm_calibration",
    "pseudo_label_loss",
]
