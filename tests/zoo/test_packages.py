"""packaged_file: a data file inside an installed package, found without importing the package."""

from __future__ import annotations

import sys

import pytest

from mpsearch.core.errors import DataError, MissingDependencyError
from mpsearch.zoo._packages import packaged_file

OPTIONS = {"needed_by": "The test", "install": "Install it with `pip install fake`.", "reinstall": "pip install -U fake"}


def test_finds_the_file_without_importing(tmp_path, monkeypatch):
    package = tmp_path / "mps_fake_data_pkg"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing this package is not allowed')\n")
    (package / "model" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert packaged_file("mps_fake_data_pkg", "model/config.json", **OPTIONS) == package / "model" / "config.json"
    assert "mps_fake_data_pkg" not in sys.modules
    with pytest.raises(DataError, match=r"must contain weights\.bin, but .*missing\. Reinstall it: `pip install -U fake`"):
        packaged_file("mps_fake_data_pkg", "weights.bin", **OPTIONS)


def test_missing_package_names_the_install_command():
    with pytest.raises(MissingDependencyError, match=r"The test needs the package 'mps_absent_pkg_123'.*pip install fake"):
        packaged_file("mps_absent_pkg_123", "x", **OPTIONS)
