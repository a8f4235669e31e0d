"""QuantEmbedding (mpsearch/deploy/embedding.py): looked-up rows equal the fake-quant table, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import DataError, PlanMismatchError
from mpsearch.deploy.embedding import QuantEmbedding
from mpsearch.deploy.modules import QuantLinear
from mpsearch.kernels.backends import BACKENDS
from mpsearch.kernels.quantize import fake_quantize


def _table(rows: int = 37, dim: int = 40) -> nn.Embedding:
    torch.manual_seed(0)
    return nn.Embedding(rows, dim)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [2, 3, 5, 8])
@pytest.mark.parametrize("config", [QuantizerConfig(), QuantizerConfig(scheme="affine", group_size=16)],
                         ids=["symmetric", "affine-g16"])
def test_rows_equal_the_fake_quant_table(backend: str, bits: int, config: QuantizerConfig) -> None:
    table = _table()
    q = QuantEmbedding.from_float(table, bits, config, backend=backend)
    ids = torch.tensor([[0, 5, 36, 5], [1, 2, 3, 4]])
    expected = fake_quantize(table.weight.detach(), bits, config)[ids]
    assert torch.equal(q(ids), expected)
    assert q(torch.tensor(7)).shape == (40,)  # a scalar id, as nn.Embedding takes it


def test_tied_table_reads_the_layer_codes_and_follows_it() -> None:
    table = _table()
    head = nn.Linear(40, 37, bias=False)
    head.weight = table.weight
    layer = QuantLinear.from_float(head, 4, backend="torch")
    q = QuantEmbedding.tied_to(layer, table)
    assert q.packed is layer.packed and q.scale is layer.scale and q.zero is None and q.state_dict() == {}
    ids = torch.tensor([3, 0, 36])
    assert torch.equal(q(ids), layer.dequantized()[ids])
    layer.scale.mul_(2)  # the table has no copy of its own
    assert torch.equal(q(ids), layer.dequantized()[ids])
    assert "tied=True" in repr(q)


def test_refusals_name_the_rule_and_the_fix() -> None:
    with pytest.raises(PlanMismatchError, match="max_norm renormalizes"):
        QuantEmbedding.from_float(nn.Embedding(4, 8, max_norm=1.0), 4)

    class Scaled(nn.Embedding):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return super().forward(ids) * 3

    with pytest.raises(PlanMismatchError, match="Scaled has its own forward.*Plan it at 16 bits"):
        QuantEmbedding.from_float(Scaled(4, 8), 4)
    with pytest.raises(PlanMismatchError, match=r"shape of its layer's \(out, in\) weight"):
        QuantEmbedding.tied_to(QuantLinear.from_float(nn.Linear(8, 5), 4), nn.Embedding(4, 8))
    with pytest.raises(DataError, match="integer token ids.*LongTensor"):
        QuantEmbedding.from_float(nn.Embedding(4, 8), 4)(torch.zeros(2))
