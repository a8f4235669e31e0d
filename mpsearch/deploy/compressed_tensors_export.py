"""A mixed-precision plan as a compressed-tensors checkpoint (the format vLLM and SGLang load).

The folder is a Hugging Face model folder: ``config.json`` with a ``quantization_config`` of
``quant_method: compressed-tensors``, ``format: pack-quantized``; ``model.safetensors``; the
tokenizer when given; and ``plan.json``. The quantization config holds one ``config_groups`` entry
per width (the plan has one group size), each targeting its modules by exact name, and an
``ignore`` list of the Linear modules left in 16 bits.

Each quantized module stores, in place of ``weight``:

* ``weight_packed`` int32 (out, ceil(in * b / 32)): the signed codes ``q = code - 2^(b-1)`` in
  ``[-2^(b-1), 2^(b-1) - 1]``, offset back by ``2^(b-1)`` and packed densely along a row, value e
  at bits ``e * b .. e * b + b - 1`` (little-endian, across word boundaries), as compressed-tensors'
  ``pack_to_int32`` packs them; for 2, 4 and 8 bits this is the classic 32/b values per word;
* ``weight_scale`` (out, groups) in the model's dtype and ``weight_shape`` int (2,);
* ``weight_zero_point`` for the affine scheme: ``zero - 2^(b-1)``, packed the same way along the
  output dimension.

The codes, scales and zero-points are exactly mpsearch's reference quantizer's, so the checkpoint
dequantizes to the weights of :func:`mpsearch.deploy.evaluate.fake_quantize_model`. The plan must fit
the target unchanged: run :func:`mpsearch.deploy.export_check.check_export` first to fit it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpsearch.core.config import Scheme
from mpsearch.core.errors import ConfigError, PlanMismatchError
from mpsearch.core.io import atomic_write_bytes, atomic_write_text
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.export_check import check_export
from mpsearch.kernels.quantize import quantize
from mpsearch.space.units import scan_model

__all__ = ["export_compressed_tensors", "pack_rows"]

FLOAT = 16


def pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit values (rows x cols) densely along each row into int32 words."""
    rows, cols = values.shape
    start = np.arange(cols, dtype=np.int64) * bits
    words = np.zeros((rows, math.ceil(cols * bits / 32) + 1), dtype=np.uint64)
    shifted = values.astype(np.uint64) << (start % 32).astype(np.uint64)[None, :]
    for lo_part, index in ((shifted & np.uint64(0xFFFFFFFF), start // 32), (shifted >> np.uint64(32), start // 32 + 1)):
        np.add.at(words, (slice(None), index), lo_part)  # bit fields never overlap: adding is OR
    return words[:, :-1].astype(np.uint32).view(np.int32)


def _scheme(bits: int, plan: BitPlan, targets: list[str]) -> dict[str, Any]:
    group = plan.quantizer.group_size
    return {"targets": sorted(targets), "input_activations": None, "output_activations": None, "format": None,
            "weights": {"num_bits": bits, "type": "int", "symmetric": plan.quantizer.scheme is Scheme.SYMMETRIC,
                        "group_size": group, "strategy": "group" if group else "channel", "dynamic": False}}


def _check(model: nn.Module, plan: BitPlan, modules: dict[str, nn.Module]) -> None:
    if plan.quantizer.method != "rtn" or plan.activation_bits or plan.bias_correction:
        raise ConfigError("compressed-tensors pack-quantized holds round-to-nearest weights only, but the plan has "
                          f"method={plan.quantizer.method!r}, {len(plan.activation_bits)} activation widths and "
                          f"{len(plan.bias_correction)} bias corrections. Export a weight-only rtn plan.")
    bad = sorted(n for n, v in plan.bits.items() if v != FLOAT and not isinstance(modules.get(n), nn.Linear))
    if bad:
        raise PlanMismatchError(f"compressed-tensors export quantizes nn.Linear modules only, but {bad[:5]} are "
                                "not Linear layers of the model. Keep them at 16 bits in the plan.")


def export_compressed_tensors(model: nn.Module, plan: BitPlan, folder: str | os.PathLike[str], *,
                              tokenizer: Any = None) -> Path:
    """Write ``model`` (a transformers model, float) quantized by ``plan`` as a compressed-tensors folder.

    >>> # export_compressed_tensors(model, check_export(plan, "vllm").plan, "out/ct", tokenizer=tok)
    """
    import safetensors.torch

    modules = dict(model.named_modules())
    _check(model, plan, modules)
    rows = {n: int(m.weight.shape[1]) for n, m in modules.items() if n in plan.bits and isinstance(m, nn.Linear)}
    tied = [u.name for u in scan_model(model)[0] if u.tied and u.name in plan.bits]
    check_export(plan, "compressed-tensors", row_lengths=rows, allow_changes=False, tied=tied)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied: transformers restores it from the embedding
    by_width: dict[int, list[str]] = {}
    for name, value in plan.bits.items():
        if value == FLOAT:
            continue
        bits = int(value if isinstance(value, int) else value[0])
        by_width.setdefault(bits, []).append(name)
        weight = modules[name].weight.detach()
        qw = quantize(weight.float(), bits, plan.quantizer)
        del state[f"{name}.weight"]
        state[f"{name}.weight_packed"] = torch.from_numpy(pack_rows(qw.codes.numpy(), bits))
        state[f"{name}.weight_scale"] = qw.scale.to(weight.dtype).contiguous()
        state[f"{name}.weight_shape"] = torch.tensor(list(weight.shape), dtype=torch.int64)
        if plan.quantizer.scheme is not Scheme.SYMMETRIC:
            state[f"{name}.weight_zero_point"] = torch.from_numpy(pack_rows(qw.zero.numpy().T, bits).T.copy())
    ignore = sorted(n for n, m in modules.items() if isinstance(m, nn.Linear) and plan.bits.get(n, FLOAT) == FLOAT)
    quant = {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
             "config_groups": {f"group_{i}": _scheme(b, plan, names) for i, (b, names) in enumerate(sorted(by_width.items()))},
             "ignore": ignore, "kv_cache_scheme": None, "global_compression_ratio": None}
    config = model.config.to_dict()
    config["quantization_config"] = quant
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "model.safetensors", safetensors.torch.save(state, metadata={"format": "pt"}))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    plan.save(folder / "plan.json")
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    return folder
