"""Tests for the generic registry (mpsearch/core/registry.py) and the solver registry built on it."""

from __future__ import annotations

import pytest

from mpsearch.core.errors import MPSearchError, UnknownNameError
from mpsearch.core.registry import Registry
from mpsearch.solvers import SOLVERS, ILPSolver


def make() -> Registry:
    reg: Registry = Registry("estimator")

    @reg.register("hutchinson")
    class Hutchinson: ...

    @reg.register("fisher")
    def fisher() -> str:
        return "fisher"

    return reg


def test_register_and_get() -> None:
    reg = make()
    assert reg.get("fisher")() == "fisher"
    assert reg.get("hutchinson").__name__ == "Hutchinson"
    assert reg.names() == ("fisher", "hutchinson")
    assert list(reg) == ["fisher", "hutchinson"]
    assert "fisher" in reg and "nope" not in reg


def test_register_returns_the_factory_unchanged() -> None:
    reg: Registry = Registry("thing")

    class Thing: ...

    assert reg.register("thing")(Thing) is Thing


def test_duplicate_registration_raises_and_keeps_the_first() -> None:
    reg = make()
    first = reg.get("fisher")
    with pytest.raises(MPSearchError, match=r"estimator names must be unique, but 'fisher' is already registered to .*Choose another name"):

        @reg.register("fisher")
        def other() -> str:
            return "other"

    assert reg.get("fisher") is first


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UnknownNameError, match=r"estimator must be one of \['fisher', 'hutchinson'\], but got 'hessian'") as info:
        make().get("hessian")
    # str() is the message itself, not KeyError's quoted repr
    assert str(info.value).startswith("estimator must be one of ['fisher', 'hutchinson']")
    assert isinstance(info.value, KeyError)


def test_unknown_name_in_empty_registry() -> None:
    with pytest.raises(UnknownNameError, match=r"solver must be one of \[\], but got 'x'"):
        Registry("solver").get("x")


def test_solver_registry_holds_ilp() -> None:
    assert SOLVERS.get("ilp") is ILPSolver
    assert "ilp" in SOLVERS.names()
    with pytest.raises(MPSearchError, match=r"solver names must be unique, but 'ilp' is already registered"):
        SOLVERS.register("ilp")(object)
    assert SOLVERS.get("ilp") is ILPSolver
