"""CIFAR-10 loading: the embedded subset, the full set, validation, normalisation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mpsearch.core.errors import DataError
from mpsearch.zoo.data import (
    DATA_DIR_ENV,
    IMAGENET_MEAN,
    IMAGENET_STD,
    default_data_dir,
    load_cifar10,
    to_tensor,
)

# From the data folder's README.md: sha256 of images.tobytes() and labels.tobytes().
FULL_IMAGES_SHA = "f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04"
FULL_LABELS_SHA = "cbb7365de8ed11f05cc4c3a1e7f78144127c5e851efd83762fb18202461230bb"


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "cifar10_test.npz", images=images, labels=labels)
    return path


def test_embedded_subset() -> None:
    images, labels = load_cifar10()
    assert images.shape == (1000, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (1000,) and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(10))


def test_limit() -> None:
    images, labels = load_cifar10(limit=7)
    assert images.shape == (7, 32, 32, 3) and labels.shape == (7,)
    with pytest.raises(DataError, match="limit=-1"):
        load_cifar10(limit=-1)


def test_embedded_equals_first_1000_of_full_set(shared_data_dir: Path) -> None:
    full_images, full_labels = load_cifar10(shared_data_dir)
    images, labels = load_cifar10()
    assert images.tobytes() == full_images[:1000].tobytes()
    assert labels.tobytes() == full_labels[:1000].tobytes()


def test_full_set_matches_published_hashes(shared_data_dir: Path) -> None:
    images, labels = load_cifar10(shared_data_dir)
    assert images.shape == (10000, 32, 32, 3)
    assert np.bincount(labels).tolist() == [1000] * 10
    assert hashlib.sha256(images.tobytes()).hexdigest() == FULL_IMAGES_SHA
    assert hashlib.sha256(labels.tobytes()).hexdigest() == FULL_LABELS_SHA


def test_wrong_image_shape(tmp_path: Path) -> None:
    folder = write_npz(tmp_path, np.zeros((5, 3, 32, 32), np.uint8), np.zeros(5, np.int64))
    with pytest.raises(DataError, match=r"cifar10_test\.npz.*\(N, 32, 32, 3\).*\(5, 3, 32, 32\)"):
        load_cifar10(folder)


def test_wrong_label_dtype(tmp_path: Path) -> None:
    folder = write_npz(tmp_path, np.zeros((5, 32, 32, 3), np.uint8), np.zeros(5, np.float32))
    with pytest.raises(DataError, match="`labels`.*int64.*float32.*Regenerate"):
        load_cifar10(folder)


def test_label_count_mismatch(tmp_path: Path) -> None:
    folder = write_npz(tmp_path, np.zeros((5, 32, 32, 3), np.uint8), np.zeros(4, np.int64))
    with pytest.raises(DataError, match=r"shape \(5,\).*shape=\(4,\)"):
        load_cifar10(folder)


def test_label_out_of_range(tmp_path: Path) -> None:
    labels = np.array([0, 1, 10], np.int64)
    folder = write_npz(tmp_path, np.zeros((3, 32, 32, 3), np.uint8), labels)
    with pytest.raises(DataError, match="0..9.*max=10"):
        load_cifar10(folder)


def test_missing_array(tmp_path: Path) -> None:
    np.savez(tmp_path / "cifar10_test.npz", images=np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"lacks \['labels'\]"):
        load_cifar10(tmp_path)


def test_pickled_content_refused(tmp_path: Path) -> None:
    objects = np.array([object(), object()], dtype=object)
    np.savez(tmp_path / "cifar10_test.npz", images=objects, labels=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="without pickled objects"):
        load_cifar10(tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found.*--data-dir.*cifar10_test\.npz"):
        load_cifar10(tmp_path)


def test_to_tensor_layout_and_normalisation() -> None:
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[1, 4, 5] = (255, 0, 128)
    x = to_tensor(images)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 0, 0], -mean / std)
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - mean) / std
    torch.testing.assert_close(x[1, :, 4, 5], expected)


def test_to_tensor_rejects_non_uint8() -> None:
    with pytest.raises(DataError, match="uint8.*float32"):
        to_tensor(np.zeros((1, 32, 32, 3), np.float32))


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert default_data_dir() is None
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path
