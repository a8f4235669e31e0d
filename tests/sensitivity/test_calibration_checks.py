"""Calibration data of the wrong shape, dtype, length or content ends in a DataError naming the rule,
the value and the fix, before any estimator does real work (mpsearch/sensitivity/_data_checks.py)."""

from __future__ import annotations

import time

import pytest
import torch

from mpsearch.core.errors import DataError
from mpsearch.sensitivity import ESTIMATORS, Calibration
from mpsearch.testing.estimators import (
    contract_data,
    contract_net,
    contract_space,
    registry_factory,
)

GEN = torch.Generator().manual_seed(0)
X = torch.randn(16, 3, 6, 6, generator=GEN)  # the contract net: 3 channels in, 4 classes out
Y = torch.randint(0, 4, (16,), generator=GEN)


@pytest.mark.parametrize(("inputs", "labels", "message"), [
    (X.to(torch.uint8), Y, r"inputs must be a floating-point tensor, but got Tensor of torch\.uint8\. Convert images"),
    (X.numpy(), Y, r"inputs must be a floating-point tensor, but got ndarray"),
    (X[:, 0, 0, 0], Y, r"must have a sample dimension and at least one more, but got shape \(16,\)"),
    (X, Y[:10], r"equally long and non-empty, but got 16 inputs and 10 labels\. Pass one label per sample"),
    (X[:0], Y[:0], r"equally long and non-empty, but got 0 inputs and 0 labels"),
    (X, Y.int(), r"labels must be a 1-D int64 tensor of class indices, but got \(16,\) int32\. Convert them"),
    (X, Y.float(), r"but got \(16,\) float32"),
    (X, Y[:, None], r"but got \(16, 1\) int64"),
    (X, Y.tolist(), r"but got list"),
    (X, Y - 5, r"labels must be class indices >= 0, but got -5\. Map the labels"),
    (torch.where(torch.arange(16)[:, None, None, None] == 5, float("nan"), X), Y,
     r"inputs must be finite, but 108 values are NaN or infinite \(first in sample 5\)\. Drop or repair"),
    (X * float("inf"), Y, r"NaN or infinite \(first in sample 0\)"),
])
def test_classification_rejects_bad_tensors(inputs, labels, message) -> None:
    with pytest.raises(DataError, match=message):
        Calibration.classification(inputs, labels)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8"])
def test_batch_size_must_be_a_positive_integer(batch_size) -> None:
    with pytest.raises(DataError, match=r"`batch_size` must be an integer of at least 1, but got"):
        Calibration.classification(X, Y, batch_size=batch_size)
    with pytest.raises(DataError, match=r"`batch_size` must be an integer of at least 1"):
        Calibration.from_inputs(X, batch_size=batch_size)


def test_unlabeled_inputs_are_checked_too() -> None:
    with pytest.raises(DataError, match=r"NaN or infinite"):
        Calibration.from_inputs(X * float("nan"))
    with pytest.raises(DataError, match=r"non-empty floating-point tensor"):
        Calibration.from_inputs(X[:0])
    with pytest.raises(DataError, match=r"at least one batch"):
        Calibration(batches=(), sizes=())


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Calibration.classification(X[:, :1], Y), (r"fails on the first samples \(inputs \(16, 1, 6, 6\) float32\): "
     r".*to have 3 channels, but got 1 channels instead\. Pass float images shaped \(N, C, H, W\)")),
    (lambda: Calibration.classification(X.permute(0, 2, 3, 1).contiguous(), Y), r"inputs \(16, 6, 6, 3\) float32"),
    (lambda: Calibration.classification(X[:, 0], Y), (r"first convolution is a Conv2d must be 4-D \(N, C, H, W\), "
     r"but got shape \(16, 6, 6\)")),
    (lambda: Calibration.from_inputs(X[:, 0]), r"must be 4-D \(N, C, H, W\), but got shape \(16, 6, 6\)"),
    (lambda: Calibration.classification(X, Y * 0 + 4), (r"labels must be below the model's 4 outputs, but the largest "
     r"is 4\. Pass labels of this model's task \(0\.\.3\)")),
])
@pytest.mark.parametrize("name", ["hessian", "hessian_diag", "hessian_eig", "zeroq", "fisher", "obs", "lrp"])
def test_every_estimator_checks_the_data_against_the_model_first(name, make, message) -> None:
    if name not in ESTIMATORS.names():
        pytest.skip(f"no {name!r} estimator")
    model = contract_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start = time.perf_counter()
    with pytest.raises(DataError, match=message):
        registry_factory(name)().estimate(model, make(), contract_space(model))
    assert time.perf_counter() - start < 5  # one forward pass on two samples, not the estimate
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_labels_out_of_range_in_a_later_batch_are_found() -> None:
    y = Y.clone()
    y[-1] = 9
    model = contract_net()
    with pytest.raises(DataError, match=r"below the model's 4 outputs, but the largest is 9"):
        registry_factory("hessian")().estimate(model, Calibration.classification(X, y, batch_size=4), contract_space(model))


def test_a_non_finite_loss_is_reported() -> None:
    model = contract_net()
    with torch.no_grad():
        model[-1].weight[0, 0] = float("nan")
    with pytest.raises(DataError, match=r"calibration loss must be a finite number, but is nan .* NaN or overflow"):
        registry_factory("hessian")().estimate(model, contract_data(), contract_space(model))


def test_every_registered_estimator_is_wrapped_once() -> None:
    for name in ESTIMATORS.names():
        estimate = ESTIMATORS.get(name).estimate
        assert getattr(estimate, "__mpsearch_checked__", False), name
        assert not getattr(estimate.__wrapped__, "__mpsearch_checked__", False), name


def test_a_users_estimator_is_checked_and_good_data_passes() -> None:
    from mpsearch.sensitivity import Estimator, Sensitivity

    calls: list[int] = []

    class Mine(Estimator):
        name = "mine"

        def estimate(self, model, data, space):
            calls.append(1)
            return Sensitivity(method="mine", scores={n: 1.0 for n in space.names})

    model = contract_net()
    with pytest.raises(DataError, match=r"3 channels"):
        Mine().estimate(model, Calibration.classification(X[:, :2], Y), contract_space(model))
    assert calls == []
    with pytest.raises(DataError, match=r"`data` must be a Calibration, but got tuple"):
        Mine().estimate(model, (X, Y), contract_space(model))
    assert Mine().estimate(model, contract_data(), contract_space(model)).scores and calls == [1]
