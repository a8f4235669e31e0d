"""GGUF types as data: sizes agree with ggml's, widths map to types without losing precision, the menus."""

from __future__ import annotations

import pytest

from mpsearch.core.errors import PlanMismatchError
from mpsearch.core.gguf_types import GGUF_TYPES, WIDTH_TYPE, type_for, type_menu


def test_bits_per_weight_are_ggml_type_sizes():
    gguf = pytest.importorskip("gguf")
    for name, kind in GGUF_TYPES.items():
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]
        assert (kind.block, kind.bpw) == (block, size * 8 / block), name


@pytest.mark.parametrize("rows", [1536, 576, 96])
def test_fallbacks_never_lower_precision(rows):
    for width in range(2, 9):
        kind = GGUF_TYPES[type_for(width, rows)]
        assert rows % kind.block == 0
        assert kind.bpw >= GGUF_TYPES[WIDTH_TYPE[width]].bpw
        assert kind.name == WIDTH_TYPE[width] or kind.block < 256


def test_rows_no_block_divides_stay_in_f16():
    assert {type_for(w, 40) for w in range(2, 9)} == {"f16"}
    assert type_menu(40) == {}


def test_menus_list_each_type_once_under_its_widest_width():
    assert type_menu(1536) == {2: "q2_K", 3: "q3_K", 4: "q4_K", 5: "q5_K", 6: "q6_K", 8: "q8_0"}
    assert type_menu(576) == {4: "iq4_nl", 5: "q5_0", 8: "q8_0"}
    for rows in (1536, 576):
        for width, kind in type_menu(rows).items():
            assert type_for(width, rows) == kind  # a plan's width maps back to the priced type


def test_unknown_width_is_refused():
    with pytest.raises(PlanMismatchError, match="widths"):
        type_for(9, 576)
