"""The same inputs and seed give byte-identical plans, in one process and across processes."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import torch
from torch import nn
import mpsearch as mp

torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
g = torch.Generator().manual_seed(1)
x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
space = mp.discover(model, pin_first_last=None)
sens = mp.HutchinsonTrace(seed=5, max_probes=24, progress=False).estimate(model, mp.Calibration.classification(x, y, batch_size=16), space)
costs = mp.build_cost_table(model, space, sens)
plan = mp.solve(costs, 4.0).plan
import sys
sys.stdout.write(plan.to_json())
"""


def run() -> bytes:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, check=True, timeout=300)
    return out.stdout


def test_identical_plan_bytes_across_processes():
    first, second = run(), run()
    assert first and first == second
    assert b'"format": "mpsearch.bitplan"' in first
