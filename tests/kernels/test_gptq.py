"""Tests for GPTQ on one weight matrix (mpsearch/kernels/gptq.py) and its quantizer settings."""

from __future__ import annotations

import json

import pytest
import torch

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import BitsOutOfRangeError, ConfigError, DataError, PlanFormatError
from mpsearch.core.plan import BitPlan
from mpsearch.kernels.gptq import HessianAccumulator, gptq_quantize, output_error
from mpsearch.kernels.packing import pack, unpack
from mpsearch.kernels.quantize import _choose_params, dequantize, quantize

CONFIGS = {
    "channel-sym": QuantizerConfig(),
    "channel-affine-mse": QuantizerConfig(scheme="affine", clip_search=True, clip_grid=8),
    "g32-affine": QuantizerConfig(scheme="affine", group_size=32),
    "g32-sym-actorder": QuantizerConfig(group_size=32, act_order=True),
    "g48-block40": QuantizerConfig(scheme="affine", group_size=48, block_size=40),
}


def layer(seed: int, out: int = 32, K: int = 128, n: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights, inputs (n, K) with correlated features of unequal scale, and their Hessian."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(out, K, generator=gen)
    mix = torch.randn(K, K, generator=gen) / K**0.5 + torch.eye(K)
    X = (torch.randn(n, K, generator=gen) @ mix) * torch.rand(K, generator=gen).add(0.2)
    acc = HessianAccumulator(K)
    acc.add(X)
    return W, X, acc.hessian()


def obs_reference(W: torch.Tensor, H: torch.Tensor, bits: int, cfg: QuantizerConfig) -> torch.Tensor:
    """Textbook sequential OBS in float64, one column at a time with an explicit inverse downdate;
    group parameters from the current weights at each group's first column. Returns the codes."""
    W, K = W.double().clone(), W.shape[1]
    G = cfg.group_size or K
    Hd = H.double() + cfg.damp * H.diagonal().mean() * torch.eye(K, dtype=torch.float64)
    Hinv = torch.linalg.inv(Hd)
    codes = torch.zeros(W.shape, dtype=torch.int64)
    for j in range(K):
        if j % G == 0:
            s, z = _choose_params(W[:, j:j + G].float(), bits, cfg)
            s, z = s.double(), z.double()
        c = (W[:, j] / s).round().add(z).clamp(0, 2**bits - 1)
        codes[:, j] = c.long()
        err = (W[:, j] - (c - z) * s) / Hinv[j, j]
        W[:, j + 1:] -= err[:, None] * Hinv[j, j + 1:][None, :]
        Hinv = Hinv - Hinv[:, j:j + 1] @ Hinv[j:j + 1, :] / Hinv[j, j]
    return codes


# --- GPTQ beats round to nearest, and equals it without correlations ----------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("name", ["channel-sym", "channel-affine-mse", "g32-affine", "g32-sym-actorder"])
def test_output_error_below_round_to_nearest(seed: int, bits: int, name: str) -> None:
    cfg = QuantizerConfig.from_dict(CONFIGS[name].to_dict() | {"method": "gptq"})
    W, _, H = layer(seed)
    result = gptq_quantize(W, H, bits, cfg)
    rtn = output_error(dequantize(quantize(W, bits, cfg)) - W, H)
    assert result.error < 0.9 * rtn


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_identity_hessian_gives_round_to_nearest_codes(name: str, bits: int) -> None:
    cfg = CONFIGS[name]
    W, _, _ = layer(7, K=120)  # the last group of 48 is partial
    got = gptq_quantize(W, torch.eye(120), bits, cfg).qweight
    ref = quantize(W, bits, cfg)
    assert torch.equal(got.codes, ref.codes)
    assert torch.equal(got.scale, ref.scale) and torch.equal(got.zero, ref.zero)


@pytest.mark.parametrize("name", ["channel-sym", "g32-affine", "g48-block40"])
def test_matches_textbook_obs(name: str) -> None:
    cfg = CONFIGS[name]
    W, _, H = layer(3, out=16, K=96)
    got = gptq_quantize(W, H, 3, cfg).qweight.codes.long()
    ref = obs_reference(W, H, 3, cfg)
    assert (got == ref).double().mean() > 0.995  # float32 against float64: rare near-ties differ


def test_block_size_changes_only_rounding() -> None:
    W, _, H = layer(4)
    errors = [gptq_quantize(W, H, 3, QuantizerConfig(group_size=32, block_size=b)).error for b in (1, 7, 32, 128)]
    assert max(errors) - min(errors) < 1e-3 * errors[0]


def test_error_is_the_summed_output_error() -> None:
    W, X, H = layer(5)
    result = gptq_quantize(W, H, 3, QuantizerConfig())
    direct = float(((result.weight - W).double() @ X.double().t()).square().sum()) * 2 / X.shape[0]
    assert result.error == pytest.approx(direct, rel=1e-4)


@pytest.mark.parametrize("view", ["one row", "transposed"])
def test_the_input_matrix_is_left_unchanged(view: str) -> None:
    W, _, H = layer(14)
    w2d = W[:1] if view == "one row" else W.t().contiguous().t()  # both alias contiguous (K, out) memory
    before = w2d.clone()
    result = gptq_quantize(w2d, H, 2)
    assert torch.equal(w2d, before) and not torch.equal(result.weight, before)


def test_hessian_accumulates_over_batches() -> None:
    X = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    acc = HessianAccumulator(6)
    for part in X.split(13):
        acc.add(part)
    torch.testing.assert_close(acc.hessian(), 2 * X.t() @ X / 50)


def test_dead_columns_round_to_nearest() -> None:
    W, X, _ = layer(6)
    X[:, [3, 40]] = 0
    acc = HessianAccumulator(W.shape[1])
    acc.add(X)
    cfg = QuantizerConfig(scheme="affine")
    got = gptq_quantize(W, acc.hessian(), 3, cfg).qweight
    ref = quantize(W, 3, cfg)  # per-channel parameters come from the original weights
    assert torch.equal(got.codes[:, [3, 40]], ref.codes[:, [3, 40]])


# --- storage: the codes are the quantize.py format ----------------------------------------------

@pytest.mark.parametrize("name", list(CONFIGS))
def test_codes_dequantize_to_the_quantized_weight(name: str) -> None:
    W, _, H = layer(8)
    result = gptq_quantize(W, H, 3, CONFIGS[name])
    assert torch.equal(dequantize(result.qweight), result.weight)
    assert result.qweight.scale.dtype == torch.float16 and int(result.qweight.codes.max()) <= 7


def test_act_order_keeps_the_plain_layout() -> None:
    W, _, H = layer(9)
    cfg = QuantizerConfig(scheme="affine", group_size=32, act_order=True)
    result = gptq_quantize(W, H, 3, cfg)
    ref = quantize(W, 3, cfg)  # static groups: parameters of the original W, in natural order
    assert torch.equal(result.qweight.scale, ref.scale) and torch.equal(result.qweight.zero, ref.zero)
    assert torch.equal(dequantize(result.qweight), result.weight)
    assert not torch.equal(result.qweight.codes, ref.codes)


def test_mixed_widths_round_trip_through_packing() -> None:
    W, _, H = layer(10, K=128)
    cfg = QuantizerConfig(scheme="affine", group_size=32)
    gen = torch.Generator().manual_seed(0)
    widths = torch.tensor([2, 3, 4, 8])[torch.randint(0, 4, (32, 4), generator=gen)]
    result = gptq_quantize(W, H, widths, cfg)
    qw = result.qweight
    assert torch.equal(result.group_bits, widths) and qw.bits == 8
    restored = torch.zeros_like(qw.codes)
    for g in range(4):
        for b in widths[:, g].unique().tolist():
            rows = widths[:, g] == b
            block = qw.codes[rows, g * 32:(g + 1) * 32]
            assert int(block.max()) < 2**b
            restored[rows, g * 32:(g + 1) * 32] = unpack(pack(block, b), b, 32)
    assert torch.equal(restored, qw.codes)
    qw.codes = restored
    assert torch.equal(dequantize(qw), result.weight)
    assert result.error < output_error(dequantize(quantize(W, 2, cfg)) - W, H)


def test_one_width_per_group_broadcasts_over_rows() -> None:
    W, _, H = layer(11)
    cfg = QuantizerConfig(group_size=32)
    per_group = gptq_quantize(W, H, torch.tensor([2, 3, 4, 3]), cfg)
    full = gptq_quantize(W, H, torch.tensor([[2, 3, 4, 3]]).expand(32, 4), cfg)
    assert torch.equal(per_group.weight, full.weight)


def test_float_groups_absorb_error_and_have_no_codes() -> None:
    W, _, H = layer(12)
    cfg = QuantizerConfig(group_size=32)
    result = gptq_quantize(W, H, torch.tensor([3, 16, 3, 16]), cfg)
    assert result.qweight is None
    assert not torch.equal(result.weight[:, 32:64], W[:, 32:64])  # updated, kept in float
    assert result.error < gptq_quantize(W, H, 3, cfg).error


# --- bad input -----------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors() -> None:
    W, _, H = layer(13)
    with pytest.raises(DataError, match=r"Hessian must be a finite \(128, 128\)"):
        gptq_quantize(W, H[:10, :10], 3)
    with pytest.raises(DataError, match="finite"):
        gptq_quantize(W.clone().fill_(float("nan")), H, 3)
    with pytest.raises(BitsOutOfRangeError, match="within 1..8"):
        gptq_quantize(W, H, 0)
    with pytest.raises(ConfigError, match="group_size"):
        gptq_quantize(W, H, torch.full((32, 1), 3))
    with pytest.raises(DataError, match="positive definite.*Raise QuantizerConfig.damp"):
        gptq_quantize(W, -torch.eye(128), 3, QuantizerConfig(damp=0.0))
    with pytest.raises(DataError, match="at least one input row"):
        HessianAccumulator(4).hessian()


# --- the quantizer settings in plans -------------------------------------------------------------

def test_gptq_settings_round_trip_through_plan_json() -> None:
    cfg = QuantizerConfig(scheme="affine", group_size=64, method="gptq", damp=0.05, block_size=64,
                          act_order=True)
    plan = BitPlan(bits={"fc": 3}, quantizer=cfg)
    back = BitPlan.from_json(plan.to_json())
    assert back.quantizer == cfg and back.to_json() == plan.to_json()
    assert json.loads(plan.to_json())["quantizer"]["method"] == "gptq"


def test_configs_without_method_load_as_round_to_nearest() -> None:
    old = {"scheme": "affine", "group_size": None, "clip_search": True, "clip_grid": 20, "scale_dtype": "float16"}
    cfg = QuantizerConfig.from_dict(old)
    assert cfg.method == "rtn"
    assert cfg.to_dict() == old  # round-to-nearest configs are written as before
    odd = QuantizerConfig(damp=0.2)  # a non-default GPTQ setting is kept even under RTN
    assert QuantizerConfig.from_dict(odd.to_dict()) == odd


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"method": "awq"}, r"`method` must be one of \['rtn', 'gptq'\], but got method='awq'"),
    ({"damp": -0.1}, "`damp` must be a finite number >= 0"),
    ({"damp": float("nan")}, "`damp` must be a finite number >= 0"),
    ({"block_size": 0}, "`block_size` must be an integer >= 1"),
    ({"act_order": "yes"}, "`act_order` must be a bool"),
])
def test_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        QuantizerConfig(**kwargs)
    with pytest.raises(PlanFormatError, match="quantizer"):
        BitPlan.from_dict({"format": "mpsearch.bitplan", "version": 1, "bits": {"a": 3},
                           "quantizer": QuantizerConfig().to_dict() | kwargs})


@pytest.mark.parametrize("name", list(CONFIGS))
def test_column_errors_split_the_damped_output_error(name: str) -> None:
    cfg = CONFIGS[name]
    W, _, H = layer(3)
    result = gptq_quantize(W, H, 3, cfg, column_errors=True)
    damped = H + cfg.damp * H.diagonal().mean() * torch.eye(H.shape[0])
    assert result.column_errors.shape == W.shape and bool((result.column_errors >= 0).all())
    assert float(result.column_errors.sum()) == pytest.approx(output_error(result.weight - W, damped), rel=1e-4)
    assert gptq_quantize(W, H, 3, cfg).column_errors is None
