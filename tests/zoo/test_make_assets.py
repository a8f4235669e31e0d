"""The embedded assets are reproducible byte for byte from the published originals."""

from __future__ import annotations

from pathlib import Path

from mpsearch.zoo.make_assets import ASSETS_DIR, main


def test_regenerated_assets_are_identical(tmp_path: Path, shared_data_dir: Path) -> None:
    assert main(["--data-dir", str(shared_data_dir), "--out-dir", str(tmp_path)]) == 0
    for name in ("resnet20_cifar10.pt", "cifar10_test_first1000.npz", "README.md"):
        assert (tmp_path / name).read_bytes() == (ASSETS_DIR / name).read_bytes(), name
