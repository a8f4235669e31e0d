"""Validation of the parts of a plan document (bits, metadata, bias corrections)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mpsearch.core.config import FLOAT_BITS
from mpsearch.core.errors import BitsOutOfRangeError, PlanFormatError


def check_bits_value(name: str, value: Any, *, nested: bool = False) -> int | tuple[int, ...]:
    if isinstance(value, (list, tuple)) and not nested:
        if not value:
            raise BitsOutOfRangeError(f"per-group plan bits must be a non-empty list, but {name!r} has []. Fix the plan entry.")
        return tuple(check_bits_value(f"{name}[{i}]", v, nested=True) for i, v in enumerate(value))  # type: ignore[misc]
    if isinstance(value, bool) or not isinstance(value, int) or not (1 <= value <= 8 or value == FLOAT_BITS):
        raise BitsOutOfRangeError(
            f"plan bits must be an integer within 1..8 (or 16 for floating point), or a list of them per group, "
            f"but got {name!r}: {value!r}. Fix the plan entry."
        )
    return value


def widths(value: int | tuple[int, ...]) -> set[int]:
    return set(value) if isinstance(value, tuple) else {value}


def check_json_value(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PlanFormatError(f"plan metadata must be finite JSON numbers, but {where} = {value!r}.")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json_value(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PlanFormatError(f"plan metadata keys must be strings, but {where} has key {key!r}.")
            check_json_value(item, f"{where}.{key}")
        return
    raise PlanFormatError(
        f"plan metadata must be plain JSON (numbers, strings, lists, dicts), but {where} is a {type(value).__name__}."
    )


def is_finite_number(value: Any) -> bool:
    """A real, finite JSON number (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_bias_correction(value: Any) -> dict[str, tuple[float, ...]]:
    """``{unit: [one finite float per output channel]}``, sorted by unit name."""
    if not isinstance(value, Mapping):
        raise PlanFormatError(f"plan `bias_correction` must map unit names to lists of numbers, but got {type(value).__name__}.")
    out: dict[str, tuple[float, ...]] = {}
    for name, row in value.items():
        ok = isinstance(row, (list, tuple)) and len(row) > 0 and all(is_finite_number(v) for v in row)
        if not isinstance(name, str) or not ok:
            raise PlanFormatError(
                f"plan `bias_correction` entries must be non-empty lists of finite numbers (one per output "
                f"channel), but {name!r} has {str(row)[:80]}. Re-measure with mpsearch.deploy.bias_correction."
            )
        out[name] = tuple(float(v) for v in row)
    return dict(sorted(out.items()))


def check_pins(value: Any, bits: Mapping[str, int | tuple[int, ...]]) -> dict[str, int]:
    """``{unit: pinned width}`` (16: left out of the search), each unit of the plan at its pin."""
    if not isinstance(value, Mapping):
        raise PlanFormatError(f"plan `pins` must map unit names to bit widths, but got {type(value).__name__}.")
    pins: dict[str, int] = {}
    for name, pin in value.items():
        if not isinstance(name, str) or name not in bits:
            raise PlanFormatError(f"plan `pins` must name units of the plan, but got {name!r}. Remove the entry.")
        pins[name] = check_bits_value(f"pins[{name!r}]", pin, nested=True)  # type: ignore[assignment]
        if widths(bits[name]) == {pins[name]}:
            continue
        got = bits[name] if isinstance(bits[name], int) else sorted(widths(bits[name]))
        if pins[name] == FLOAT_BITS:
            raise BitsOutOfRangeError(
                f"a unit left out of the search stays in floating point (16 bits), but the plan gives {name!r} "
                f"{got} bits. Give it 16, or include it in the search space and solve again."
            )
        raise BitsOutOfRangeError(
            f"a unit pinned by the search space must keep its pinned width, but the plan gives {name!r} {got} bits "
            f"and it is pinned at {pins[name]}. Set it back to {pins[name]}, or search without the pin "
            "(`mpsearch sensitivity --no-pins`, discover(pin_first_last=None)) and solve again."
        )
    return dict(sorted(pins.items()))
