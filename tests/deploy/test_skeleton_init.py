"""Rebuilding a packed model from its recorded architecture runs no initializer: on meta tensors they would
dispatch through torch's reference kernels and import its compiler stack (about 80 MiB) for nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from torch import nn

from mpsearch.deploy.architecture import meta_parameters


def test_initializers_are_skipped_inside_and_restored_after():
    kaiming = nn.init.kaiming_normal_
    with meta_parameters():
        layer = nn.Linear(4, 3)
        assert layer.weight.device.type == "meta"
        t = torch.zeros(2)
        assert nn.init.normal_(t) is t and float(t.abs().sum()) == 0.0  # untouched
    assert nn.init.kaiming_normal_ is kaiming
    assert float(nn.init.ones_(torch.zeros(2)).sum()) == 2.0


def test_loading_a_packed_resnet_does_not_import_the_compiler(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from mpsearch.core.config import QuantizerConfig
        from mpsearch.core.plan import BitPlan
        from mpsearch.deploy.apply import apply
        from mpsearch.deploy.export import export, load
        from mpsearch.space.discover import discover_quietly
        from mpsearch.zoo.resnet import cifar_resnet
        model = cifar_resnet(20).eval()
        plan = BitPlan(bits=dict.fromkeys(discover_quietly(model).names, 4), quantizer=QuantizerConfig())
        export(apply(model, plan, backend="torch"), plan, {str(tmp_path / "packed")!r})
        before = "torch._dynamo" in sys.modules
        load({str(tmp_path / "packed")!r}, backend="torch")
        print(before, "torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split()[-1] == "False", out.stdout + out.stderr
