"""`mpsearch export`: a compressed-tensors folder from a saved tiny decoder, the check's report, refusals; GGUF (slow)."""

from __future__ import annotations

import json

import pytest
import torch

from mpsearch.cli.main import main
from mpsearch.core.plan import BitPlan

pytest.importorskip("compressed_tensors")
transformers = pytest.importorskip("transformers")


@pytest.fixture
def model_dir(tmp_path):
    import tokenizers

    from mpsearch.zoo.llm import tiny_decoder

    model = tiny_decoder(seed=3)
    folder = tmp_path / "tiny"
    model.save_pretrained(str(folder))
    vocab = {f"t{i}": i for i in range(259)} | {"[UNK]": 259}
    raw = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(str(folder))
    return folder, model


def _plan(model, tmp_path, widths):
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    plan = BitPlan(bits={n: widths[i % len(widths)] for i, n in enumerate(names)} | {"lm_head": 16})
    return plan, plan.save(tmp_path / "plan.json")


def test_compressed_tensors_for_vllm_reports_changes_and_loads(model_dir, tmp_path, capsys):
    folder, model = model_dir
    plan, plan_file = _plan(model, tmp_path, [3, 4, 8, 4, 2, 6, 4])
    out = tmp_path / "ct"
    code = main(["export", "--plan", str(plan_file), "--model", str(folder), "--format", "compressed-tensors",
                 "--target", "vllm", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "changed to fit the target" in printed and "fused" in printed
    written = BitPlan.load(out / "plan.json")
    assert set(b for b in written.bits.values()) <= {4, 8, 16}
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized"
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    from mpsearch.deploy.evaluate import fake_quantize_model

    ids = torch.randint(0, 260, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, fake_quantize_model(model, written)(ids).logits, rtol=1e-5, atol=1e-5)


def test_strict_refuses_and_writes_nothing(model_dir, tmp_path, capsys):
    folder, model = model_dir
    _, plan_file = _plan(model, tmp_path, [3, 4])
    out = tmp_path / "ct"
    code = main(["export", "--plan", str(plan_file), "--model", str(folder), "--format", "compressed-tensors",
                 "--target", "vllm", "--strict", "--out", str(out)])
    assert code == 2 and "must fit vllm unchanged" in capsys.readouterr().err
    assert not (out / "config.json").exists()


def test_gguf_needs_a_gguf_file(model_dir, tmp_path, capsys):
    folder, model = model_dir
    _, plan_file = _plan(model, tmp_path, [4])
    code = main(["export", "--plan", str(plan_file), "--model", str(folder), "--format", "gguf", "--out", str(tmp_path / "m.gguf")])
    assert code == 2 and ".gguf file" in capsys.readouterr().err
