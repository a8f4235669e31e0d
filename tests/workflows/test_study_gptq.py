"""A Study whose quantizer is GPTQ: every plan records it and is measured after GPTQ on the study's calibration."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.evaluate import fake_quantize_model
from mpsearch.deploy.lm_metrics import perplexity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import discover_quietly
from mpsearch.workflows.study import Study
from mpsearch.zoo.llm import tiny_decoder

pytestmark = pytest.mark.torch_threads(1)


def test_gptq_study_on_a_tiny_decoder(tmp_path):
    model = tiny_decoder(seed=0, layers=2)
    windows = torch.randint(0, 260, (8, 24), generator=torch.Generator().manual_seed(0))
    calib, held_out = Calibration.causal_lm(windows[:6], batch_size=3), windows[6:]
    quantizer = QuantizerConfig(scheme="affine", group_size=16, method="gptq", act_order=True)
    space = discover_quietly(model, bits=(2, 3, 4), pin_first_last=None, exclude=["lm_head"], quantizer=quantizer)
    study = Study(model=model, calibration=calib, space=space, metric=lambda m: perplexity(m, held_out).perplexity,
                  estimators=["xtx"], solvers=["ilp"], budgets=[3 + 24 / 16], uniform=[3], out_dir=tmp_path,
                  metric_name="perplexity", progress=False)
    frame = study.run()
    assert list(frame["status"]) == ["uniform", "optimal"]
    for row in frame.itertuples():
        plan = BitPlan.load(tmp_path / row.plan_file)
        assert plan.quantizer == quantizer
        gptq = perplexity(fake_quantize_model(model, plan, batches=calib.batches), held_out).perplexity
        rtn = perplexity(fake_quantize_model(model, BitPlan(bits=plan.bits, quantizer=QuantizerConfig(
            scheme="affine", group_size=16))), held_out).perplexity
        assert row.metric == pytest.approx(gptq, rel=1e-9) and gptq != pytest.approx(rtn, rel=1e-6)
