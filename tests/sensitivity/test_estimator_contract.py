"""Every registered estimator passes the shipped contract (mpsearch.testing.estimators)."""

from __future__ import annotations

import pytest

from mpsearch.sensitivity import ESTIMATORS
from mpsearch.testing.estimators import (
    CONTRACT_CHECKS,
    contract_names,
    registry_factory,
)

pytestmark = pytest.mark.torch_threads(1)


def test_every_registered_estimator_is_covered_or_says_why():
    names = contract_names()
    assert {"hessian", "hessian_diag", "hessian_eig", "fisher", "first_order", "gwq", "obs"} <= set(names)
    for name in set(ESTIMATORS.names()) - set(names):
        assert isinstance(ESTIMATORS.get(name).contract_skip, str)


@pytest.mark.parametrize("name", contract_names())
@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda c: c.__name__)
def test_contract(name, check):
    check(registry_factory(name))
