"""The one calibration / held-out split of the CIFAR-10 test images (load_cifar10_split, split_cifar10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mpsearch.core.errors import DataError
from mpsearch.zoo.data import load_cifar10, load_cifar10_split, split_cifar10, to_tensor


def small_set(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def test_embedded_split_is_the_first_images_then_the_rest():
    images, labels = load_cifar10()
    data = load_cifar10_split(n_calib=256)
    assert (data.n_images, data.source, len(data.x_calib), len(data.x_eval)) == (1000, "embedded", 256, 744)
    assert torch.equal(data.x_calib, to_tensor(images[:256]))
    assert torch.equal(data.y_calib, torch.from_numpy(labels[:256]))
    assert torch.equal(torch.cat([data.x_calib, data.x_eval]), to_tensor(images))
    assert torch.equal(torch.cat([data.y_calib, data.y_eval]), torch.from_numpy(labels))


def test_eval_limit_keeps_the_first_held_out_images():
    images, labels = small_set(20)
    data = split_cifar10(images, labels, 5, eval_limit=4)
    assert torch.equal(data.x_eval, to_tensor(images[5:9])) and torch.equal(data.y_eval, torch.from_numpy(labels[5:9]))
    assert len(split_cifar10(images, labels, 5, eval_limit=100).x_eval) == 15


def test_min_eval_zero_lets_calibration_take_every_image():
    images, labels = small_set(6)
    data = split_cifar10(images, labels, 6, min_eval=0)
    assert len(data.x_calib) == 6 and len(data.x_eval) == 0 and data.y_eval.dtype == torch.int64
    with pytest.raises(DataError, match=r"n_calib must be within 1\.\.5: .* holds 6 images, and 1 must be left.*n_calib=6"):
        split_cifar10(images, labels, 6)


def test_errors_name_the_callers_term_the_count_and_a_fix(tmp_path: Path):
    images, labels = small_set(7)
    np.savez(tmp_path / "cifar10_test.npz", images=images, labels=labels)
    with pytest.raises(DataError, match=r"calibration must be within 1\.\.6: .*cifar10_test\.npz holds 7 images.*"
                                        r"calibration=9\. Pass calibration=6"):
        load_cifar10_split(tmp_path, 9, what="calibration")
    data = load_cifar10_split(tmp_path, 3)
    assert data.source == str(tmp_path) and torch.equal(data.x_eval, to_tensor(images[3:]))
    for bad in (0, True, 2.0):
        with pytest.raises(DataError, match="n_calib must be within"):
            split_cifar10(images, labels, bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"eval_limit": 0}, "`eval_limit` must be an int of at least 1, but got eval_limit=0"),
    ({"min_eval": -1}, "`min_eval` must be an int of at least 0"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(DataError, match=match):
        split_cifar10(*small_set(4), 2, **kwargs)


def test_too_few_images_and_mismatched_arrays():
    images, labels = small_set(1)
    with pytest.raises(DataError, match="needs at least 2 images.*holds 1"):
        split_cifar10(images, labels, 1)
    images, labels = small_set(5)
    with pytest.raises(DataError, match="same length.*5 images and 4 labels"):
        split_cifar10(images, labels[:4], 2)
