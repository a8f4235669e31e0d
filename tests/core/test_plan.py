"""Tests for bit plans (mpsearch/core/plan.py): JSON round trips, malformed documents, validation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import BitsOutOfRangeError, PlanFormatError, PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.pricing.tables import cost_table_from_space
from mpsearch.space.discover import QuantUnit, SearchSpace, check_plan_for_model, discover


def plan() -> BitPlan:
    return BitPlan(
        bits={"layer1.conv": 3, "conv1": 8, "fc": 16, "layer2.conv": 2},
        quantizer=QuantizerConfig(scheme="affine", group_size=32, clip_search=True),
        meta={"solver": "ilp", "budget": [{"kind": "avg_bits", "value": 3.0}], "objective": 0.125, "note": None},
    )


def doc(**changes) -> dict:
    out = json.loads(plan().to_json())
    out.update(changes)
    return out


# ---- round trips ------------------------------------------------------------
def test_json_round_trip() -> None:
    p = plan()
    back = BitPlan.from_json(p.to_json())
    assert back == p
    assert back.bits == {"conv1": 8, "fc": 16, "layer1.conv": 3, "layer2.conv": 2}
    assert back.quantizer == QuantizerConfig(scheme="affine", group_size=32, clip_search=True)
    assert back.meta["budget"] == [{"kind": "avg_bits", "value": 3.0}]


def test_from_json_accepts_bytes() -> None:
    assert BitPlan.from_json(plan().to_json().encode()) == plan()


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = plan().save(tmp_path / "plans" / "plan.json")
    assert path == tmp_path / "plans" / "plan.json"
    assert BitPlan.load(path) == plan()


def test_envelope() -> None:
    d = json.loads(plan().to_json())
    assert d["format"] == "mpsearch.bitplan" and d["version"] == 1
    assert set(d) == {"format", "version", "quantizer", "bits", "meta"}
    assert d["quantizer"]["scheme"] == "affine"


def test_same_plan_gives_identical_bytes(tmp_path: Path) -> None:
    a = plan().save(tmp_path / "a.json").read_bytes()
    b = plan().save(tmp_path / "b.json").read_bytes()
    assert a == b
    assert a.decode() == plan().to_json()


def test_dict_insertion_order_is_irrelevant() -> None:
    a = BitPlan(bits={"a": 2, "b": 4, "c": 8}, meta={"x": 1, "y": {"p": 1, "q": 2}})
    b = BitPlan(bits={"c": 8, "b": 4, "a": 2}, meta={"y": {"q": 2, "p": 1}, "x": 1})
    assert a.to_json() == b.to_json()
    assert list(b.bits) == ["a", "b", "c"]


def test_meta_tuples_become_lists() -> None:
    p = BitPlan(bits={"a": 2}, meta={"shape": (1, 2)})
    assert p.meta == {"shape": [1, 2]}
    assert BitPlan.from_json(p.to_json()) == p


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("old content")
    plan().save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    assert BitPlan.load(path) == plan()


def test_defaults() -> None:
    p = BitPlan(bits={"a": 4})
    assert p.quantizer == QuantizerConfig() and p.meta == {}
    assert BitPlan.from_json('{"format": "mpsearch.bitplan", "version": 1, "bits": {"a": 4}}') == p


# ---- malformed documents ----------------------------------------------------
PLAN_FIX = r"Pass a plan written by `mpsearch search` \(or BitPlan\.save\)\.$"


@pytest.mark.parametrize(("text", "rule"), [
    ("not json", r"must be valid JSON, but the text is not: Expecting value"),
    ("{", r"must be valid JSON, but the text is not: .*cut short"),
    ("", r"must be valid JSON, but the text is empty"),
    (b"\xff\xfe", r"must be UTF-8 JSON, but the text is binary"),
    (b'{"a": "\x00"}', r"must be UTF-8 JSON, but the text is binary"),
])
def test_not_json(text: str | bytes, rule: str) -> None:
    with pytest.raises(PlanFormatError, match=r"^a plan " + rule + r".*\. " + PLAN_FIX):
        BitPlan.from_json(text)


def test_not_text() -> None:
    with pytest.raises(PlanFormatError, match=r"a plan must be JSON text \(str or bytes\), but got dict"):
        BitPlan.from_json({"format": "mpsearch.bitplan"})  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "type_name"), [("[1, 2]", "list"), ('"plan"', "str"), ("3", "int"), ("null", "NoneType")])
def test_not_an_object(text: str, type_name: str) -> None:
    with pytest.raises(PlanFormatError, match=rf"a plan document must be a JSON object with format='mpsearch\.bitplan', "
                       rf"but got {type_name} .*\. {PLAN_FIX}"):
        BitPlan.from_json(text)


@pytest.mark.parametrize("fmt", ["mpsearch.costtable", "", None, "MPSEARCH.BITPLAN"])
def test_wrong_format(fmt: object) -> None:
    with pytest.raises(PlanFormatError, match=rf"must have format='mpsearch\.bitplan', but got format={fmt!r}\. {PLAN_FIX}"):
        BitPlan.from_dict(doc(format=fmt))


def test_missing_format() -> None:
    d = doc()
    del d["format"]
    with pytest.raises(PlanFormatError, match="but got format=None"):
        BitPlan.from_dict(d)


@pytest.mark.parametrize("version", [2, 0, "1", True, None, [1]])
def test_unknown_version(version: object) -> None:
    with pytest.raises(PlanFormatError, match=rf"plan version must be one of \[1\], but got version={re.escape(repr(version))}\. "
                       r"Upgrade mpsearch if the file comes from a newer one; else pass a plan written by"):
        BitPlan.from_json(json.dumps(doc(version=version)))


def test_extra_top_level_key() -> None:
    with pytest.raises(PlanFormatError, match=r"a version-1 plan has no keys \['comment', 'units'\]"):
        BitPlan.from_dict(doc(units=[], comment="x"))


def test_missing_bits() -> None:
    d = doc()
    del d["bits"]
    with pytest.raises(PlanFormatError, match="a plan document must have a `bits` object"):
        BitPlan.from_dict(d)


@pytest.mark.parametrize("bits", [{}, [], None, [["a", 4]], "a=4"])
def test_empty_or_non_mapping_bits(bits: object) -> None:
    with pytest.raises(PlanFormatError, match="plan `bits` must be a non-empty mapping of unit name to bits"):
        BitPlan.from_dict(doc(bits=bits))


@pytest.mark.parametrize("value", [0, 9, 15, 17, -4, 3.5, 4.0, "4", True, False, None, {"g": 4}, [4, 9], [4, "4"]])
def test_bad_bits_value(value: object) -> None:
    with pytest.raises(BitsOutOfRangeError, match=r"plan bits must be an integer within 1\.\.8 \(or 16 for floating point\)"):
        BitPlan.from_json(json.dumps(doc(bits={"conv1": 8, "fc": value})))


def test_empty_per_group_bits() -> None:
    with pytest.raises(BitsOutOfRangeError, match=r"per-group plan bits must be a non-empty list, but 'fc' has \[\]"):
        BitPlan.from_json(json.dumps(doc(bits={"conv1": 8, "fc": []})))


def test_nested_per_group_bits_are_rejected() -> None:
    with pytest.raises(BitsOutOfRangeError, match="plan bits must be an integer within 1..8"):
        BitPlan(bits={"fc": [[4, 2], [8]]}, quantizer=QuantizerConfig(group_size=32))


def test_per_group_bits_round_trip() -> None:
    p = BitPlan(bits={"fc": [4, 2, 8, 2], "conv": 8}, quantizer=QuantizerConfig(group_size=16))
    assert p.bits == {"conv": 8, "fc": (4, 2, 8, 2)}
    assert json.loads(p.to_json())["bits"] == {"conv": 8, "fc": [4, 2, 8, 2]}
    assert BitPlan.from_json(p.to_json()) == p


def test_per_group_bits_need_a_group_size() -> None:
    with pytest.raises(PlanFormatError, match="per-group plan bits need a quantizer with group_size, but group_size is None"):
        BitPlan(bits={"fc": [4, 2]})


def test_bad_bits_value_names_the_unit() -> None:
    with pytest.raises(BitsOutOfRangeError, match=r"but got 'fc': 9\. Fix the plan entry"):
        BitPlan(bits={"conv1": 8, "fc": 9})


@pytest.mark.parametrize("name", ["", 3, None])
def test_bad_unit_name(name: object) -> None:
    with pytest.raises(PlanFormatError, match="plan unit names must be non-empty strings"):
        BitPlan(bits={name: 4})  # type: ignore[dict-item]


@pytest.mark.parametrize("bits", [1, 2, 8, 16])
def test_edge_bits_accepted(bits: int) -> None:
    p = BitPlan.from_json(json.dumps(doc(bits={"a": bits})))
    assert p.bits == {"a": bits}


def test_sixteen_means_floating_point_and_round_trips() -> None:
    p = BitPlan(bits={"head": 16, "body": 4})
    assert BitPlan.from_json(p.to_json()).bits == {"body": 4, "head": 16}


@pytest.mark.parametrize(
    ("quantizer", "message"),
    [
        ({"scheme": "affine", "bits": 4}, r"plan `quantizer` is invalid: A quantizer config must be a mapping with keys among"),
        ({"schema": "affine"}, r"plan `quantizer` is invalid: .*but got \['schema'\]"),
        ({"scheme": "asymmetric"}, r"plan `quantizer` is invalid: `scheme` must be one of \['symmetric', 'affine'\]"),
        ({"group_size": 0}, r"plan `quantizer` is invalid: `group_size` must be None or an integer >= 1"),
        ({"scale_dtype": "int8"}, r"plan `quantizer` is invalid: `scale_dtype` must be one of"),
        ([["scheme", "affine"]], r"plan `quantizer` must be an object"),
        ("affine", r"plan `quantizer` must be an object, but got 'affine'"),
    ],
)
def test_bad_quantizer(quantizer: object, message: str) -> None:
    with pytest.raises(PlanFormatError, match=message):
        BitPlan.from_json(json.dumps(doc(quantizer=quantizer)))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_meta_in_json(literal: str) -> None:
    text = plan().to_json().replace('"objective": 0.125', f'"objective": {literal}')
    assert literal in text
    with pytest.raises(PlanFormatError, match=r"plan metadata must be finite JSON numbers, but meta\.objective = "):
        BitPlan.from_json(text)


def test_non_finite_nested_meta() -> None:
    with pytest.raises(PlanFormatError, match=r"meta\.runs\[1\]\.loss = nan"):
        BitPlan(bits={"a": 4}, meta={"runs": [{"loss": 1.0}, {"loss": float("nan")}]})


def test_non_json_meta() -> None:
    with pytest.raises(PlanFormatError, match=r"plan metadata must be plain JSON .* meta\.when is a set"):
        BitPlan(bits={"a": 4}, meta={"when": {1, 2}})
    with pytest.raises(PlanFormatError, match=r"plan metadata keys must be strings, but meta has key 1"):
        BitPlan(bits={"a": 4}, meta={1: "x"})


def test_meta_not_a_mapping() -> None:
    with pytest.raises(PlanFormatError, match="plan `meta` must be a mapping, but got list"):
        BitPlan.from_dict(doc(meta=[1, 2]))


def test_quantizer_must_be_a_config() -> None:
    with pytest.raises(PlanFormatError, match="plan `quantizer` must be a QuantizerConfig, but got dict"):
        BitPlan(bits={"a": 4}, quantizer={"scheme": "affine"})  # type: ignore[arg-type]


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlanFormatError, match=r"a plan file must be readable, but .*missing\.json' is not: No such file or "
                       r"directory\. Check the path\. " + PLAN_FIX):
        BitPlan.load(tmp_path / "missing.json")


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(PlanFormatError, match=r"a plan file must be readable, but .* is not: Is a directory\. Check the path"):
        BitPlan.load(tmp_path)


def test_load_cost_table_as_plan(tmp_path: Path) -> None:
    (tmp_path / "costs.json").write_text('{"format": "mpsearch.costtable", "version": 1}')
    with pytest.raises(PlanFormatError, match=r"but got format='mpsearch\.costtable'\. " + PLAN_FIX):
        BitPlan.load(tmp_path / "costs.json")


def test_load_truncated_file(tmp_path: Path) -> None:
    path = plan().save(tmp_path / "plan.json")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(PlanFormatError, match=r"a plan file must be valid JSON, but .*plan\.json' is not: .*cut short.*" + PLAN_FIX):
        BitPlan.load(path)


# ---- validate(space) --------------------------------------------------------
def unit(name: str, bits: tuple[int, ...] = (2, 3, 4, 8)) -> QuantUnit:
    return QuantUnit(name=name, kind="linear", weight_shape=(4, 4), out_features=4, fan_in=4, bits=bits)


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace(
        units=(unit("first", (8,)), unit("a"), unit("b"), unit("c", (2, 4)), unit("last", (8,))),
        ties=(("a", "b"),),
    )


def test_validate_accepts_matching_plan(space: SearchSpace) -> None:
    p = BitPlan(bits={"first": 8, "a": 3, "b": 3, "c": 4, "last": 8})
    assert p.validate(space) is p


def test_validate_lists_missing_and_extra(space: SearchSpace) -> None:
    p = BitPlan(bits={"first": 8, "a": 3, "b": 3, "zz": 4, "yy": 2})
    with pytest.raises(
        PlanMismatchError,
        match=r"2 are missing \['c', 'last'\] and 2 are unknown \['yy', 'zz'\]",
    ):
        p.validate(space)


def test_validate_bits_not_among_choices(space: SearchSpace) -> None:
    p = BitPlan(bits={"first": 8, "a": 3, "b": 3, "c": 3, "last": 8})
    with pytest.raises(BitsOutOfRangeError, match=r"must be among the unit's choices, but 'c' has \[3\] and allows \[2, 4\]"):
        p.validate(space)


def test_validate_pinned_unit(space: SearchSpace) -> None:
    p = BitPlan(bits={"first": 4, "a": 3, "b": 3, "c": 4, "last": 8})
    with pytest.raises(BitsOutOfRangeError, match=r"must be among the unit's choices, but 'first' has \[4\] and allows \[8\]"):
        p.validate(space)


def test_validate_per_group_bits(space: SearchSpace) -> None:
    q = QuantizerConfig(group_size=3)  # fan_in 4 -> 2 groups per row, 4 rows -> 8 groups
    good = [2, 4, 4, 2, 2, 2, 4, 4]
    p = BitPlan(bits={"first": 8, "a": 3, "b": 3, "c": good, "last": 8}, quantizer=q)
    assert p.validate(space) is p
    with pytest.raises(PlanMismatchError, match=r"one width per group, but 'c' has 7 and 8 groups \(group_size=3\)"):
        BitPlan(bits={"first": 8, "a": 3, "b": 3, "c": good[:7], "last": 8}, quantizer=q).validate(space)
    with pytest.raises(BitsOutOfRangeError, match=r"'c' has \[3, 8\] and allows \[2, 4\]"):
        BitPlan(bits={"first": 8, "a": 3, "b": 3, "c": [3, 8] + good[2:], "last": 8}, quantizer=q).validate(space)


def test_validate_tie_violated(space: SearchSpace) -> None:
    p = BitPlan(bits={"first": 8, "a": 3, "b": 4, "c": 4, "last": 8})
    with pytest.raises(PlanMismatchError, match=r"tied units must share bits, but \['a', 'b'\] have \[3, 4\]"):
        p.validate(space)


def small_model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def test_validate_accepts_float_units_from_cost_table_plan() -> None:
    model = small_model()
    space = discover(model, exclude=["3"], pin_first_last=None)
    assert space.float_units == ("3",)
    costs = cost_table_from_space(space, {"0": {2: 3.0, 3: 2.0, 4: 1.0, 8: 0.0}})
    p = costs.plan(costs.uniform_choice(4))
    assert p.bits == {"0": 4, "3": 16}
    # regression: validate(space) used to reject the float units as unknown
    assert check_plan_for_model(p, model) is p
    assert p.validate(space) is p


def test_validate_float_unit_must_stay_at_16_bits() -> None:
    space = discover(small_model(), exclude=["3"], pin_first_last=None)
    with pytest.raises(BitsOutOfRangeError, match=r"units outside the search space stay in floating point, but '3' has 4 bits"):
        BitPlan(bits={"0": 4, "3": 4}).validate(space)


# ---- check_plan_for_model ---------------------------------------------------------
def test_check_plan_for_model_accepts_matching_plan() -> None:
    p = BitPlan(bits={"0": 8, "3": 4})
    assert check_plan_for_model(p, small_model()) is p


def test_check_plan_for_model_accepts_sixteen_for_floating_point() -> None:
    check_plan_for_model(BitPlan(bits={"0": 16, "3": 4}), small_model())


def test_check_plan_for_model_unknown_name() -> None:
    with pytest.raises(PlanMismatchError, match=r"missing=\[\], unknown=\['fc'\], not quantizable=\[\]"):
        check_plan_for_model(BitPlan(bits={"0": 8, "3": 4, "fc": 4}), small_model())


def test_check_plan_for_model_not_quantizable() -> None:
    with pytest.raises(PlanMismatchError, match=r"unknown=\[\], not quantizable=\['1'\]"):
        check_plan_for_model(BitPlan(bits={"0": 8, "1": 4, "3": 4}), small_model())


def test_check_plan_for_model_missing_unit() -> None:
    with pytest.raises(PlanMismatchError, match=r"every quantizable unit of Sequential and nothing else, but missing=\['3'\]"):
        check_plan_for_model(BitPlan(bits={"0": 8}), small_model())


def test_check_plan_for_model_lists_all_problems() -> None:
    with pytest.raises(PlanMismatchError, match=r"missing=\['0'\], unknown=\['x'\], not quantizable=\['2'\]"):
        check_plan_for_model(BitPlan(bits={"x": 8, "2": 4, "3": 4}), small_model())


# ---- property ---------------------------------------------------------------
names = st.text(alphabet="abc.0_", min_size=1, max_size=6)
bit_values = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 16])
json_scalars = (st.none() | st.booleans() | st.integers(-(10**12), 10**12)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5))
quantizers = st.builds(
    QuantizerConfig,
    scheme=st.sampled_from(["symmetric", "affine"]),
    group_size=st.none() | st.integers(1, 512),
    clip_search=st.booleans(),
    clip_grid=st.integers(1, 100),
    scale_dtype=st.sampled_from(["float16", "float32", "bfloat16"]),
)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.dictionaries(names, bit_values, min_size=1, max_size=8),
    quantizer=quantizers,
    meta=st.dictionaries(st.text(max_size=4), json_scalars | st.lists(json_scalars, max_size=3), max_size=4),
)
def test_random_plans_round_trip(bits: dict[str, int], quantizer: QuantizerConfig, meta: dict) -> None:
    p = BitPlan(bits=bits, quantizer=quantizer, meta=meta)
    text = p.to_json()
    back = BitPlan.from_json(text)
    assert back == p
    assert back.bits == bits
    assert back.to_json() == text
