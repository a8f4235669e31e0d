"""Bit plans: the assignment unit -> bits, with the quantizer that reproduces the model.

A plan is saved as versioned JSON with an envelope::

    {"format": "mpsearch.bitplan", "version": 1,
     "quantizer": {"scheme": "symmetric", "group_size": null, ...},
     "bits": {"conv1": 8, "layer1.0.conv1": 3, ...},
     "meta": {"budget": "3 bits/weight", "solver": "ilp", ...}}

Optional sections: ``activations`` (per-tensor input bits and calibrated ranges),
``bias_correction`` (per unit, one value per output channel added to its bias; measured on
calibration data by :mod:`mpsearch.deploy.bias_correction`) and ``pins`` (the widths the search
space fixed, such as the first convolution at 8 bits; 16 for a unit left out of the search, which
stays in floating point). A plan whose bits break its pins is refused when it is built or loaded,
so a hand edit cannot quietly run a pinned layer at 2 bits.

Bits are integers 1..8; 16 means "left in floating point". With group-wise
allocation a unit's entry is a list with one width per group (groups of G
inputs of one output row, row-major), which needs ``quantizer.group_size``. Serialization is
deterministic (sorted keys, fixed float formatting) so the same plan always
gives the same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mpsearch.core.config import QuantizerConfig, num_groups
from mpsearch.core.documents import check_envelope, parse_json, read_json
from mpsearch.core.errors import (
    BitsOutOfRangeError,
    MPSearchError,
    PlanFormatError,
    PlanMismatchError,
)
from mpsearch.core.io import atomic_write_text
from mpsearch.core.plan_checks import (
    FLOAT_BITS,
    check_bias_correction,
    check_bits_value,
    check_json_value,
    check_pins,
    is_finite_number,
    widths,
)


class _Unit(Protocol):
    name: str
    bits: tuple[int, ...]
    out_features: int
    fan_in: int


class SpaceLike(Protocol):
    """What :meth:`BitPlan.validate` reads of a search space (``mpsearch.space.SearchSpace`` has it)."""

    names: tuple[str, ...]
    float_units: tuple[str, ...]
    units: tuple[_Unit, ...]
    ties: tuple[tuple[str, ...], ...]

FORMAT = "mpsearch.bitplan"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
WHAT = "a plan"
FIX = "Pass a plan written by `mpsearch search` (or BitPlan.save)."

@dataclass(frozen=True, kw_only=True)
class BitPlan:
    """Bits per unit plus the quantizer settings needed to reproduce the model.

    >>> plan = BitPlan(bits={"conv1": 8, "fc": 4})
    >>> BitPlan.from_json(plan.to_json()) == plan
    True
    """

    bits: Mapping[str, int | tuple[int, ...]]
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    meta: Mapping[str, Any] = field(default_factory=dict)
    activation_bits: Mapping[str, int] = field(default_factory=dict)
    activation_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    bias_correction: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    pins: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.bits, Mapping) or not self.bits:
            raise PlanFormatError(
                f"plan `bits` must be a non-empty mapping of unit name to bits, but got {self.bits!r}."
            )
        clean: dict[str, Any] = {}
        for name, value in self.bits.items():
            if not isinstance(name, str) or not name:
                raise PlanFormatError(f"plan unit names must be non-empty strings, but got {name!r}.")
            clean[name] = check_bits_value(name, value)
        if not isinstance(self.quantizer, QuantizerConfig):
            raise PlanFormatError(f"plan `quantizer` must be a QuantizerConfig, but got {type(self.quantizer).__name__}.")
        if self.quantizer.group_size is None and any(isinstance(v, tuple) for v in clean.values()):
            raise PlanFormatError(
                "per-group plan bits need a quantizer with group_size, but group_size is None. "
                "Set quantizer.group_size or give one width per unit."
            )
        if not isinstance(self.meta, Mapping):
            raise PlanFormatError(f"plan `meta` must be a mapping, but got {type(self.meta).__name__}.")
        check_json_value(dict(self.meta), "meta")
        object.__setattr__(self, "bits", dict(sorted(clean.items())))
        self._check_activations()
        corrections = check_bias_correction(self.bias_correction)
        stray = sorted(n for n in corrections if self.bits.get(n, FLOAT_BITS) == FLOAT_BITS)
        if stray:
            raise PlanFormatError(f"bias corrections belong to quantized units, but {stray} are not quantized. Remove them.")
        object.__setattr__(self, "bias_correction", corrections)
        object.__setattr__(self, "pins", check_pins(self.pins, self.bits))
        object.__setattr__(self, "meta", json.loads(json.dumps(dict(self.meta), sort_keys=True)))

    @property
    def unsearched(self) -> tuple[str, ...]:
        """Units left out of the search (pinned at 16 bits): not counted in average bits or budgets."""
        return tuple(n for n, b in self.pins.items() if b == FLOAT_BITS)

    def _check_activations(self) -> None:
        if not isinstance(self.activation_bits, Mapping) or not isinstance(self.activation_ranges, Mapping):
            raise PlanFormatError("plan `activations` must hold `bits` and `ranges` objects.")
        bits: dict[str, int] = {}
        for name, value in self.activation_bits.items():
            if isinstance(value, bool) or not isinstance(value, int) or not (2 <= value <= 8 or value == FLOAT_BITS):
                raise BitsOutOfRangeError(
                    f"activation bits must be an integer within 2..8 (or 16), but got {name!r}: {value!r}. Fix the plan entry."
                )
            bits[str(name)] = value
        ranges: dict[str, tuple[float, float]] = {}
        for name, pair in self.activation_ranges.items():
            ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(is_finite_number(v) for v in pair)
            if not ok or not pair[0] <= 0 <= pair[1]:
                raise PlanFormatError(
                    f"activation ranges must be [lo, hi] with lo <= 0 <= hi, finite, but {name!r} has {pair!r}. "
                    "Recalibrate with mpsearch.kernels.activations.calibrate_ranges."
                )
            ranges[str(name)] = (float(pair[0]), float(pair[1]))
        unranged = sorted(n for n, b in bits.items() if b != FLOAT_BITS and n not in ranges)
        if unranged:
            raise PlanFormatError(f"quantized activations need a calibrated range, but {unranged} have none.")
        object.__setattr__(self, "activation_bits", dict(sorted(bits.items())))
        object.__setattr__(self, "activation_ranges", dict(sorted(ranges.items())))

    def with_activations(self, bits: Mapping[str, int], ranges: Mapping[str, tuple[float, float]]) -> BitPlan:
        """A copy that also quantizes each named unit's input to ``bits`` over its calibrated range."""
        import dataclasses

        return dataclasses.replace(self, activation_bits=dict(bits), activation_ranges=dict(ranges))

    def with_bias_correction(self, corrections: Mapping[str, Any]) -> BitPlan:
        """A copy that adds ``corrections[unit]`` (one value per output channel) to each unit's bias."""
        import dataclasses

        return dataclasses.replace(self, bias_correction={k: tuple(v) for k, v in corrections.items()})

    # ---- serialization -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "quantizer": self.quantizer.to_dict(),
            "bits": {k: list(v) if isinstance(v, tuple) else v for k, v in self.bits.items()},
            "meta": dict(self.meta),
        }
        if self.activation_bits:
            doc["activations"] = {
                "bits": dict(self.activation_bits),
                "ranges": {k: list(v) for k, v in self.activation_ranges.items()},
            }
        if self.bias_correction:
            doc["bias_correction"] = {k: list(v) for k, v in self.bias_correction.items()}
        if self.pins:
            doc["pins"] = dict(self.pins)
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, doc: Any) -> BitPlan:
        """The plan a JSON document describes; a malformed one raises :class:`PlanFormatError` naming the entry."""
        check_envelope(doc, error=PlanFormatError, what=WHAT, format=FORMAT, versions=SUPPORTED_VERSIONS, fix=FIX)
        extra = sorted(set(doc) - {"format", "version", "quantizer", "bits", "meta", "activations", "bias_correction", "pins"})
        if extra:
            raise PlanFormatError(f"a version-1 plan has no keys {extra}. Remove them.")
        if "bits" not in doc:
            raise PlanFormatError(f"a plan document must have a `bits` object mapping unit names to bits, but has none. {FIX}")
        quantizer_doc = doc.get("quantizer", {})
        if not isinstance(quantizer_doc, Mapping):
            raise PlanFormatError(f"plan `quantizer` must be an object, but got {quantizer_doc!r:.60}. Fix or remove the entry.")
        try:
            quantizer = QuantizerConfig.from_dict(dict(quantizer_doc))
        except MPSearchError as err:
            raise PlanFormatError(f"plan `quantizer` is invalid: {err}") from None
        except (TypeError, ValueError, KeyError) as err:
            raise PlanFormatError(f"plan `quantizer` is invalid: {err!r}. Fix or remove the entry.") from None
        acts = doc.get("activations", {})
        if not isinstance(acts, Mapping) or set(acts) - {"bits", "ranges"}:
            raise PlanFormatError(
                f"plan `activations` must be an object with `bits` and `ranges`, but got {acts!r:.60}. Fix or remove the entry."
            )
        return cls(
            bits=doc["bits"], quantizer=quantizer, meta=doc.get("meta", {}),
            activation_bits=acts.get("bits", {}), activation_ranges=acts.get("ranges", {}),
            bias_correction=doc.get("bias_correction", {}), pins=doc.get("pins", {}),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> BitPlan:
        """The plan of a JSON text (UTF-8 bytes or str)."""
        if not isinstance(text, (str, bytes)):
            raise PlanFormatError(f"a plan must be JSON text (str or bytes), but got {type(text).__name__}. Pass the text.")
        return cls.from_dict(parse_json(text, error=PlanFormatError, what=WHAT, where="the text", fix=FIX))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan atomically (never half a file)."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BitPlan:
        """Read a plan file; an unreadable, empty, binary or foreign file raises :class:`PlanFormatError`."""
        return cls.from_dict(read_json(path, error=PlanFormatError, what=WHAT, fix=FIX))

    # ---- validation ----------------------------------------------------
    def validate(self, space: SpaceLike) -> BitPlan:
        """Check the plan against a search space: same units, bits among each unit's choices."""
        names = set(space.names)
        floats = set(space.float_units)  # left out of the search: must stay in floating point
        missing = sorted(names - set(self.bits))
        extra = sorted(set(self.bits) - names - floats)
        if missing or extra:
            raise PlanMismatchError(
                "a plan must name exactly the units of the search space, but "
                f"{len(missing)} are missing {missing} and {len(extra)} are unknown {extra}. "
                "Make the plan for this model (mpsearch search) or fix the names."
            )
        for name in sorted(floats & set(self.bits)):
            if widths(self.bits[name]) != {FLOAT_BITS}:
                raise BitsOutOfRangeError(
                    f"units outside the search space stay in floating point, but {name!r} has "
                    f"{self.bits[name]} bits. Give it 16 or include it in the space."
                )
        for unit in space.units:
            value = self.bits[unit.name]
            bad = sorted(widths(value) - set(unit.bits))
            if bad:
                raise BitsOutOfRangeError(
                    f"plan bits must be among the unit's choices, but {unit.name!r} has {bad} "
                    f"and allows {list(unit.bits)}. Re-solve or change the choices."
                )
            if isinstance(value, tuple):
                expected = unit.out_features * num_groups(unit.fan_in, self.quantizer)
                if len(value) != expected:
                    raise PlanMismatchError(
                        f"per-group bits must give one width per group, but {unit.name!r} has {len(value)} "
                        f"and {expected} groups (group_size={self.quantizer.group_size}). Re-solve for this model."
                    )
        for tie in space.ties:
            values = {self.bits[n] for n in tie}
            if len(values) > 1:
                raise PlanMismatchError(
                    f"tied units must share bits, but {list(tie)} have {[self.bits[n] for n in tie]}."
                )
        return self

    # ---- summaries -----------------------------------------------------
    def group_widths(self, name: str, out_features: int) -> np.ndarray:
        """A unit's per-group widths as an (out, n_blocks) int64 array (for fake-quant and kernels)."""
        value = self.bits[name]
        if not isinstance(value, tuple):
            raise PlanFormatError(f"{name!r} has one width for the whole unit, not per group.")
        if len(value) % out_features:
            raise PlanMismatchError(f"{name!r} has {len(value)} group widths, not a multiple of its {out_features} rows.")
        return np.asarray(value, dtype=np.int64).reshape(out_features, -1)
