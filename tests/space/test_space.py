"""Tests for search spaces (mpsearch/space/discover.py): discovery, pins, ties, include/exclude, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.core.config import RECOMMENDED, QuantizerConfig
from mpsearch.core.errors import BitsOutOfRangeError, SearchSpaceError
from mpsearch.space.discover import DEFAULT_BITS, QuantUnit, SearchSpace, discover


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 1))
        self.layer2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.ReLU(), nn.Conv2d(16, 16, 1, bias=False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(self.pool(x).flatten(1))


NAMES = ("conv1", "layer1.0", "layer1.2", "layer2.0", "layer2.2", "fc")


def test_discover_names_kinds_and_shapes() -> None:
    net = ConvNet()
    space = discover(net)
    assert space.names == NAMES
    assert [u.kind for u in space.units] == ["conv2d"] * 5 + ["linear"]
    by = {u.name: u for u in space.units}
    assert (by["conv1"].out_features, by["conv1"].fan_in) == (8, 3 * 9)
    assert by["conv1"].weight_shape == (8, 3, 3, 3)
    assert (by["layer1.2"].out_features, by["layer1.2"].fan_in) == (16, 8)
    assert (by["layer2.0"].out_features, by["layer2.0"].fan_in) == (16, 4 * 9)  # grouped conv
    assert (by["fc"].out_features, by["fc"].fan_in) == (10, 16)
    modules = dict(net.named_modules())
    for u in space.units:
        assert u.n_weights == modules[u.name].weight.numel()
    assert space.n_weights == sum(modules[n].weight.numel() for n in NAMES)
    assert len(space) == 6


def test_default_pins_first_and_last_to_8_and_uses_recommended_quantizer() -> None:
    space = discover(ConvNet())
    assert [u.bits for u in space.units] == [(8,), DEFAULT_BITS, DEFAULT_BITS, DEFAULT_BITS, DEFAULT_BITS, (8,)]
    assert [u.pinned for u in space.units] == [True, False, False, False, False, True]
    assert space.quantizer == RECOMMENDED
    assert space.ties == () and space.float_units == ()


def test_pin_first_last_none_searches_every_unit() -> None:
    space = discover(ConvNet(), pin_first_last=None, bits=(4, 2, 4, 3))
    assert all(u.bits == (2, 3, 4) for u in space.units)


def test_pin_first_last_other_width() -> None:
    space = discover(ConvNet(), pin_first_last=6)
    assert space.unit("conv1").bits == (6,) and space.unit("fc").bits == (6,)


def test_pins_by_pattern_and_exact_name() -> None:
    space = discover(ConvNet(), pins={"layer*.0": 4, "layer2.2": 3, "fc": 6})
    bits = {u.name: u.bits for u in space.units}
    assert bits == {
        "conv1": (8,), "layer1.0": (4,), "layer1.2": DEFAULT_BITS, "layer2.0": (4,), "layer2.2": (3,), "fc": (6,),
    }


def test_include_and_exclude_patterns() -> None:
    space = discover(ConvNet(), include=["layer*"], exclude=["*.2"], pin_first_last=None)
    assert space.names == ("layer1.0", "layer2.0")
    assert space.float_units == ("conv1", "layer1.2", "layer2.2", "fc")


def test_first_last_are_taken_among_included_units() -> None:
    space = discover(ConvNet(), exclude=["conv1", "fc"])
    assert [u.name for u in space.units if u.pinned] == ["layer1.0", "layer2.2"]


def test_ties_by_pattern_resolve_to_exact_names() -> None:
    space = discover(ConvNet(), ties=[("layer1.*", "layer2.2"), ("layer2.0", "layer2.0"), ("layer1.0", "layer1.?")])
    # a tie that resolves to a single unit is dropped; duplicates inside a tie are removed
    assert space.ties == (("layer1.0", "layer1.2", "layer2.2"), ("layer1.0", "layer1.2"))


def test_tie_with_pinned_unit_is_kept_when_they_share_a_width() -> None:
    space = discover(ConvNet(), ties=[("conv1", "layer1.0")])
    assert space.ties == (("conv1", "layer1.0"),)


def test_tie_between_pins_without_common_width() -> None:
    with pytest.raises(SearchSpaceError, match=r"tied units must share at least one bit choice, but \['conv1', 'layer1.0'\]"):
        discover(ConvNet(), pins={"layer1.0": 4}, ties=[("conv1", "layer1.0")])


def test_one_bit_with_symmetric_quantizer_is_rejected() -> None:
    with pytest.raises(BitsOutOfRangeError, match=r"symmetric quantization needs at least 2 bits, but got bits=\(1, 2, 4\)"):
        discover(ConvNet(), bits=(1, 2, 4), quantizer=QuantizerConfig())


def test_one_bit_with_affine_quantizer_is_allowed() -> None:
    space = discover(ConvNet(), bits=(1, 2, 4), quantizer=QuantizerConfig(scheme="affine"))
    assert space.unit("layer1.0").bits == (1, 2, 4)
    assert discover(ConvNet(), bits=(1, 2)).unit("layer1.0").bits == (1, 2)  # default quantizer is affine


def test_one_bit_pin_with_symmetric_quantizer_is_rejected() -> None:
    with pytest.raises(BitsOutOfRangeError, match=r"symmetric quantization needs at least 2 bits, but got pin_first_last=\(1,\)"):
        discover(ConvNet(), pin_first_last=1, quantizer=QuantizerConfig())


@pytest.mark.parametrize("bits", [(0, 4), (2, 9), (), (2.0, 4), (True, 4), ("4",), (4, 17)])
def test_bad_bits(bits: tuple) -> None:
    rule = r"`bits` must be integers within 1\.\.8, or 16 \(kept in floating point\), but got bits="
    with pytest.raises(BitsOutOfRangeError, match=rule):
        discover(ConvNet(), bits=bits)
    with pytest.raises(BitsOutOfRangeError, match=r"`bits` must include a width below 16 to quantize anything, but got bits=\(16,\)"):
        discover(ConvNet(), bits=(16,))


def test_bad_bits_message_quotes_value() -> None:
    with pytest.raises(BitsOutOfRangeError, match=r"but got bits=\(0, 4\)\. Pass bit choices such as \(2, 3, 4, 8\)"):
        discover(ConvNet(), bits=(0, 4))


def test_bad_pin_value() -> None:
    with pytest.raises(BitsOutOfRangeError, match=r"`pins\['fc'\]` must be integers within 1\.\.8"):
        discover(ConvNet(), pins={"fc": 9})


def test_no_quantizable_unit() -> None:
    with pytest.raises(SearchSpaceError, match=r"needs at least one quantizable unit .* none matched in Sequential"):
        discover(nn.Sequential(nn.ReLU(), nn.Flatten()))


def test_include_matching_nothing() -> None:
    with pytest.raises(SearchSpaceError, match=r"none matched in ConvNet \(include=\['head\*'\]"):
        discover(ConvNet(), include=["head*"])


def test_pin_pattern_matching_nothing() -> None:
    with pytest.raises(SearchSpaceError, match=r"every pin must match a unit, but 'layer9\.\*' matches none"):
        discover(ConvNet(), pins={"layer9.*": 4})


def test_pin_of_excluded_unit_matches_nothing() -> None:
    with pytest.raises(SearchSpaceError, match=r"but 'fc' matches none"):
        discover(ConvNet(), exclude=["fc"], pins={"fc": 8})


def test_tie_matching_nothing() -> None:
    with pytest.raises(SearchSpaceError, match=r"every tie entry must match a unit, but 'head' matches none"):
        discover(ConvNet(), ties=[("layer1.0", "head")])


def test_search_space_checks_its_ties() -> None:
    unit = QuantUnit(name="a", kind="linear", weight_shape=(2, 2), out_features=2, fan_in=2, bits=(4,))
    with pytest.raises(SearchSpaceError, match=r"ties must name units of the space, but \['b'\] are not units"):
        SearchSpace(units=(unit,), ties=(("a", "b"),))
    with pytest.raises(SearchSpaceError, match="unit names must be unique"):
        SearchSpace(units=(unit, unit))


def test_unknown_unit_lookup() -> None:
    with pytest.raises(SearchSpaceError, match=r"`name` must be a unit of the space, but got 'nope'"):
        discover(ConvNet()).unit("nope")


# ---- transformers Conv1D ----------------------------------------------------
def test_discover_transformers_conv1d() -> None:
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_attn = pytorch_utils.Conv1D(36, 12)  # nf=36 outputs, nx=12 inputs; weight (12, 36)
            self.c_proj = pytorch_utils.Conv1D(12, 36)
            self.head = nn.Linear(12, 5)

    block = Block()
    assert tuple(block.c_attn.weight.shape) == (12, 36)
    space = discover(block, pin_first_last=None)
    assert space.names == ("c_attn", "c_proj", "head")
    assert [u.kind for u in space.units] == ["conv1d", "conv1d", "linear"]
    attn, proj, head = space.units
    assert (attn.out_features, attn.fan_in, attn.weight_shape) == (36, 12, (12, 36))
    assert (proj.out_features, proj.fan_in) == (12, 36)
    assert (head.out_features, head.fan_in) == (5, 12)
    assert [u.n_weights for u in space.units] == [432, 432, 60]


def test_numpy_integer_bits_are_accepted() -> None:
    import numpy as np

    space = discover(ConvNet(), bits=np.array([4, 2]))
    assert space.unit("layer1.0").bits == (2, 4)
    assert all(type(b) is int for b in space.unit("layer1.0").bits)
