"""PyTorch packed matmul against a float64 reference, on CPU (and CUDA when present)."""

from __future__ import annotations

import pytest
import torch

from mpsearch.core.errors import BitsOutOfRangeError, DataError
from mpsearch.kernels import torch_packed
from mpsearch.kernels.packing import pack
from mpsearch.kernels.torch_packed import dequantize_packed, packed_matmul


def make_case(bits: int, out: int, K: int, G: int | None, batch: tuple[int, ...], seed: int = 0,
              scale_dtype: torch.dtype = torch.float16):
    """Random packed weight and x as tensors; the float64 weight and reference x @ W.T."""
    gen = torch.Generator().manual_seed(seed)
    n_groups = 1 if G is None else -(-K // G)
    codes = torch.randint(0, 1 << bits, (out, K), dtype=torch.uint8, generator=gen)
    scale = (torch.rand(out, n_groups, generator=gen) * 0.1 + 0.01).to(scale_dtype)
    zero = torch.randint(0, 1 << bits, (out, n_groups), dtype=torch.uint8, generator=gen)
    group_of = torch.arange(K) // (K if G is None else G)
    w = (codes.double() - zero[:, group_of].double()) * scale.double()[:, group_of]
    x = torch.randn(*batch, K, generator=gen)
    return pack(codes, bits), scale, zero, x, w, x.double() @ w.T


def assert_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    """Within 1e-5 relative, measured against the largest output (float32 accumulation)."""
    assert y.shape == ref.shape and y.dtype == torch.float32
    torch.testing.assert_close(y.cpu().double(), ref, rtol=1e-5,
                               atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("G", [None, 32, 128])
@pytest.mark.parametrize("batch", [(), (1,), (4,), (32,), (2, 3)])
def test_matches_reference(bits: int, G: int | None, batch: tuple[int, ...]) -> None:
    # K = 300: not a multiple of G, nor of 8 codes per chunk.
    packed, scale, zero, x, _, ref = make_case(bits, 37, 300, G, batch, seed=bits)
    assert_close(packed_matmul(packed, scale, zero, x, bits, 300, G), ref)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("K, G", [(256, 64), (1000, 8), (300, 100), (301, 12), (7, None)])
def test_other_group_sizes(bits: int, K: int, G: int | None) -> None:
    """Slot planes where groups hold whole chunks; natural-order unpack where they do not."""
    packed, scale, zero, x, w, ref = make_case(bits, 19, K, G, (3,), scale_dtype=torch.bfloat16)
    assert_close(packed_matmul(packed, scale, zero, x, bits, K, G), ref)
    torch.testing.assert_close(dequantize_packed(packed, scale, zero, bits, K, G).double(), w)


def test_many_row_tiles_and_half_activations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_packed, "_TILE_ELEMENTS", 3000)  # 10 rows of 300 per tile
    packed, scale, zero, x, w, ref = make_case(4, 95, 300, 128, (2,))
    assert_close(packed_matmul(packed, scale, zero, x, 4, 300, 128), ref)
    half = packed_matmul(packed, scale, zero, x.half(), 4, 300, 128)
    assert_close(half, x.half().double() @ w.T)


def test_errors() -> None:
    packed, scale, zero, x, _, _ = make_case(4, 5, 300, 128, (2,))
    with pytest.raises(BitsOutOfRangeError, match="within 1..8"):
        packed_matmul(packed, scale, zero, x, 0, 300, 128)
    with pytest.raises(DataError, match="must be a torch.Tensor for the PyTorch backend"):
        packed_matmul(packed.numpy(), scale, zero, x, 4, 300, 128)
    with pytest.raises(DataError, match="All operands must be on one device"):
        packed_matmul(packed, scale, zero, x.to("meta"), 4, 300, 128)
    with pytest.raises(DataError, match="last dimension is K=300"):
        packed_matmul(packed, scale, zero, x.T, 4, 300, 128)
    with pytest.raises(DataError, match="`packed` must be a 2-D uint8 array"):
        packed_matmul(packed.to(torch.int16), scale, zero, x, 4, 300, 128)


@pytest.mark.slow  # torch.compile of the tile function takes ~15 s on a 2-core CPU
def test_compiled_path_matches() -> None:
    packed, scale, zero, x, _, ref = make_case(4, 64, 300, 128, (4,))
    assert_close(packed_matmul(packed, scale, zero, x, 4, 300, 128, use_compile=True), ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("G", [None, 32, 128])
def test_cuda_matches_reference(bits: int, G: int | None) -> None:
    packed, scale, zero, x, _, ref = make_case(bits, 37, 300, G, (4,))
    y = packed_matmul(packed.cuda(), scale.cuda(), zero.cuda(), x.cuda(), bits, 300, G)
    assert y.is_cuda
    assert_close(y, ref)
