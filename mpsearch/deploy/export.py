"""Save a packed model to a folder and rebuild it from an fp32 skeleton of the same architecture.

A folder holds two files::

    model.safetensors   the packed model's state dict: packed codes, scales, zero-points,
                        and every tensor left in float (biases, norms, embeddings...)
    plan.json           the BitPlan (bits, quantizer, activation ranges)

The safetensors header carries ``format``/``version`` and each packed unit's geometry
(kind, bits, K, G, out; a table tied to its ``lm_head`` names it as ``tied`` and stores no
tensors, its codes are the layer's), so a file that does not fit the plan or the skeleton is refused
with a clear error instead of being loaded into the wrong shapes. Both files are written
atomically (temporary file, then rename); the model first, the plan last.

>>> # export(apply(model, plan, "numba"), plan, "out/resnet20-mixed")
>>> # model_q = load("out/resnet20-mixed", load_pretrained("resnet20"), backend="numba")
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.core.errors import DataError, PlanMismatchError
from mpsearch.core.io import atomic_write_bytes
from mpsearch.core.plan import BitPlan
from mpsearch.deploy import dispatch
from mpsearch.deploy.apply import build_packed
from mpsearch.deploy.architecture import describe, meta_tensors, skeleton
from mpsearch.deploy.embedding import QuantEmbedding
from mpsearch.deploy.modules import _PackedUnit

MODEL_FILE, PLAN_FILE = "model.safetensors", "plan.json"
FORMAT, VERSION = "mpsearch.packed_model", "1"


def _units(model: nn.Module) -> dict[str, dict[str, Any]]:
    layer_names = {id(m): n for n, m in model.named_modules()}
    units = {}
    for name, m in model.named_modules():
        if isinstance(m, _PackedUnit):
            units[name] = {"kind": m.kind, "bits": m.bits, "K": m.K, "G": m.G, "out": m.out_features,
                           "scheme": m.scheme, "scale_dtype": m.scale_dtype}
            if isinstance(m, QuantEmbedding) and m.tied is not None:
                units[name]["tied"] = layer_names.get(id(m.tied), "?")
            if "group_bits" in m._buffers:  # per-group widths: the map must be the plan's
                units[name]["widths"] = list(m.widths)
                units[name]["map_crc32"] = zlib.crc32(m.group_bits.cpu().numpy().tobytes())
    return units


def _check_units(found: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    if found != expected:
        diff = sorted(n for n in set(found) | set(expected) if found.get(n) != expected.get(n))
        raise PlanMismatchError(
            f"The packed units of {where} must match the plan and model they are used with, but "
            f"{len(diff)} differ: {diff[:5]}{' ...' if len(diff) > 5 else ''}. Export and load "
            f"with the plan the model was packed with, and a skeleton of the same architecture.")


def export(model_q: nn.Module, plan: BitPlan, folder: str | os.PathLike[str]) -> Path:
    """Write ``model_q`` (from :func:`~mpsearch.deploy.apply.apply`) and ``plan`` to ``folder``.

    The packed units of ``model_q`` must be exactly those of ``plan`` below 16 bits, at the
    plan's widths. Returns the folder.

    >>> # export(apply(model, plan), plan, "out/mixed")  -> out/mixed/{model.safetensors,plan.json}
    """
    import safetensors.torch

    every = _units(model_q)
    units = {n: u for n, u in every.items() if "tied" not in u}
    q = plan.quantizer
    bad = sorted(n for n in units if n not in plan.bits
                 or (units[n]["scheme"], units[n]["G"], units[n]["scale_dtype"])
                 != (q.scheme.value, q.group_size, q.scale_dtype))
    for name, value in plan.bits.items():
        widths = sorted(set(value)) if isinstance(value, tuple) else [value]
        if (widths != [16]) != (name in units) or (name in units and widths != units[name].get(
                "widths", [units[name]["bits"]])):
            bad.append(name)
    bad.extend(n for n, u in every.items() if "tied" in u and u["tied"] not in units)
    if bad:
        raise PlanMismatchError(
            f"The packed units of the model to export must be the plan's units below 16 bits, "
            f"at the plan's widths and quantizer, but {len(bad)} differ: {sorted(bad)[:5]}. "
            f"Export the model that apply(model, plan) returned, with that plan.")
    # Clones: safetensors refuses tensors that share memory (tied weights).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model_q.state_dict().items()}
    meta = {"format": FORMAT, "version": VERSION, "units": json.dumps(every, sort_keys=True)}
    arch = describe(model_q)
    if arch is not None:  # what load() rebuilds the model from when given no float model
        meta["architecture"] = json.dumps(arch, sort_keys=True, default=str)
    folder = Path(folder)
    atomic_write_bytes(folder / MODEL_FILE, safetensors.torch.save(tensors, metadata=meta))
    plan.save(folder / PLAN_FILE)
    return folder


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise DataError(f"A packed model folder must contain {MODEL_FILE}, but {path} was not "
                        f"found. Pass the folder that export() wrote.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise DataError(f"{path} must be a readable safetensors file, but reading it failed: "
                        f"{err}. Re-export the model with mpsearch.deploy.export.") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(f"{path} must be an {FORMAT!r} file of version {VERSION}, but its header "
                        f"says format={meta.get('format')!r}, version={meta.get('version')!r}. "
                        f"Re-export the model with this version of mpsearch.")
    return tensors, meta


def load(folder: str | os.PathLike[str], base_model: nn.Module | None = None,
         backend: str = "reference") -> nn.Module:
    """Rebuild the packed model saved in ``folder``.

    Without ``base_model`` the architecture recorded at export (a transformers config, or a
    built-in model's name; :mod:`mpsearch.deploy.architecture`) is built with its parameters on
    the ``meta`` device and the stored tensors become the model's, so no float weight is ever
    allocated. ``base_model`` gives the architecture instead (its weights are replaced by the
    stored ones, and it is not modified). The result's buffers equal the exported model's, so
    its outputs do too.

    >>> # q = load("out/mixed", backend="numba")
    >>> # q = load("out/mixed", load_pretrained("resnet20"), backend="torch")
    """
    folder = Path(folder)
    plan = BitPlan.load(folder / PLAN_FILE)
    tensors, meta = _read(folder / MODEL_FILE)
    if base_model is None:
        try:
            arch = json.loads(meta.get("architecture", "null"))
        except json.JSONDecodeError:
            arch = None
        target = build_packed(skeleton(arch), plan, backend, empty=True, inplace=True)
    else:
        target = build_packed(base_model, plan, backend, empty=True)
    try:
        stored_units = json.loads(meta.get("units", "null"))
    except json.JSONDecodeError:
        stored_units = None
    _check_units(stored_units if isinstance(stored_units, dict) else {}, _units(target),
                 f"{folder / MODEL_FILE}")
    state = target.state_dict()
    missing, unexpected = sorted(set(state) - set(tensors)), sorted(set(tensors) - set(state))
    wrong = sorted(k for k in set(state) & set(tensors)
                   if state[k].shape != tensors[k].shape or state[k].dtype != tensors[k].dtype)
    if missing or unexpected or wrong:
        raise PlanMismatchError(
            f"The tensors of {folder / MODEL_FILE} must match the skeleton's state dict, but "
            f"missing={missing[:5]}, unexpected={unexpected[:5]}, wrong shape or dtype="
            f"{wrong[:5]}. Pass a base model of the architecture that was exported.")
    if base_model is None:
        _assign(target, tensors)
    else:
        target.load_state_dict(tensors, strict=True)
    for unit in target.modules():
        if isinstance(unit, _PackedUnit) and not isinstance(unit, QuantEmbedding):
            dispatch.prepare(unit)  # the batch-1 weight, once, not on the first call
    return target


def _assign(target: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Make the stored tensors the model's own (no copy), keeping parameters that several
    modules share (tied embeddings left in float) shared."""
    for key, t in tensors.items():  # the allocator's 64-byte alignment, as the applied model has:
        if t.data_ptr() % 64:        # float kernels may round differently on other addresses
            tensors[key] = t.clone()
    shared: dict[int, list[str]] = {}
    for name, p in target.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(name)
    target.load_state_dict(tensors, strict=True, assign=True)
    for first, *others in (names for names in shared.values() if len(names) > 1):
        owner, _, leaf = first.rpartition(".")
        param = target.get_submodule(owner)._parameters[leaf]
        for other in others:
            owner, _, leaf = other.rpartition(".")
            target.get_submodule(owner)._parameters[leaf] = param
    left = meta_tensors(target)
    if left:
        raise PlanMismatchError(f"Every tensor of the rebuilt model must come from the file, but "
                                f"{len(left)} did not: {left[:5]}. Pass the float model: "
                                f"load(folder, base_model).")


__all__ = ["FORMAT", "MODEL_FILE", "PLAN_FILE", "VERSION", "export", "load"]
