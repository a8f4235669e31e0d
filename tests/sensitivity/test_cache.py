"""The sensitivity cache: hits skip the estimator, broken entries are recomputed with a warning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import tiny_data, tiny_net

from mpsearch.core.config import QuantizerConfig
from mpsearch.sensitivity import Calibration, FisherDiagonal, SensitivityCache, cached_estimate
from mpsearch.sensitivity.cache import CacheWarning
from mpsearch.space.discover import discover


class Counting(FisherDiagonal):
    """Fisher that counts its estimate calls."""

    calls = 0

    def estimate(self, model, data, space):
        type(self).calls += 1
        return super().estimate(model, data, space)


@pytest.fixture()
def setup():
    Counting.calls = 0
    model, (x, y) = tiny_net(), tiny_data()
    space = discover(model, pin_first_last=None, quantizer=QuantizerConfig(group_size=8))
    return model, Calibration.classification(x, y, batch_size=12), space


def same(a, b):
    assert a.method == b.method and dict(a.scores) == dict(b.scores) and dict(a.settings) == dict(b.settings)
    assert a.group_scores.keys() == b.group_scores.keys()
    for name in a.group_scores:
        np.testing.assert_array_equal(a.group_scores[name], b.group_scores[name])


def test_hit_returns_equal_result_without_recomputing(tmp_path, setup):
    model, calib, space = setup
    cache = SensitivityCache(tmp_path)
    first = cache.get_or_compute(Counting(progress=False), model, calib, space)
    second = cache.get_or_compute(Counting(progress=False), model, calib, space)
    assert Counting.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    same(first, second)
    same(first, cached_estimate(Counting(progress=False), model, calib, space, cache_dir=tmp_path))
    assert Counting.calls == 1


def test_key_changes_with_model_data_and_settings(tmp_path, setup):
    model, calib, space = setup
    cache = SensitivityCache(tmp_path)
    key = cache.key(Counting(), model, calib, space)
    assert key == cache.key(Counting(progress=False), model, calib, space)  # progress is not a setting
    assert key != cache.key(Counting(micro_batch=2), model, calib, space)
    x, y = tiny_data()
    assert key != cache.key(Counting(), model, Calibration.classification(x + 1e-3, y, batch_size=12), space)
    with torch.no_grad():
        next(model.parameters())[0].flatten()[0] += 1e-6
    assert key != cache.key(Counting(), model, calib, space)


@pytest.mark.parametrize("damage", ["truncate_json", "truncate_npz", "garbage_json", "foreign_json"])
def test_broken_entry_is_detected_and_recomputed(tmp_path, setup, damage):
    model, calib, space = setup
    cache = SensitivityCache(tmp_path)
    first = cache.get_or_compute(Counting(progress=False), model, calib, space)
    json_path, npz_path = cache.paths(cache.key(Counting(), model, calib, space))
    if damage == "truncate_json":
        json_path.write_bytes(json_path.read_bytes()[: json_path.stat().st_size // 2])
    elif damage == "truncate_npz":
        npz_path.write_bytes(npz_path.read_bytes()[:100])
    elif damage == "garbage_json":
        json_path.write_bytes(b"\x00\xff not json")
    else:
        json_path.write_text('{"format": "other", "version": 9}')
    with pytest.warns(CacheWarning, match="Recomputing"):
        again = cache.get_or_compute(Counting(progress=False), model, calib, space)
    assert Counting.calls == 2
    same(first, again)
    third = cache.get_or_compute(Counting(progress=False), model, calib, space)  # repaired
    assert Counting.calls == 2
    same(first, third)
