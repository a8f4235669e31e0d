"""pack / unpack: the identity for every width, the documented bit layout, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsearch.core.errors import BitsOutOfRangeError, DataError
from mpsearch.kernels import packing
from mpsearch.kernels.packing import pack, packed_row_bytes, unpack


def _bitstream_reference(codes: np.ndarray, bits: int) -> np.ndarray:
    """The layout written out independently: code bits LSB first, rows padded to whole bytes."""
    rows, K = codes.shape
    stream = ((codes[..., None].astype(np.uint16) >> np.arange(bits)) & 1).reshape(rows, K * bits)
    stream = np.pad(stream, ((0, 0), (0, (-K * bits) % 8))).astype(np.uint8)
    return np.packbits(stream, axis=1, bitorder="little")


@settings(max_examples=120, deadline=None)
@given(bits=st.integers(1, 8), rows=st.integers(0, 5), K=st.integers(0, 300),
       seed=st.integers(0, 2**32 - 1))
def test_pack_then_unpack_is_identity_and_matches_the_bitstream(bits: int, rows: int, K: int,
                                                                seed: int) -> None:
    codes = np.random.default_rng(seed).integers(0, 1 << bits, (rows, K), dtype=np.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == np.uint8 and packed.shape == (rows, packed_row_bytes(K, bits))
    np.testing.assert_array_equal(packed, _bitstream_reference(codes, bits))
    np.testing.assert_array_equal(unpack(packed, bits, K), codes)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("K", [1, 7, 8, 9, 127, 128, 129, 1000])
def test_extreme_codes_round_trip(bits: int, K: int) -> None:
    top = (1 << bits) - 1
    codes = np.stack([np.zeros(K), np.full(K, top), np.arange(K) % (top + 1)]).astype(np.uint8)
    np.testing.assert_array_equal(unpack(pack(codes, bits), bits, K), codes)


@pytest.mark.parametrize("bits, codes, expected", [
    (1, [1, 0, 1, 1, 0, 0, 0, 1], [0b10001101]),
    (2, [1, 2, 3, 0], [0b00111001]),
    (3, [1, 2, 3, 4, 5, 6, 7, 0], [0b11010001, 0b01011000, 0b00011111]),
    (4, [1, 2, 3, 4], [0x21, 0x43]),
    (5, [31, 1, 16], [0b00111111, 0b01000000]),  # 15 bits: the last bit of byte 1 is 0
    (8, [200, 7], [200, 7]),
])
def test_layout_by_hand(bits: int, codes: list[int], expected: list[int]) -> None:
    """Bytes worked out by hand from the docstring's diagram (little-endian bit stream)."""
    packed = pack(np.array([codes], dtype=np.uint8), bits)
    assert packed.tolist() == [expected]
    assert unpack(packed, bits, len(codes)).tolist() == [codes]


def test_tensors_stay_tensors() -> None:
    codes = torch.randint(0, 8, (3, 50), dtype=torch.uint8)
    packed = pack(codes, 3)
    assert isinstance(packed, torch.Tensor) and packed.shape == (3, 19)
    assert torch.equal(unpack(packed, 3, 50), codes)
    assert torch.equal(packed, torch.from_numpy(pack(codes.numpy(), 3)))


@pytest.mark.parametrize("bits", [4, 5])
def test_row_tiles(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packing, "_TILE_CODES", 1000)  # 3 rows of 301 codes per tile
    codes = torch.randint(0, 1 << bits, (50, 301), dtype=torch.uint8)
    assert torch.equal(unpack(pack(codes, bits), bits, 301), codes)


@pytest.mark.parametrize("bits", [0, 9, -1, 16, True, 2.0, "4", None])
def test_bad_bits(bits: object) -> None:
    with pytest.raises(BitsOutOfRangeError, match="`bits` must be an integer within 1..8"):
        pack(np.zeros((1, 8), np.uint8), bits)  # type: ignore[arg-type]
    with pytest.raises(BitsOutOfRangeError, match="within 1..8"):
        unpack(np.zeros((1, 8), np.uint8), bits, 8)  # type: ignore[arg-type]


def test_codes_out_of_range() -> None:
    with pytest.raises(DataError, match=r"`codes` must lie in \[0, 7\] for bits=3.*largest code is 8"):
        pack(np.array([[1, 8]], np.uint8), 3)


@pytest.mark.parametrize("codes", [
    np.zeros((2, 4), np.int32), np.zeros((2, 4), np.float32), torch.zeros(2, 4, dtype=torch.int64),
    np.zeros(4, np.uint8), np.zeros((1, 2, 4), np.uint8),
])
def test_codes_wrong_dtype_or_rank(codes: object) -> None:
    with pytest.raises(DataError, match="`codes` must be a 2-D uint8 array"):
        pack(codes, 4)  # type: ignore[arg-type]


def test_not_an_array() -> None:
    with pytest.raises(DataError, match="must be a torch.Tensor or a numpy array"):
        pack([[1, 2]], 4)  # type: ignore[arg-type]


def test_unpack_row_size_mismatch() -> None:
    with pytest.raises(DataError, match="K=10 codes at bits=3 packs to 4 bytes.*has 5 bytes"):
        unpack(np.zeros((2, 5), np.uint8), 3, 10)


@pytest.mark.parametrize("K", [-1, 2.5, None, True])
def test_unpack_bad_K(K: object) -> None:
    with pytest.raises(DataError, match="`K` .* must be an integer >= 0"):
        unpack(np.zeros((2, 5), np.uint8), 3, K)  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bits", range(1, 9))
def test_cuda_matches_cpu(bits: int) -> None:
    codes = torch.randint(0, 1 << bits, (7, 301), dtype=torch.uint8)
    packed = pack(codes.cuda(), bits)
    assert packed.is_cuda and torch.equal(packed.cpu(), pack(codes, bits))
    assert torch.equal(unpack(packed, bits, 301).cpu(), codes)
