"""load(folder) without the float model: the architecture recorded at export, parameters on meta."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import DataError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.apply import apply
from mpsearch.deploy.architecture import describe, meta_tensors, skeleton
from mpsearch.deploy.export import export, load
from mpsearch.space.discover import discover_quietly
from mpsearch.zoo.models import load_pretrained

pytest.importorskip("safetensors")


def _plan(model, config, seed=0, grouped=False):
    rng = np.random.default_rng(seed)
    bits = {}
    for u in discover_quietly(model).units:
        if grouped:
            n = -(-u.fan_in // config.group_size)
            bits[u.name] = tuple(int(b) for b in rng.choice((2, 3, 4), u.out_features * n))
        else:
            bits[u.name] = int(rng.choice((2, 4, 8, 16)))
    return BitPlan(bits=bits, quantizer=config)


def test_resnet20_loads_from_its_record(tmp_path):
    model = load_pretrained("resnet20")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for grouped, config in ((False, QuantizerConfig()), (True, QuantizerConfig(group_size=16))):
        plan = _plan(model, config, grouped=grouped)
        q = apply(model, plan, "numba")
        folder = export(q, plan, tmp_path / f"r{int(grouped)}")
        loaded = load(folder, backend="numba")
        assert not meta_tensors(loaded)
        with torch.no_grad():
            assert torch.equal(loaded(x), q(x)) and torch.equal(loaded(x[:1]), q(x[:1]))


def test_tiny_decoder_loads_from_its_config(tmp_path):
    pytest.importorskip("transformers")
    from mpsearch.zoo.llm import tiny_decoder

    ids = torch.randint(0, 260, (2, 7), generator=torch.Generator().manual_seed(1))
    for tied in (True, False):
        model = tiny_decoder(seed=0, tied=tied)
        config = QuantizerConfig(scheme="affine", group_size=16)
        plan = _plan(model, config, seed=2, grouped=not tied)
        if tied:  # float lm_head and embedding stay one shared parameter
            plan = BitPlan(bits={**plan.bits, "lm_head": 16}, quantizer=config)
        q = apply(model, plan, "numba")
        loaded = load(export(q, plan, tmp_path / f"t{int(tied)}"), backend="numba")
        assert describe(loaded)["class"] == "LlamaForCausalLM"
        if tied:
            assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, q(ids).logits)
            assert torch.equal(loaded(ids[:1, :1]).logits, q(ids[:1, :1]).logits)


def test_skeleton_allocates_no_parameters_and_unknown_records_are_refused():
    model = skeleton({"source": "mpsearch.zoo", "builder": "cifar_resnet", "depth": 20,
                      "num_classes": 10})
    assert all(p.device.type == "meta" for p in model.parameters())
    with pytest.raises(DataError, match="architecture recorded at export.*load\\(folder, base_model\\)"):
        skeleton(None)
