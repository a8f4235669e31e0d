"""The one storage-accounting rule: what a quantized weight costs in bits.

A unit (or group) at b bits (1..8) stores b bits per weight, plus per group of G inputs of
each output row one scale in the quantizer's ``scale_dtype`` and, when affine, one uint8
zero-point. At 16 bits it stays in floating point and has no overhead. Budgets, cost tables,
plan sizes and the byte-exact memory model all count with these two functions.
"""

from __future__ import annotations

from mpsearch.core.config import FLOAT_BITS, SCALE_BITS, QuantizerConfig, Scheme, check_bits, num_groups

ZERO_POINT_BITS = 8  # a uint8 zero-point per group, affine only


def group_overhead_bits(config: QuantizerConfig | None = None) -> int:
    """Bits of one group's scale and (affine) zero-point.

    >>> group_overhead_bits(QuantizerConfig(scheme="affine"))
    24
    """
    config = config or QuantizerConfig()
    return SCALE_BITS[config.scale_dtype] + (ZERO_POINT_BITS if config.scheme is Scheme.AFFINE else 0)


def overhead_bits(out_features: int, fan_in: int, bits: int,
                  config: QuantizerConfig | None = None) -> int:
    """Storage bits of one unit's scales (and uint8 zero-points when affine); 0 at 16 bits.

    >>> overhead_bits(64, 300, 4, QuantizerConfig(scheme="affine", group_size=128))  # 64*3*24
    4608
    """
    config = config or QuantizerConfig()
    if check_bits(bits, config.scheme, allow_float=True) == FLOAT_BITS:
        return 0
    return int(out_features) * num_groups(int(fan_in), config) * group_overhead_bits(config)


__all__ = ["ZERO_POINT_BITS", "group_overhead_bits", "overhead_bits"]
