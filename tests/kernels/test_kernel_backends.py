"""The backend registry: built-in backends and their ops, the reference fallback for ops a
backend lacks, unknown names, and backends registered by the user, run by the packed layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import (
    ConfigError,
    DataError,
    MPSearchError,
    PlanMismatchError,
    UnknownNameError,
)
from mpsearch.core.plan import BitPlan
from mpsearch.core.registry import Registry
from mpsearch.deploy.apply import apply, set_backend
from mpsearch.deploy.modules import QuantConv2d, QuantLinear
from mpsearch.kernels import backends
from mpsearch.kernels.backends import (
    Backend,
    get_backend,
    reference_dequantize,
    reference_gemm,
    reference_gemv,
    register_backend,
)
from mpsearch.kernels.packing import pack
from mpsearch.kernels.quantize import QuantizedWeight, dequantize
from mpsearch.kernels.torch_packed import dequantize_packed, packed_matmul

AFFINE_G16 = QuantizerConfig(scheme="affine", group_size=16)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A registry of the built-in backends only, in place of the global one for one test."""
    fresh: Registry = Registry("backend")
    for name in backends.BACKENDS.names():
        fresh.register(name)(backends.BACKENDS.get(name))
    monkeypatch.setattr(backends, "BACKENDS", fresh)
    return fresh


def weight(bits: int = 3, out: int = 6, K: int = 40, G: int | None = 16, seed: int = 0):
    """Packed arrays and the float64 weight they stand for."""
    gen = torch.Generator().manual_seed(seed)
    ng = 1 if G is None else -(-K // G)
    codes = torch.randint(0, 1 << bits, (out, K), dtype=torch.uint8, generator=gen)
    scale = (torch.rand(out, ng, generator=gen) + 0.5).to(torch.float16)
    zero = torch.randint(0, 1 << bits, (out, ng), dtype=torch.uint8, generator=gen)
    group_of = torch.arange(K) // (K if G is None else G)
    w = (codes.double() - zero[:, group_of].double()) * scale.double()[:, group_of]
    return (pack(codes, bits), scale, zero), codes, w


def counting(name: str, calls: list[str], **ops: bool) -> Backend:
    """A backend whose declared ops are the torch backend's, each recording its calls."""
    def record(op: str, fn):
        def run(*args):
            calls.append(op)
            return fn(*args)
        return run

    impl = {"gemv": packed_matmul, "gemm": packed_matmul, "dequantize": dequantize_packed}
    return Backend(name, **{op: record(op, impl[op]) for op, on in ops.items() if on})


def test_builtin_backends_declare_their_ops() -> None:
    assert backends.BACKENDS.names() == ("numba", "reference", "torch")
    declared = {name: get_backend(name).ops for name in backends.BACKENDS.names()}
    assert declared == {"reference": ("dequantize",), "numba": ("gemv", "gemm"),
                        "torch": ("gemv", "gemm", "dequantize")}
    assert not get_backend("reference").multiplies
    assert get_backend("numba").multiplies and get_backend("numba").devices == ("cpu",)


@pytest.mark.parametrize("name", ["cuda", "", "Reference", 3])
def test_unknown_name_lists_the_known_ones(name: object) -> None:
    with pytest.raises(UnknownNameError, match=r"\['numba', 'reference', 'torch'\].*register"):
        get_backend(name)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        get_backend(name)  # type: ignore[arg-type]


def test_unknown_op_name() -> None:
    with pytest.raises(UnknownNameError, match="'gemv', 'gemm', 'dequantize'"):
        get_backend("torch").op("matmul")


def test_reference_ops_are_the_quantizers_formula() -> None:
    (packed, scale, zero), codes, w = weight()
    want = dequantize(QuantizedWeight(codes, scale, zero, 3, AFFINE_G16))
    assert torch.equal(reference_dequantize(packed, scale, zero, 3, 40, 16), want)
    assert torch.equal(dequantize_packed(packed, scale, zero, 3, 40, 16), want)
    x = torch.randn(5, 40)
    torch.testing.assert_close(reference_gemm(packed, scale, zero, x, 3, 40, 16).double(),
                               x.double() @ w.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reference_gemv(packed, scale, zero, x[0], 3, 40, 16).double(),
                               w @ x[0].double(), rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="last dimension is K=40"):
        reference_gemm(packed, scale, zero, torch.randn(5, 39), 3, 40, 16)


def test_ops_a_backend_lacks_run_on_the_reference() -> None:
    assert get_backend("numba").op("dequantize") is reference_dequantize
    bare = Backend("bare")
    assert bare.ops == () and not bare.multiplies
    assert [bare.op(op) for op in backends.OPS] == [reference_gemv, reference_gemm,
                                                    reference_dequantize]
    assert Backend("gemv-only", gemv=packed_matmul).op("gemm") is reference_gemm


def test_batch_1_without_gemv_runs_the_backends_own_gemm() -> None:
    calls: list[str] = []
    mine = counting("gemm-only", calls, gemm=True)
    (packed, scale, zero), _, w = weight()
    x = torch.randn(40)
    y = mine.op("gemv")(packed, scale, zero, x, 3, 40, 16)
    assert calls == ["gemm"] and y.shape == (6,)
    torch.testing.assert_close(y.double(), w @ x.double(), rtol=1e-5, atol=1e-5)


def test_backend_definitions_are_checked() -> None:
    with pytest.raises(ConfigError, match="non-empty string"):
        Backend("")
    with pytest.raises(ConfigError, match="`gemm` must be callable"):
        Backend("x", gemm="packed_matmul")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="`devices` must be None or device types"):
        Backend("x", devices=())
    with pytest.raises(ConfigError, match="takes a Backend"):
        register_backend("mine")  # type: ignore[arg-type]


def test_a_backend_refuses_inputs_on_devices_it_does_not_run_on() -> None:
    (packed, scale, zero), _, _ = weight()
    gpu = Backend("gpu-only", gemm=packed_matmul, devices=("cuda",))
    with pytest.raises(DataError, match="'gpu-only' backend runs on cuda only, but the input is "
                                        "on cpu"):
        gpu.matmul(packed, scale, zero, torch.randn(2, 40), 3, 40, 16)


def test_user_backend_runs_in_layers_and_apply(registry: Registry) -> None:
    calls: list[str] = []
    register_backend(counting("counting", calls, gemv=True, gemm=True))
    assert "counting" in registry
    with pytest.raises(MPSearchError, match="already registered"):
        register_backend(Backend("counting"))
    torch.manual_seed(0)
    layer = nn.Linear(40, 6)
    q = QuantLinear.from_float(layer, 3, AFFINE_G16, backend="counting")
    ref = QuantLinear.from_float(layer, 3, AFFINE_G16, backend="reference")
    with torch.no_grad():
        for batch, op in ((4, "gemm"), (1, "gemv")):
            calls.clear()
            x = torch.randn(batch, 40)
            torch.testing.assert_close(q(x), ref(x), rtol=1e-5, atol=1e-5)
            assert calls == [op]
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2))
    plan = BitPlan(bits={"0": 4, "2": 4})
    with pytest.raises(PlanMismatchError, match="'counting' backend needs Conv2d.*groups=2"):
        apply(net, plan, "counting")
    first_only = BitPlan(bits={"0": 4, "2": 16})  # the grouped conv stays float
    packed, ref_net = apply(net, first_only, "counting"), apply(net, first_only, "reference")
    calls.clear()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), ref_net(x), rtol=1e-5, atol=1e-5)
    assert calls == []  # convolutions decode their weight and run torch's own conv, no packed product


def test_user_backend_without_a_product_runs_the_float_op(registry: Registry) -> None:
    """Dequantize only: layers run the float op on its weight, so grouped convolutions work,
    and with the reference formula the outputs equal the reference backend's bit for bit."""
    calls: list[str] = []
    register_backend(counting("dequant-only", calls, dequantize=True))
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(64, 3))
    plan = BitPlan(bits={"0": 4, "2": 3}, quantizer=AFFINE_G16)
    mine, ref = apply(net, plan, "dequant-only"), apply(net, plan, "reference")
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        assert torch.equal(mine(x), ref(x))
    assert sorted(calls) == ["dequantize", "dequantize"]
    assert isinstance(mine[0], QuantConv2d)
    with pytest.raises(PlanMismatchError, match="groups=2"):
        set_backend(mine, "torch")
