"""Tests for the reference quantizer (mpsearch/kernels/quantize.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsearch.core.errors import BitsOutOfRangeError, DataError, MPSearchError, PlanFormatError
from mpsearch.kernels.quantize import (
    QuantizerConfig,
    Scheme,
    dequantize,
    fake_quantize,
    fake_quantize_groups,
    matrix_to_weight,
    num_groups,
    overhead_bits,
    quant_error,
    quant_errors,
    quantize,
    weight_matrix,
)

SCHEMES = ("symmetric", "affine")


def bits_for(scheme: str) -> range:
    return range(2, 9) if scheme == "symmetric" else range(1, 9)


def gaussian(out: int, fan_in: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, fan_in, generator=torch.Generator().manual_seed(seed))


def group_errors(w: torch.Tensor, q: torch.Tensor, g: int) -> torch.Tensor:
    """(out, n_groups) float64 sum of squared errors, computed independently of the module."""
    sq = (q.double() - w.double()).square()
    return torch.stack([c.sum(dim=1) for c in sq.split(g, dim=1)], dim=1)


# --- the config ------------------------------------------------------------------------------

def test_config_round_trips_through_json() -> None:
    cfg = QuantizerConfig(scheme="affine", group_size=64, clip_search=True, clip_grid=7,
                          scale_dtype="bfloat16")
    assert cfg.scheme is Scheme.AFFINE
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["scheme"] == "affine"
    assert QuantizerConfig.from_dict(data) == cfg
    assert QuantizerConfig.from_dict(QuantizerConfig().to_dict()) == QuantizerConfig()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"group_size": 0}, "group_size"),
        ({"group_size": -4}, "group_size"),
        ({"group_size": 2.5}, "group_size"),
        ({"scheme": "asymmetric"}, "scheme"),
        ({"scale_dtype": "float64"}, "scale_dtype"),
        ({"clip_grid": 0}, "clip_grid"),
        ({"clip_search": "yes"}, "clip_search"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(MPSearchError, match=match) as info:
        QuantizerConfig(**kwargs)
    assert isinstance(info.value, ValueError)


def test_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(PlanFormatError, match="keys among.*groupsize"):
        QuantizerConfig.from_dict({"groupsize": 8})
    with pytest.raises(PlanFormatError, match="mapping"):
        QuantizerConfig.from_dict([("group_size", 8)])  # type: ignore[arg-type]


# --- layout ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("shape", "kind", "mat_shape"),
    [((6, 5), "linear", (6, 5)), ((4, 3, 2, 2), "conv2d", (4, 12)), ((5, 6), "conv1d", (6, 5))],
)
def test_weight_matrix_round_trip(shape: tuple, kind: str, mat_shape: tuple) -> None:
    w = torch.randn(shape)
    mat = weight_matrix(w, kind)
    assert tuple(mat.shape) == mat_shape
    assert torch.equal(matrix_to_weight(mat, w.shape, kind), w)


def test_conv1d_matrix_rows_are_output_features() -> None:
    w = torch.arange(6.0).reshape(2, 3)  # Conv1D: (in=2, out=3)
    assert weight_matrix(w, "conv1d").tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]


def test_layout_errors() -> None:
    with pytest.raises(DataError, match="kind"):
        weight_matrix(torch.zeros(2, 2), "conv3d")
    with pytest.raises(DataError, match="4-D"):
        weight_matrix(torch.zeros(2, 2), "conv2d")
    with pytest.raises(DataError, match="must have shape"):
        matrix_to_weight(torch.zeros(3, 3), (3, 2), "linear")


# --- hand-computed examples ------------------------------------------------------------------

def test_two_bit_symmetric_by_hand() -> None:
    # qmax = 1, qmin = -2, scale = 1 / 1 = 1; q = round([-1, 0, .5, 1]) = [-1, 0, 0, 1]
    # (0.5 rounds half to even); codes = q + 2.
    qw = quantize(torch.tensor([[-1.0, 0.0, 0.5, 1.0]]), 2)
    assert qw.codes.tolist() == [[1, 2, 2, 3]]
    assert qw.zero.tolist() == [[2]]
    assert qw.scale.dtype == torch.float16 and qw.scale.tolist() == [[1.0]]
    assert dequantize(qw).tolist() == [[-1.0, 0.0, 0.0, 1.0]]
    assert quant_error(torch.tensor([[-1.0, 0.0, 0.5, 1.0]]), 2) == pytest.approx(0.25)


def test_three_bit_symmetric_by_hand() -> None:
    # qmax = 3, scale = 1.5 / 3 = 0.5; w / s = [-1.5, 0, 0.6, 3] -> q = [-2, 0, 1, 3]
    w = torch.tensor([[-0.75, 0.0, 0.3, 1.5]])
    qw = quantize(w, 3)
    assert qw.codes.tolist() == [[2, 4, 5, 7]]
    assert dequantize(qw).tolist() == [[-1.0, 0.0, 0.5, 1.5]]
    assert quant_error(w, 3) == pytest.approx(0.25**2 + 0.2**2)


def test_two_bit_affine_by_hand() -> None:
    # lo = -1, hi = 2, scale = 3 / 3 = 1, zero = 1; codes = round(w) + 1 = [0, 1, 1, 3]
    qw = quantize(torch.tensor([[-1.0, 0.0, 0.5, 2.0]]), 2, QuantizerConfig(scheme="affine"))
    assert qw.codes.tolist() == [[0, 1, 1, 3]]
    assert qw.zero.tolist() == [[1]]
    assert dequantize(qw).tolist() == [[-1.0, 0.0, 0.0, 2.0]]


def test_affine_range_always_holds_zero() -> None:
    # all positive row: lo is taken as 0, so scale = 4 / 3 and zero = 0
    qw = quantize(torch.tensor([[1.0, 2.0, 4.0]]), 2, QuantizerConfig(scheme="affine"))
    assert qw.zero.tolist() == [[0]]
    assert qw.scale.float().item() == pytest.approx(4 / 3, rel=1e-3)


# --- properties on every width and scheme ----------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("group_size", [None, 16, 24])
def test_codes_in_range_and_dequantize_equals_fake_quantize(scheme: str, group_size) -> None:
    w = gaussian(8, 50) * 3
    w[2] = 0.0  # an all-zero row must not divide by zero
    cfg = QuantizerConfig(scheme=scheme, group_size=group_size)
    for bits in bits_for(scheme):
        qw = quantize(w, bits, cfg)
        n = num_groups(50, cfg)
        assert qw.codes.dtype == torch.uint8 and qw.codes.shape == (8, 50)
        assert qw.scale.shape == qw.zero.shape == (8, n)
        assert int(qw.codes.max()) <= 2**bits - 1
        assert int(qw.zero.max()) <= 2**bits - 1
        assert torch.isfinite(qw.scale.float()).all() and (qw.scale.float() > 0).all()
        if scheme == "symmetric":
            assert (qw.zero == 2 ** (bits - 1)).all()
        deq = dequantize(qw)
        assert torch.equal(deq, fake_quantize(w, bits, cfg))
        assert (deq[2] == 0).all() and (qw.codes[2] == qw.zero[2, 0]).all()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16", "float32"])
def test_zero_is_exact(scheme: str, scale_dtype: str) -> None:
    w = gaussian(6, 40, seed=1)
    w[:, ::3] = 0.0
    cfg = QuantizerConfig(scheme=scheme, group_size=16, scale_dtype=scale_dtype)
    for bits in bits_for(scheme):
        assert (fake_quantize(w, bits, cfg)[:, ::3] == 0).all()


@pytest.mark.parametrize("bits", range(2, 9))
def test_symmetric_represents_max_magnitude(bits: int) -> None:
    w = gaussian(16, 64, seed=2)
    q = fake_quantize(w, bits)
    idx = w.abs().argmax(dim=1, keepdim=True)
    amax, qmax = w.gather(1, idx), q.gather(1, idx)
    torch.testing.assert_close(qmax, amax, rtol=2**-10, atol=0)  # fp16 scale rounding only


@pytest.mark.parametrize("scheme", SCHEMES)
def test_error_decreases_with_bits(scheme: str) -> None:
    w = gaussian(32, 256, seed=3)
    for cfg in (QuantizerConfig(scheme=scheme), QuantizerConfig(scheme=scheme, group_size=32)):
        errs = quant_errors(w, list(bits_for(scheme)), cfg)
        assert errs.dtype == np.float64
        assert np.all(np.diff(errs) < 0), errs
    assert quant_errors(w, [16], QuantizerConfig(scheme=scheme)).tolist() == [0.0]


def test_quant_error_is_the_sum_of_squares() -> None:
    w = gaussian(5, 33, seed=4)
    expected = float(((fake_quantize(w, 3).double() - w.double()) ** 2).sum())
    assert quant_error(w, 3) == pytest.approx(expected, rel=1e-12)
    assert quant_errors(w, [3, 5]).tolist() == [quant_error(w, 3), quant_error(w, 5)]


@settings(max_examples=60, deadline=None)
@given(
    scheme=st.sampled_from(SCHEMES),
    bits=st.integers(1, 8),
    scale_exp=st.integers(-6, 3),
    seed=st.integers(0, 2**16),
    group_size=st.sampled_from([None, 3, 8]),
)
def test_grid_values_are_reproduced_exactly(scheme, bits, scale_exp, seed, group_size) -> None:
    if scheme == "symmetric" and bits == 1:
        bits = 2
    rng = np.random.default_rng(seed)
    out, fan_in = 4, 8
    g = fan_in if group_size is None else group_size
    scale = 2.0**scale_exp * (1 + rng.integers(0, 8, size=(out, 1)) / 8)  # exact in fp16
    if scheme == "symmetric":
        qmax = 2 ** (bits - 1) - 1
        q = rng.integers(-qmax, qmax + 1, size=(out, fan_in))
        for start in range(0, fan_in, g):  # every group reaches +-qmax, so scale = amax / qmax
            q[:, start] = qmax * rng.choice([-1, 1], size=out)
    else:
        top = 2**bits - 1
        lo = -rng.integers(0, top + 1, size=(out, 1))  # the grid spans [lo, lo + top], holds 0
        q = lo + rng.integers(0, top + 1, size=(out, fan_in))
        for start in range(0, fan_in, g):
            width = min(g, fan_in - start)
            if width >= 2:
                q[:, start], q[:, start + 1] = lo[:, 0], lo[:, 0] + top
            else:
                q[:, start] = 0
    w = torch.tensor(q * scale, dtype=torch.float32)
    cfg = QuantizerConfig(scheme=scheme, group_size=group_size)
    assert torch.equal(fake_quantize(w, bits, cfg), w)


@settings(max_examples=40, deadline=None)
@given(
    scheme=st.sampled_from(SCHEMES),
    bits=st.integers(1, 8),
    shape=st.tuples(st.integers(1, 6), st.integers(1, 40)),
    group_size=st.sampled_from([None, 1, 5, 16]),
    magnitude=st.sampled_from([1e-6, 1e-2, 1.0, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_random_weights_round_trip(scheme, bits, shape, group_size, magnitude, seed) -> None:
    if scheme == "symmetric" and bits == 1:
        bits = 2
    w = gaussian(*shape, seed=seed) * magnitude
    cfg = QuantizerConfig(scheme=scheme, group_size=group_size, clip_search=bool(seed % 2))
    qw = quantize(w, bits, cfg)
    assert int(qw.codes.max()) <= 2**bits - 1
    deq = dequantize(qw)
    assert torch.isfinite(deq).all()
    assert torch.equal(deq, fake_quantize(w, bits, cfg))
    if not cfg.clip_search:  # unclipped: half a step, plus half a step of zero-point rounding
        g = shape[1] if group_size is None else group_size
        step = qw.scale.float().repeat_interleave(g, dim=1)[:, : shape[1]]
        bound = step / 2 if scheme == "symmetric" else step
        assert ((deq - w).abs() <= bound * (1 + 1e-6)).all()


# --- groups and clipping ---------------------------------------------------------------------

def test_partial_last_group_matches_separate_quantization() -> None:
    w = gaussian(4, 70, seed=5)
    cfg = QuantizerConfig(scheme="affine", group_size=32)  # groups 32, 32, 6
    qw = quantize(w, 3, cfg)
    assert qw.scale.shape == (4, 3)
    whole = QuantizerConfig(scheme="affine")
    for start in (0, 32, 64):
        part = w[:, start:start + 32]
        assert torch.equal(dequantize(qw)[:, start:start + 32], fake_quantize(part, 3, whole))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("group_size", [None, 16])
def test_clip_search_never_worse_per_group(scheme: str, group_size) -> None:
    w = gaussian(16, 64, seed=6)
    w[0, 0] = 12.0  # an outlier makes clipping worthwhile
    plain = QuantizerConfig(scheme=scheme, group_size=group_size)
    clipped = QuantizerConfig(scheme=scheme, group_size=group_size, clip_search=True)
    g = 64 if group_size is None else group_size
    for bits in (2, 3, 4):
        e_plain = group_errors(w, fake_quantize(w, bits, plain), g)
        e_clip = group_errors(w, fake_quantize(w, bits, clipped), g)
        assert (e_clip <= e_plain * (1 + 1e-12)).all()
        assert e_clip.sum() < e_plain.sum()


def test_clip_search_with_one_candidate_is_plain() -> None:
    w = gaussian(8, 32, seed=7)
    cfg = QuantizerConfig(clip_search=True, clip_grid=1)
    assert torch.equal(fake_quantize(w, 3, cfg), fake_quantize(w, 3))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("clip", [False, True])
def test_per_group_widths_match_individual_quantization(scheme: str, clip: bool) -> None:
    w = gaussian(5, 45, seed=8)
    cfg = QuantizerConfig(scheme=scheme, group_size=16, clip_search=clip)  # 16, 16, 13
    choices = [2, 3, 4, 8, 16] if scheme == "symmetric" else [1, 2, 4, 8, 16]
    gen = torch.Generator().manual_seed(0)
    bits = torch.tensor(choices)[torch.randint(len(choices), (5, 3), generator=gen)]
    got = fake_quantize_groups(w, bits, cfg)
    assert got.shape == w.shape and got.dtype == w.dtype
    for r in range(5):
        for k in range(3):
            part = w[r:r + 1, 16 * k:16 * (k + 1)]
            expected = fake_quantize(part, int(bits[r, k]), cfg)
            assert torch.equal(got[r:r + 1, 16 * k:16 * (k + 1)], expected)


def test_per_group_widths_errors() -> None:
    w = gaussian(2, 10)
    with pytest.raises(MPSearchError, match="group_size"):
        fake_quantize_groups(w, torch.tensor([[4], [4]]), QuantizerConfig())
    cfg = QuantizerConfig(group_size=4)
    with pytest.raises(DataError, match=r"shape \(2, 3\)"):
        fake_quantize_groups(w, torch.tensor([[4, 4], [4, 4]]), cfg)
    with pytest.raises(BitsOutOfRangeError, match="within 1..8"):
        fake_quantize_groups(w, torch.tensor([[4, 4, 9], [4, 4, 4]]), cfg)


# --- overhead --------------------------------------------------------------------------------

def test_overhead_bits_by_hand() -> None:
    # per channel, fp16 scales: 64 rows x 1 group x 16 bits
    assert overhead_bits(64, 300, 4, QuantizerConfig()) == 64 * 16
    # groups of 128 over 300 inputs -> 3 groups; affine adds an 8-bit zero-point per group
    assert overhead_bits(64, 300, 4, QuantizerConfig(scheme="affine", group_size=128)) == 4608
    assert overhead_bits(10, 256, 2, QuantizerConfig(group_size=128,
                                                     scale_dtype="float32")) == 10 * 2 * 32
    assert overhead_bits(10, 256, 2, QuantizerConfig(scale_dtype="bfloat16")) == 10 * 16
    assert overhead_bits(10, 256, 16) == 0


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [0, 9, -1, 16, 2.0, True])
def test_bits_out_of_range(bits) -> None:
    with pytest.raises(BitsOutOfRangeError, match=r"within 1\.\.8.*Pass a bit width"):
        quantize(gaussian(2, 4), bits)


@pytest.mark.parametrize("bits", [0, 9])
def test_bits_out_of_range_everywhere(bits: int) -> None:
    with pytest.raises(BitsOutOfRangeError, match="within 1..8 or 16"):
        fake_quantize(gaussian(2, 4), bits)
    with pytest.raises(BitsOutOfRangeError):
        quant_errors(gaussian(2, 4), [4, bits])
    with pytest.raises(BitsOutOfRangeError):
        overhead_bits(2, 4, bits)


def test_one_bit_symmetric_points_to_affine() -> None:
    with pytest.raises(BitsOutOfRangeError, match="scheme='affine'"):
        quantize(gaussian(2, 4), 1)
    qw = quantize(torch.tensor([[-1.0, 0.0, 0.2, 0.9]]), 1, QuantizerConfig(scheme="affine"))
    # lo = -1, hi = 0.9: scale = 1.9, zero = round(1 / 1.9) = 1, so the grid is {-1.9, 0}
    assert qw.zero.tolist() == [[1]] and qw.codes.tolist() == [[0, 1, 1, 1]]
    assert dequantize(qw).tolist() == [[-qw.scale.float().item(), 0.0, 0.0, 0.0]]


def test_bad_weights_are_rejected() -> None:
    with pytest.raises(DataError, match="2-D floating"):
        quantize(torch.zeros(2, 3, 4), 4)
    with pytest.raises(DataError, match="2-D floating"):
        quantize(torch.zeros(2, 3, dtype=torch.int64), 4)
    with pytest.raises(DataError, match="finite"):
        quantize(torch.tensor([[1.0, math.nan]]), 4)
    with pytest.raises(DataError, match="scale_dtype='float32'"):
        quantize(torch.tensor([[1e6, -1e6]]), 2)
    big = quantize(torch.tensor([[1e6, -1e6]]), 2, QuantizerConfig(scale_dtype="float32"))
    assert dequantize(big).tolist() == [[1e6, -1e6]]


def test_tiny_weights_do_not_underflow_the_scale() -> None:
    w = torch.tensor([[1e-9, -3e-9, 0.0, 2e-9]])
    for scheme in SCHEMES:
        qw = quantize(w, 4, QuantizerConfig(scheme=scheme))
        assert (qw.scale.float() > 0).all()
        assert torch.isfinite(dequantize(qw)).all()


def test_fake_quantize_keeps_dtype() -> None:
    w = gaussian(4, 16).to(torch.bfloat16)
    q = fake_quantize(w, 4)
    assert q.dtype == torch.bfloat16 and q.shape == w.shape
    assert torch.equal(fake_quantize(w, 16), w)
