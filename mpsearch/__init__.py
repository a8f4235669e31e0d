"""mpsearch: mixed-precision bit-allocation search for neural-network quantization.

Measure how sensitive each layer is, find the bits per layer that lose the least
under a memory budget, and look at the whole Pareto front::

    import mpsearch as mp
    model = mp.zoo.load_pretrained("resnet20")
    images, labels = mp.zoo.load_cifar10()
    x, y = mp.zoo.to_tensor(images), torch.from_numpy(labels)
    space = mp.discover(model)                                 # units, bit choices, pins
    calib = mp.Calibration.classification(x[:256], y[:256])
    sens = mp.HutchinsonTrace(seed=0).estimate(model, calib, space)
    costs = mp.build_cost_table(model, space, sens)
    result = mp.solve(costs, mp.Budget.avg_bits(3.0))          # exact ILP
    result.plan.save("plan.json")
    front = mp.pareto(costs, [2.5, 3, 3.5, 4]); front.plot("front.png")

Public names are imported lazily, so ``import mpsearch.solvers`` (arrays only)
does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MPSearchError": "mpsearch.core.errors",
    "PlanFormatError": "mpsearch.core.errors",
    "PlanMismatchError": "mpsearch.core.errors",
    "BitsOutOfRangeError": "mpsearch.core.errors",
    "InfeasibleBudgetError": "mpsearch.core.errors",
    "BudgetTooLargeError": "mpsearch.core.errors",
    "FloatModulesWarning": "mpsearch.core.errors",
    "Budget": "mpsearch.core.budget",
    "CostTable": "mpsearch.core.costs",
    "BitPlan": "mpsearch.core.plan",
    "plan_from_assignment": "mpsearch.core.plan_build",
    "QuantizerConfig": "mpsearch.core.config",
    "Scheme": "mpsearch.core.config",
    "QuantUnit": "mpsearch.space.discover",
    "SearchSpace": "mpsearch.space.discover",
    "discover": "mpsearch.space.discover",
    "Calibration": "mpsearch.sensitivity.calibration",
    "Sensitivity": "mpsearch.sensitivity.base",
    "build_cost_table": "mpsearch.pricing.tables",
    "HutchinsonTrace": "mpsearch.sensitivity.hessian",
    "solve": "mpsearch.solvers",
    "SolveResult": "mpsearch.solvers.base",
    "Status": "mpsearch.solvers.base",
    "pareto": "mpsearch.solvers.pareto",
    "measure_bias_correction": "mpsearch.deploy.bias_correction",
    "ParetoFront": "mpsearch.solvers.pareto",
    "HutchinsonDiagonal": "mpsearch.sensitivity",
    "PowerIterationEigen": "mpsearch.sensitivity",
    "FisherDiagonal": "mpsearch.sensitivity",
    "FirstOrderSalience": "mpsearch.sensitivity",
    "GradientOutliers": "mpsearch.sensitivity",
    "OBSSalience": "mpsearch.sensitivity",
    "LayerRelevance": "mpsearch.sensitivity",
    "LayerInputModification": "mpsearch.sensitivity",
    "ZScoreOutliers": "mpsearch.sensitivity",
    "PerturbationKL": "mpsearch.sensitivity",
    "distill_bn_data": "mpsearch.sensitivity",
    "SensitivityCache": "mpsearch.sensitivity",
    "cached_estimate": "mpsearch.sensitivity",
    "get_estimator": "mpsearch.sensitivity",
    "ESTIMATORS": "mpsearch.sensitivity",
    "Study": "mpsearch.workflows.study",
    "GroupIndex": "mpsearch.core.costs",
    "SOLVERS": "mpsearch.solvers",
    "Backend": "mpsearch.kernels.backends",
    "register_backend": "mpsearch.kernels.backends",
    "get_backend": "mpsearch.kernels.backends",
    "fake_quantize_model": "mpsearch.deploy.evaluate",
    "evaluate_plan": "mpsearch.deploy.evaluate",
    "gptq_quantize_model": "mpsearch.deploy.gptq",
    "QuantEmbedding": "mpsearch.deploy.embedding",
}
_SUBMODULES = {
    name: f"mpsearch.{name}"
    for name in ("core", "space", "sensitivity", "pricing", "solvers", "hardware_models", "kernels",
                 "deploy", "workflows", "zoo", "testing")
}
_SUBMODULES["errors"] = "mpsearch.core.errors"

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    raise AttributeError(f"module 'mpsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
