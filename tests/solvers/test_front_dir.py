"""A Pareto front on disk (mpsearch/solvers/front_dir.py): one front per folder, replaced only as a whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mpsearch.core.costs import CostTable
from mpsearch.core.errors import OutputError
from mpsearch.core.plan import BitPlan
from mpsearch.solvers.front_dir import MANIFEST, check_front_dir
from mpsearch.solvers.pareto import pareto


@pytest.fixture(scope="module")
def table() -> CostTable:
    n = np.array([1000, 2000, 4000])
    bits = (2, 4, 8)
    return CostTable(items=("a", "b", "c"), bits=bits, cost=np.array([[0.9, 0.2, 0.01], [0.5, 0.1, 0.005], [2.0, 0.3, 0.02]]),
                     storage_bits=np.array([[b * w + 128 for b in bits] for w in n], float), n_weights=n)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_save_writes_the_front_and_a_manifest_of_exactly_its_files(table, tmp_path) -> None:
    front = pareto(table, [2.5, 3, 4])
    written = front.save(tmp_path / "front")
    files = tree(tmp_path / "front")
    listed = json.loads(files.pop(MANIFEST))["files"]
    assert sorted(files) == listed == sorted(str(p.relative_to(tmp_path / "front")) for p in written)
    plans = [name for name in listed if name.startswith("plans/")]
    assert len(plans) == len(front.front) == len(files["pareto.csv"].decode().strip().splitlines()) - 1
    for name, result in zip(sorted(plans), front.front):
        assert BitPlan.load(tmp_path / "front" / name).bits == result.plan.bits


def test_second_front_is_refused_and_changes_nothing(table, tmp_path) -> None:
    pareto(table, [2.5, 3]).save(tmp_path)
    before = tree(tmp_path)
    with pytest.raises(OutputError, match=r"must not hold an earlier front, but .* holds one \(\d+ files listed in pareto-manifest.json\)"):
        pareto(table, [3, 4]).save(tmp_path)
    assert tree(tmp_path) == before


def test_overwrite_removes_stale_plans_and_keeps_other_files(table, tmp_path) -> None:
    pareto(table, [2.1, 2.5, 3, 4, 6]).save(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "plans" / "favourite.json").write_text("{}")  # not named like a front's plan: left alone
    old_plans = set((tmp_path / "plans").glob("plan_*.json"))
    front = pareto(table, [3])
    front.save(tmp_path, overwrite=True)
    new_plans = set((tmp_path / "plans").glob("plan_*.json"))
    assert len(new_plans) == len(front.front) == 1 and len(old_plans) > 1
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "plans" / "favourite.json").exists()
    assert json.loads((tmp_path / MANIFEST).read_text())["files"] == sorted(
        ["pareto.csv", "pareto.png", *(f"plans/{p.name}" for p in new_plans)])


def test_front_files_without_a_manifest_are_never_removed(table, tmp_path) -> None:
    (tmp_path / "pareto.csv").write_text("someone else's")
    with pytest.raises(OutputError, match="earlier front.*pareto.csv"):
        check_front_dir(tmp_path)
    with pytest.raises(OutputError, match=r"also holds \['pareto.csv'\] that no pareto-manifest.json lists"):
        pareto(table, [3]).save(tmp_path, overwrite=True)
    assert tree(tmp_path) == {"pareto.csv": b"someone else's"}


@pytest.mark.parametrize("listed", ["../outside.txt", "/etc/hostname", "", MANIFEST])
def test_a_manifest_naming_files_outside_its_folder_is_refused(table, tmp_path, listed) -> None:
    (tmp_path / "outside.txt").write_text("keep")
    folder = tmp_path / "front"
    folder.mkdir()
    (folder / MANIFEST).write_text(json.dumps({"format": "mpsearch.pareto-front", "version": 1, "files": [listed]}))
    with pytest.raises(OutputError, match="must list files inside its folder"):
        pareto(table, [3]).save(folder, overwrite=True)
    assert (tmp_path / "outside.txt").read_text() == "keep"


def test_full_disk_leaves_a_new_folder_absent_and_an_old_front_whole(table, tmp_path, monkeypatch) -> None:
    pareto(table, [2.5, 3]).save(tmp_path / "old")
    before = tree(tmp_path / "old")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputError, match=r"No space left on device \[ENOSPC\]"):
        pareto(table, [3, 4]).save(tmp_path / "new" / "front")
    with pytest.raises(OutputError, match="No space left"):
        pareto(table, [3, 4]).save(tmp_path / "old", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert tree(tmp_path / "old") == before
