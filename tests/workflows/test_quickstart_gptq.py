"""The quickstart with a GPTQ quantizer: its plans record GPTQ and its top-1 is the GPTQ model's."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from mpsearch.core.config import RECOMMENDED
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.evaluate import evaluate_plan
from mpsearch.workflows.quickstart import run_quickstart
from mpsearch.zoo import load_pretrained
from mpsearch.zoo.data import load_cifar10_split


@pytest.mark.slow  # GPTQ of ResNet-20 for every plan, twice with bias correction (about a minute on two cores)
def test_quickstart_measures_gptq_plans(tmp_path):
    gptq = dataclasses.replace(RECOMMENDED, method="gptq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # four probes make a noisy estimate; the plans are what is checked
        result = run_quickstart(out_dir=tmp_path, n_calib=32, budgets=(3.0,), uniform=(4,), front_budgets=(3.0,),
                                max_probes=4, quantizer=gptq, progress=False, log=lambda _: None)
    rows = {r.plan: r.top1 for r in result.table.itertuples()}
    split = load_cifar10_split(None, 32)
    model = load_pretrained("resnet20")
    for label, slug in (("uniform W4", "uniform_W4"), ("mixed 3 bits", "mixed_3_bits")):
        plan = BitPlan.load(tmp_path / "plans" / f"{slug}.json")
        assert plan.quantizer == gptq and plan.bias_correction
        assert rows[label] == pytest.approx(evaluate_plan(model, plan, split.x_eval, split.y_eval, batches=[split.x_calib]))
