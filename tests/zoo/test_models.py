"""Pretrained ResNets: loading, errors, and the published accuracies."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch

from mpsearch.core.errors import DataError, UnknownNameError
from mpsearch.zoo.data import load_cifar10, to_tensor
from mpsearch.zoo.eval import accuracy
from mpsearch.zoo.models import (
    CHECKPOINT_FILES,
    EMBEDDED_RESNET20,
    MODEL_NAMES,
    load_pretrained,
    read_state_dict,
)

# Measured once: the embedded ResNet-20 on the embedded first 1000 test images (915 right).
EMBEDDED_ACCURACY = 91.50


def test_model_names() -> None:
    assert MODEL_NAMES == ("resnet20", "resnet32", "resnet44", "resnet56")
    assert set(CHECKPOINT_FILES) == set(MODEL_NAMES)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UnknownNameError, match="name='resnet99'.*resnet20, resnet32") as info:
        load_pretrained("resnet99")
    assert isinstance(info.value, KeyError)


def test_deep_model_needs_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"resnet56-4bfd9763\.th.*--data-dir"):
        load_pretrained("resnet56")
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        load_pretrained("resnet32", tmp_path)


def test_resnet20_falls_back_to_embedded(tmp_path: Path) -> None:
    model = load_pretrained("resnet20", tmp_path)
    assert not model.training
    assert not any(m.training for m in model.modules())


def test_embedded_asset_is_plain_float32_state_dict() -> None:
    state = torch.load(EMBEDDED_RESNET20, map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    assert all(v.dtype == torch.float32 for v in state.values())


def test_embedded_weights_equal_published_checkpoint(shared_data_dir: Path) -> None:
    published = read_state_dict(shared_data_dir / CHECKPOINT_FILES["resnet20"])
    embedded = read_state_dict(EMBEDDED_RESNET20)
    assert published.keys() == embedded.keys()
    assert all(torch.equal(published[k], embedded[k]) for k in published)


def test_asset_hashes_match_readme() -> None:
    readme = (EMBEDDED_RESNET20.parent / "README.md").read_text(encoding="utf-8")
    for asset in sorted(EMBEDDED_RESNET20.parent.glob("*.[pn][tp]*")):
        digest = hashlib.sha256(asset.read_bytes()).hexdigest()
        assert f"`{asset.name}`" in readme and digest in readme, asset.name


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_FILES["resnet44"]).write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="weights_only=True.*Replace it"):
        load_pretrained("resnet44", tmp_path)


def test_mismatched_checkpoint(tmp_path: Path) -> None:
    state = read_state_dict(EMBEDDED_RESNET20)
    torch.save({"state_dict": state}, tmp_path / CHECKPOINT_FILES["resnet32"])
    with pytest.raises(DataError, match="ResNet-32 layout"):
        load_pretrained("resnet32", tmp_path)


def test_embedded_accuracy() -> None:
    images, labels = load_cifar10()
    acc = accuracy(load_pretrained("resnet20"), to_tensor(images), labels)
    assert round(acc, 2) == EMBEDDED_ACCURACY


def _full_accuracy(name: str, data_dir: Path) -> float:
    images, labels = load_cifar10(data_dir)
    return accuracy(load_pretrained(name, data_dir), to_tensor(images), labels)


def test_resnet20_full_test_set(shared_data_dir: Path) -> None:
    assert _full_accuracy("resnet20", shared_data_dir) == pytest.approx(91.73, abs=0.005)


@pytest.mark.slow
def test_resnet56_full_test_set(shared_data_dir: Path) -> None:
    assert _full_accuracy("resnet56", shared_data_dir) == pytest.approx(93.39, abs=0.005)
