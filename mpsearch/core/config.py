"""Quantizer settings, without torch: shared by plans, cost tables and solvers.

Kept apart from :mod:`mpsearch.kernels.quantize` so that array-only code (solvers,
hardware models, plan files) can read and write quantizer settings without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

import numpy as np

from mpsearch.core.errors import BitsOutOfRangeError, ConfigError, PlanFormatError

FLOAT_BITS = 16  # a unit (or group) at 16 bits is left in floating point
METHODS = ("rtn", "gptq")  # how weights are rounded: round to nearest, or GPTQ
GPTQ_FIELDS = ("method", "damp", "block_size", "act_order")
SCALE_BITS = {"float16": 16, "float32": 32, "bfloat16": 16}


class Scheme(str, Enum):
    """How a group's range maps to integer codes."""

    SYMMETRIC = "symmetric"
    AFFINE = "affine"


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


@dataclass(frozen=True, kw_only=True)
class QuantizerConfig:
    """Quantizer settings shared by a whole plan.

    ``method`` is how weights are rounded: ``"rtn"`` (round to nearest, the reference) or
    ``"gptq"`` (GPTQ, :mod:`mpsearch.kernels.gptq`: error compensation from calibration inputs,
    so a GPTQ plan reproduces its model only with calibration data). ``damp`` (a fraction of the
    Hessian's mean diagonal added to it), ``block_size`` and ``act_order`` are GPTQ's settings.

    >>> cfg = QuantizerConfig(scheme="affine", group_size=128)
    >>> QuantizerConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> sorted(QuantizerConfig(method="gptq").to_dict())[:4]
    ['act_order', 'block_size', 'clip_grid', 'clip_search']
    """

    scheme: Scheme = Scheme.SYMMETRIC
    group_size: int | None = None
    clip_search: bool = False
    clip_grid: int = 20
    scale_dtype: str = "float16"
    method: str = "rtn"
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False

    def __post_init__(self) -> None:
        scheme = next((s for s in Scheme if s.value == self.scheme), None)
        gs, grid = self.group_size, self.clip_grid
        for failed, rule, got, fix in (
            (scheme is None, f"`scheme` must be one of {[s.value for s in Scheme]}",
             f"scheme={self.scheme!r}", "Pass scheme='symmetric' or scheme='affine'."),
            (gs is not None and (not _is_int(gs) or gs < 1),
             "`group_size` must be None or an integer >= 1", f"group_size={gs!r}",
             "Pass e.g. group_size=128, or None for one scale per output channel."),
            (not isinstance(self.clip_search, (bool, np.bool_)), "`clip_search` must be a bool",
             f"clip_search={self.clip_search!r}", "Pass clip_search=True or False."),
            (not _is_int(grid) or grid < 1, "`clip_grid` must be an integer >= 1",
             f"clip_grid={grid!r}", "Pass e.g. clip_grid=20."),
            (self.scale_dtype not in SCALE_BITS,
             f"`scale_dtype` must be one of {sorted(SCALE_BITS)}",
             f"scale_dtype={self.scale_dtype!r}", "Pass scale_dtype='float16'."),
            (self.method not in METHODS, f"`method` must be one of {list(METHODS)}",
             f"method={self.method!r}", "Pass method='rtn' or method='gptq'."),
            (not _is_number(self.damp) or not 0 <= self.damp < math.inf,
             "`damp` must be a finite number >= 0", f"damp={self.damp!r}", "Pass e.g. damp=0.01."),
            (not _is_int(self.block_size) or self.block_size < 1,
             "`block_size` must be an integer >= 1", f"block_size={self.block_size!r}",
             "Pass e.g. block_size=128."),
            (not isinstance(self.act_order, (bool, np.bool_)), "`act_order` must be a bool",
             f"act_order={self.act_order!r}", "Pass act_order=True or False."),
        ):
            if failed:
                raise ConfigError(f"{rule}, but got {got}. {fix}")
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "group_size", None if gs is None else int(gs))
        object.__setattr__(self, "clip_search", bool(self.clip_search))
        object.__setattr__(self, "clip_grid", int(grid))
        object.__setattr__(self, "damp", float(self.damp))
        object.__setattr__(self, "block_size", int(self.block_size))
        object.__setattr__(self, "act_order", bool(self.act_order))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (the scheme as its plain string value).

        A GPTQ config writes all its settings; a round-to-nearest one leaves out the GPTQ
        fields at their defaults, so it reads exactly as configs written before GPTQ existed.
        """
        data = {f.name: getattr(self, f.name) for f in fields(self)} | {"scheme": self.scheme.value}
        if self.method == "rtn":
            defaults = QuantizerConfig()
            data = {k: v for k, v in data.items()
                    if k not in GPTQ_FIELDS or v != getattr(defaults, k)}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantizerConfig:
        """Rebuild a config from :meth:`to_dict` output; missing keys take their defaults
        (a config without ``method``, as every plan before GPTQ, is round to nearest)."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known)) if isinstance(data, Mapping) else None
        if unknown is None or unknown:
            raise PlanFormatError(f"A quantizer config must be a mapping with keys among {known}, "
                                  f"but got {unknown or type(data).__name__}. Pass to_dict()'s "
                                  "output, with misspelt or foreign keys removed.")
        return cls(**data)


def check_bits(bits: Any, scheme: Scheme | str = Scheme.SYMMETRIC, *,
               allow_float: bool = False) -> int:
    """``bits`` as an int if valid for ``scheme`` (``allow_float``: 16 too), else raise."""
    if not (_is_int(bits) and (1 <= bits <= 8 or (allow_float and bits == FLOAT_BITS))):
        extra = " or 16 (floating point)" if allow_float else ""
        raise BitsOutOfRangeError(f"`bits` must be an integer within 1..8{extra}, but got "
                                  f"bits={bits!r}. Pass a bit width such as 2, 4 or 8.")
    if bits == 1 and Scheme(scheme) is Scheme.SYMMETRIC:
        raise BitsOutOfRangeError("Symmetric quantization needs bits >= 2 (one bit has no signed "
                                  "grid), but got bits=1 with scheme='symmetric'. Use "
                                  "scheme='affine' for 1-bit weights.")
    return int(bits)




def num_groups(fan_in: int, config: QuantizerConfig) -> int:
    """Groups per output row: ceil(fan_in / G), or 1 when ``group_size`` is None."""
    return 1 if config.group_size is None else -(-fan_in // config.group_size)


def group_sizes(fan_in: int, config: QuantizerConfig) -> np.ndarray:
    """The number of inputs in each group of one row (int64): G each, the last one maybe partial.

    >>> group_sizes(10, QuantizerConfig(group_size=4)).tolist()
    [4, 4, 2]
    """
    n = num_groups(fan_in, config)
    width = fan_in if n == 1 else int(config.group_size)  # type: ignore[arg-type]
    sizes = np.full(n, width, np.int64)
    sizes[-1] = fan_in - width * (n - 1)
    return sizes


#: The default of :func:`mpsearch.discover` and the CLI: per-channel affine with
#: MSE-optimal clipping. On ResNet-20 it beat symmetric round-to-nearest at every
#: width we measured (see the README), most at 2 and 3 bits.
RECOMMENDED = QuantizerConfig(scheme=Scheme.AFFINE, clip_search=True)
