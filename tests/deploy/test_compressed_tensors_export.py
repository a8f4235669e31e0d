"""compressed-tensors export: packing matches the library's, and the checkpoint loads in transformers and
computes what mpsearch's fake-quantized model computes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import ConfigError, PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.compressed_tensors_export import export_compressed_tensors, pack_rows
from mpsearch.deploy.evaluate import fake_quantize_model

pytest.importorskip("transformers")
ct = pytest.importorskip("compressed_tensors")


def _linears(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_rows_equals_library_packing(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=(5, 77))
    ours = pack_rows(codes, bits)
    theirs = pack_to_int32(torch.from_numpy(codes - 2 ** (bits - 1)).to(torch.int8), bits).numpy()
    np.testing.assert_array_equal(ours, theirs)


def _plan(model, scheme: str, group: int | None) -> BitPlan:
    widths = [2, 3, 4, 8, 16, 5, 6]
    bits = {n: widths[i % len(widths)] for i, n in enumerate(_linears(model))} | {"lm_head": 16}
    return BitPlan(bits=bits, quantizer=QuantizerConfig(scheme=scheme, group_size=group))


@pytest.mark.parametrize(("scheme", "group"), [("symmetric", None), ("symmetric", 16), ("symmetric", 24)])
def test_checkpoint_loads_in_transformers_and_matches_fake_quant(tmp_path, scheme, group):
    import transformers

    from mpsearch.zoo.llm import tiny_decoder

    model = tiny_decoder(seed=1)
    plan = _plan(model, scheme, group)
    folder = export_compressed_tensors(model, plan, tmp_path / "ct")
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert {g["weights"]["num_bits"] for g in config["config_groups"].values()} == {2, 3, 4, 5, 6, 8}
    assert set(config["ignore"]) == {n for n, b in plan.bits.items() if b == 16}
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    reference = fake_quantize_model(model, plan)
    ids = torch.randint(0, 260, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = reference(ids).logits, loaded(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(want, model(ids).logits, atol=1e-3)  # the quantization did change the model


def test_affine_checkpoint_decompresses_to_fake_quant_weights(tmp_path):
    """Affine (zero-point) layers are checked through the library's own decompressor: transformers 5.25 with
    compressed-tensors 0.20.1 builds its skeleton with unpacked zero-points and refuses the packed ones
    that the library's own compressor writes."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors.torch import load_file

    from mpsearch.zoo.llm import tiny_decoder

    model = tiny_decoder(seed=2)
    plan = _plan(model, "affine", 16)
    folder = export_compressed_tensors(model, plan, tmp_path / "ct")
    groups = json.loads((folder / "config.json").read_text())["quantization_config"]["config_groups"]
    tensors = load_file(str(folder / "model.safetensors"))
    reference = dict(fake_quantize_model(model, plan).named_modules())
    checked = 0
    for group in groups.values():
        scheme = QuantizationScheme(**group)
        for name in group["targets"]:
            local = {k.rpartition(".")[2]: v for k, v in tensors.items() if k.rpartition(".")[0] == name}
            weight = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
            torch.testing.assert_close(weight, reference[name].weight.detach(), rtol=0, atol=1e-6)
            checked += 1
    assert checked == sum(1 for b in plan.bits.values() if b != 16)


def test_refuses_what_the_format_cannot_hold(tmp_path):
    from mpsearch.zoo.llm import tiny_decoder

    model = tiny_decoder(seed=0)
    names = _linears(model)
    mixed = BitPlan(bits={n: (2, 4) * 48 if i == 0 else 4 for i, n in enumerate(names)} | {"lm_head": 16},
                    quantizer=QuantizerConfig(group_size=24))
    with pytest.raises(PlanMismatchError, match="unchanged"):
        export_compressed_tensors(model, mixed, tmp_path / "a")
    odd = BitPlan(bits=dict.fromkeys(names, 4) | {"lm_head": 16}, quantizer=QuantizerConfig(group_size=40))
    with pytest.raises(PlanMismatchError, match="divide"):
        export_compressed_tensors(model, odd, tmp_path / "b")
    gptq = BitPlan(bits=dict.fromkeys(names, 4) | {"lm_head": 16}, quantizer=QuantizerConfig(method="gptq"))
    with pytest.raises(ConfigError, match="round-to-nearest"):
        export_compressed_tensors(model, gptq, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
