"""Device specifications for the roofline model: peak throughput per precision and memory bandwidth.

All figures are the vendors' dense (no structured sparsity) peak numbers at boost clock. Where a
datasheet gives "X / 2X with sparsity" we take X. A precision the vendor does not state is None and
the roofline falls back to the next wider precision (int4 -> int8 -> fp16 -> fp32).

Sources:

* H100 SXM5: NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100):
  FP32 67 TFLOPS; FP16/BF16 Tensor Core 1,979 TFLOPS with sparsity (989.5 dense); INT8 Tensor
  Core 3,958 TOPS with sparsity (1,979 dense); no INT4 figure (Hopper has no INT4 tensor
  cores); HBM3 3.35 TB/s.
* A100 80GB SXM: NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100):
  FP32 19.5 TFLOPS; FP16 Tensor Core 312 TFLOPS dense; INT8 624 TOPS dense; HBM2e 2,039 GB/s.
  INT4 1,248 TOPS dense from the NVIDIA A100 Tensor Core GPU Architecture whitepaper (Table 1).
* T4: NVIDIA T4 Tensor Core GPU datasheet: FP32 8.1 TFLOPS; mixed FP16/FP32 65 TFLOPS;
  INT8 130 TOPS; INT4 260 TOPS; GDDR6 320 GB/s.
* RTX 4090: NVIDIA Ada GPU Architecture whitepaper (v2.1, appendix table for GeForce RTX 4090):
  FP32 82.6 TFLOPS; FP16 Tensor with FP32 accumulate 165.2 TFLOPS dense; INT8 Tensor
  660.6 TOPS dense; INT4 Tensor 1,321.2 TOPS dense; GDDR6X 1,008 GB/s.
* cpu-local: this machine, measured by :func:`mpsearch.workflows.hw_calibrate.measure_cpu` (a float32
  matmul for the peak, a large array copy for the bandwidth) or given by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpsearch.core.errors import DataError, UnknownNameError

PRECISIONS = ("int4", "int8", "fp16", "fp32")


@dataclass(frozen=True, kw_only=True)
class Device:
    """Peak throughput (tera-ops per second, one MAC = 2 ops) and memory bandwidth (GB/s)."""

    name: str
    fp32_tflops: float
    fp16_tflops: float | None
    int8_tops: float | None
    int4_tops: float | None
    bandwidth_gbs: float
    source: str = ""

    def __post_init__(self) -> None:
        for field_name in ("fp32_tflops", "bandwidth_gbs"):
            value = getattr(self, field_name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise DataError(f"`{field_name}` must be a positive number, but got {field_name}={value!r}. "
                                "Pass the vendor's figure or a measured one.")

    def peak_ops(self, precision: str) -> float:
        """Peak operations per second at ``precision``, falling back to wider ones if unstated."""
        if precision not in PRECISIONS:
            raise DataError(f"`precision` must be one of {list(PRECISIONS)}, but got {precision!r}.")
        table = {"int4": self.int4_tops, "int8": self.int8_tops, "fp16": self.fp16_tflops, "fp32": self.fp32_tflops}
        for p in PRECISIONS[PRECISIONS.index(precision):]:
            if table[p]:
                return float(table[p]) * 1e12
        return float(self.fp32_tflops) * 1e12  # unreachable: fp32 is required

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return float(self.bandwidth_gbs) * 1e9


DEVICES: dict[str, Device] = {
    "h100-sxm": Device(name="h100-sxm", fp32_tflops=67.0, fp16_tflops=989.5, int8_tops=1979.0, int4_tops=None,
                       bandwidth_gbs=3350.0, source="NVIDIA H100 Tensor Core GPU datasheet"),
    "a100-80gb": Device(name="a100-80gb", fp32_tflops=19.5, fp16_tflops=312.0, int8_tops=624.0, int4_tops=1248.0,
                        bandwidth_gbs=2039.0, source="NVIDIA A100 datasheet and A100 architecture whitepaper"),
    "t4": Device(name="t4", fp32_tflops=8.1, fp16_tflops=65.0, int8_tops=130.0, int4_tops=260.0,
                 bandwidth_gbs=320.0, source="NVIDIA T4 Tensor Core GPU datasheet"),
    "rtx4090": Device(name="rtx4090", fp32_tflops=82.6, fp16_tflops=165.2, int8_tops=660.6, int4_tops=1321.2,
                      bandwidth_gbs=1008.0, source="NVIDIA Ada GPU Architecture whitepaper v2.1"),
}


def cpu_local(*, peak_gflops: float, bandwidth_gbs: float) -> Device:
    """A CPU described by a measured float32 peak (GFLOPS) and memory bandwidth (GB/s).

    Every precision runs at the float32 rate (our Numba kernels dequantize to float32).
    """
    return Device(name="cpu-local", fp32_tflops=peak_gflops / 1e3, fp16_tflops=None, int8_tops=None,
                  int4_tops=None, bandwidth_gbs=bandwidth_gbs, source="measured by mpsearch.workflows.hw_calibrate")


def get_device(name: str | Device) -> Device:
    """A device by name (``h100-sxm``, ``a100-80gb``, ``t4``, ``rtx4090``) or the instance given."""
    if isinstance(name, Device):
        return name
    key = str(name).lower().replace("_", "-").replace(" ", "-")
    aliases = {"h100": "h100-sxm", "a100": "a100-80gb", "rtx-4090": "rtx4090", "4090": "rtx4090"}
    key = aliases.get(key, key)
    if key not in DEVICES:
        raise UnknownNameError(f"`device` must be a known device, but got {name!r}. Pass one of "
                               f"{sorted(DEVICES)}, or cpu_local(peak_gflops=..., bandwidth_gbs=...).")
    return DEVICES[key]
