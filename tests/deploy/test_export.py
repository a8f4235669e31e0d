"""export() then load(): equal buffers and outputs; corrupt or mismatched files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mpsearch.core.config import RECOMMENDED
from mpsearch.core.errors import (
    DataError,
    PlanFormatError,
    PlanMismatchError,
    UnknownNameError,
)
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.apply import apply
from mpsearch.deploy.export import MODEL_FILE, PLAN_FILE, export, load
from mpsearch.zoo import load_cifar10, load_pretrained, to_tensor


def resnet_plan(model: nn.Module) -> BitPlan:
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    bits = {n: (2, 3, 4, 8, 16)[i % 5] for i, n in enumerate(names)}
    return BitPlan(bits=bits, quantizer=RECOMMENDED)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return load_pretrained("resnet20").eval()


@pytest.fixture(scope="module")
def exported(resnet: nn.Module, tmp_path_factory: pytest.TempPathFactory):
    plan = resnet_plan(resnet)
    model_q = apply(resnet, plan, "reference")
    folder = export(model_q, plan, tmp_path_factory.mktemp("export") / "resnet20")
    return model_q, plan, folder


def small_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def test_round_trip_gives_equal_buffers_and_outputs(resnet: nn.Module, exported) -> None:
    model_q, plan, folder = exported
    assert sorted(p.name for p in Path(folder).iterdir()) == [MODEL_FILE, PLAN_FILE]
    assert BitPlan.load(Path(folder) / PLAN_FILE) == plan
    skeleton = load_pretrained("resnet20")  # any weights: all are replaced
    with torch.no_grad():
        for p in skeleton.parameters():
            p.zero_()
    images = to_tensor(load_cifar10(limit=16)[0])
    with torch.no_grad():
        want = model_q(images)
        for backend in ("reference", "torch", "numba"):
            loaded = load(folder, skeleton, backend=backend)
            got, ref_state = loaded.state_dict(), model_q.state_dict()
            assert got.keys() == ref_state.keys()
            assert all(torch.equal(got[k], ref_state[k]) and got[k].dtype == ref_state[k].dtype
                       for k in got)
            y = loaded.eval()(images)
            if backend == "reference":
                assert torch.equal(y, want)
            assert float((y - want).abs().max()) <= 1e-4 * float(want.abs().max())


def test_file_holds_packed_codes(exported) -> None:
    from safetensors import safe_open

    _, plan, folder = exported
    float_unit = next(n for n, b in plan.bits.items() if b == 16)
    with safe_open(str(Path(folder) / MODEL_FILE), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("conv1.packed").dtype == torch.uint8
        assert json.loads(f.metadata()["units"])["conv1"]["bits"] == 2
    assert "conv1.weight" not in keys and "layer1.0.conv2.weight" not in keys
    assert f"{float_unit}.weight" in keys  # a 16-bit unit stays float


def test_activation_ranges_survive_the_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = small_net()
    plan = BitPlan(bits={"0": 4, "2": 3}).with_activations({"2": 4}, {"2": (0.0, 1.0)})
    x = torch.randn(4, 8)
    model_q = apply(net, plan)
    loaded = load(export(model_q, plan, tmp_path / "q"), small_net())
    with torch.no_grad():
        assert torch.equal(loaded(x), model_q(x))


def test_corrupt_or_missing_files_are_refused(exported, tmp_path: Path) -> None:
    torch.manual_seed(0)
    plan = BitPlan(bits={"0": 4, "2": 3})
    folder = export(apply(small_net(), plan), plan, tmp_path / "q")
    data = (folder / MODEL_FILE).read_bytes()
    for bad in (data[:-10], data[:5], b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"):
        (folder / MODEL_FILE).write_bytes(bad)
        with pytest.raises(DataError, match="readable safetensors"):
            load(folder, small_net())
    (folder / MODEL_FILE).unlink()
    with pytest.raises(DataError, match="must contain model.safetensors"):
        load(folder, small_net())
    (folder / PLAN_FILE).write_text("{")
    with pytest.raises(PlanFormatError):
        load(folder, small_net())


def test_foreign_safetensors_file_is_refused(tmp_path: Path) -> None:
    import safetensors.torch

    plan = BitPlan(bits={"0": 4, "2": 3})
    folder = export(apply(small_net(), plan), plan, tmp_path / "q")
    safetensors.torch.save_file(small_net().state_dict(), str(folder / MODEL_FILE))
    with pytest.raises(DataError, match="mpsearch.packed_model"):
        load(folder, small_net())


def test_tensors_of_the_wrong_dtype_are_refused(tmp_path: Path) -> None:
    import safetensors.torch
    from safetensors import safe_open

    plan = BitPlan(bits={"0": 4, "2": 3})
    folder = export(apply(small_net(), plan), plan, tmp_path / "q")
    with safe_open(str(folder / MODEL_FILE), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["0.scale"] = tensors["0.scale"].float()
    safetensors.torch.save_file(tensors, str(folder / MODEL_FILE), metadata=meta)
    with pytest.raises(PlanMismatchError, match=r"wrong shape or dtype=\['0.scale'\]"):
        load(folder, small_net())


def test_mismatched_plan_or_skeleton_is_refused(exported, tmp_path: Path) -> None:
    _, _, folder = exported
    with pytest.raises(PlanMismatchError, match="missing="):
        load(folder, small_net())  # the plan is for ResNet-20
    plan = BitPlan(bits={"0": 4, "2": 3})
    folder = export(apply(small_net(), plan), plan, tmp_path / "q")
    wider = nn.Sequential(nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3))
    with pytest.raises(PlanMismatchError, match="packed units"):
        load(folder, wider)
    BitPlan(bits={"0": 4, "2": 4}).save(folder / PLAN_FILE)  # a plan that is not the file's
    with pytest.raises(PlanMismatchError, match="packed units"):
        load(folder, small_net())
    with pytest.raises(UnknownNameError, match="backend"):
        load(folder, small_net(), backend="gpu")


def test_export_refuses_a_plan_the_model_was_not_packed_with(tmp_path: Path) -> None:
    model_q = apply(small_net(), BitPlan(bits={"0": 4, "2": 3}))
    for plan in (BitPlan(bits={"0": 4, "2": 4}), BitPlan(bits={"0": 4, "2": 16}),
                 BitPlan(bits={"0": 4, "2": 3}, quantizer=RECOMMENDED)):
        with pytest.raises(PlanMismatchError, match="plan's units"):
            export(model_q, plan, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
