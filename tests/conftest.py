"""Shared fixtures: the real data beside the checkout, and small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_path() -> Path:
    env = os.environ.get("MPSEARCH_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def shared_data_dir() -> Path:
    """The real CIFAR-10 test set and checkpoints; skips where absent.

    The folder is ``MPSEARCH_DATA_DIR``, else ``shared/data`` beside the checkout.
    """
    path = shared_data_path()
    if not (path / "cifar10_test.npz").is_file():
        pytest.skip(f"real data not found at {path}; set MPSEARCH_DATA_DIR")
    return path


@pytest.fixture(autouse=True)
def _torch_threads(request):
    """Two torch threads per test, or n with ``@pytest.mark.torch_threads(n)`` (module-wide via pytestmark)."""
    marker = request.node.get_closest_marker("torch_threads")
    torch.set_num_threads(marker.args[0] if marker else 2)
    yield
