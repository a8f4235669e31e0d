"""The lookup-table model: exact at measured points, monotone between them, JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.errors import DataError
from mpsearch.hardware_models.lut import LUTLatencyModel
from mpsearch.workflows.hw_calibrate import write_table

SHAPES = [(16, 144), (64, 576), (384, 1536)]
BATCHES = [1, 16, 256]


def _table() -> LUTLatencyModel:
    rng = np.random.default_rng(0)
    base = np.array([[0.01, 0.03, 0.3], [0.02, 0.2, 6.0], [0.03, 1.2, 25.0]])
    ms = np.stack([base * (1 + 0.05 * j) * (1 + 0.01 * rng.random(base.shape)) for j in range(3)])
    return LUTLatencyModel(bits=(2, 4, 8), shapes=SHAPES, batches=BATCHES, ms=ms, machine={"test": True})


def test_exact_at_measured_points():
    lut = _table()
    for j, b in enumerate(lut.bits):
        for i, (out, K) in enumerate(SHAPES):
            for k, batch in enumerate(BATCHES):
                assert float(lut.predict_ms(out, K, b, batch)) == lut.ms[j, i, k]


def test_monotone_between_and_beyond_measured_points():
    lut = _table()
    nw = np.geomspace(100, 1e7, 60)
    for batch in (1, 5, 100, 4000):
        for b in (2, 3, 5, 8):
            pred = lut.predict_ms(nw, 1, b, batch)
            assert np.all(np.diff(pred) >= -1e-12)
    pred_b = lut.predict_ms(300, 300, 4, np.geomspace(1, 1e4, 40))
    assert np.all(np.diff(pred_b) >= -1e-12)
    assert float(lut.predict_ms(384, 1536, 4, 512)) <= 2 * float(lut.predict_ms(384, 1536, 4, 256)) + 1e-9


def test_noisy_table_is_made_monotone():
    ms = np.array([[[1.0, 2.0], [0.5, 3.0]]])  # the larger shape measured faster at batch 1
    lut = LUTLatencyModel(bits=(4,), shapes=[(10, 10), (100, 100)], batches=[1, 10], ms=ms)
    assert float(lut.predict_ms(100, 100, 4, 1)) == 1.0


def test_json_round_trip(tmp_path):
    lut = _table()
    path = write_table(lut, tmp_path / "lut.json")
    back = LUTLatencyModel.from_json(path)
    assert back.bits == lut.bits and np.array_equal(back.ms, lut.ms) and back.machine == {"test": True}


def test_bad_tables_raise(tmp_path):
    with pytest.raises(DataError, match="strictly increasing"):
        LUTLatencyModel(bits=(4,), shapes=[(100, 100), (10, 10)], batches=[1], ms=[[[1.0], [2.0]]])
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="format"):
        LUTLatencyModel.from_json(tmp_path / "x.json")


def test_im2col_glue_is_added_to_conv_units_only():
    from mpsearch.hardware_models.shapes import LayerShapes

    base = _table()
    lut = LUTLatencyModel(bits=base.bits, shapes=base.shapes, batches=base.batches, ms=base.ms,
                          im2col={"elements": [1000.0, 100000.0], "ms": [0.1, 10.0]})
    shapes = LayerShapes(names=("c", "l"), out_features=[16, 16], fan_in=[144, 144], macs=[1, 1], rows=[64, 64],
                         kinds=("conv2d", "linear"))
    plain = base.model_latency_ms(shapes, {"c": 4, "l": 4})
    # 64 * (144 + 16) = 10240 elements: log-log between (1e3, 0.1) and (1e5, 10) is linear, 1.024 ms
    assert lut.model_latency_ms(shapes, {"c": 4, "l": 4}) == pytest.approx(plain + 1.024)
    assert np.array_equal(lut.glue_ms(shapes) > 0, [True, False])


def test_hardware_models_never_import_torch():
    import subprocess
    import sys

    code = ("import sys, mpsearch.hardware_models as h; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; print(len(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"
