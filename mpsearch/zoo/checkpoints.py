"""A user's own CIFAR ResNet checkpoint: a state_dict by default, a pickled module only when trusted.

``torch.load`` of a pickled module runs whatever code the file names, so a whole module is loaded
only with ``trust_pickle=True`` (``--trust-pickle``). A state_dict (tensors only, read with
``weights_only=True``) is loaded strictly into a CIFAR ResNet of the given depth; a mismatch says
which keys or shapes differ and, when the keys belong to another depth, which one.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mpsearch.core.errors import DataError, UnknownNameError
from mpsearch.zoo.models import MODEL_NAMES
from mpsearch.zoo.resnet import cifar_resnet

__all__ = ["load_model_file"]


def _depth(name: str) -> int:
    if name not in MODEL_NAMES:
        raise UnknownNameError(f"`model` must name the architecture of the checkpoint, one of {', '.join(MODEL_NAMES)}, "
                               f"but got {name!r}. Pass e.g. --model resnet20.")
    return int(name.removeprefix("resnet"))


def _depth_of_keys(keys: list[str]) -> int | None:
    """The CIFAR ResNet depth whose stage-1 blocks the keys name (6n + 2), or None."""
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"layer1\.(\d+)\.", k))}
    return 6 * len(blocks) + 2 if blocks else None


def _state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"a model file must hold a state_dict of tensors (or a whole module, with --trust-pickle), but "
                        f"{path} holds {type(obj).__name__}. Save model.state_dict() with torch.save.")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def load_model_file(path: str | os.PathLike[str], model: str = "resnet20", *, trust_pickle: bool = False) -> nn.Module:
    """The model in ``path``, in eval mode: a CIFAR ResNet of architecture ``model`` filled from a
    state_dict, or (only with ``trust_pickle``) the pickled module itself.

    >>> # net = load_model_file("my_resnet20.pt", "resnet20")
    """
    path = Path(path)
    depth = _depth(model)
    if not path.is_file():
        raise DataError(f"a model file must be an existing file, but {path} is not. Pass the path of a torch checkpoint.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if named is None:  # torch's safe unpickler met something other than a Python object it may not build
            raise DataError(f"a model file must be a torch checkpoint, but {path} is not one torch can read. Save it "
                            "with torch.save(model.state_dict(), path).") from exc
        if not trust_pickle:  # Python objects beyond tensors: a pickled module, or worse
            raise DataError(
                f"a model file is read as a state_dict (tensors only) unless pickles are trusted, but {path} holds other "
                f"Python objects ({named.group(1)}: a pickled module?), and loading them runs code named in the file. Save "
                "model.state_dict() instead, or pass --trust-pickle (trust_pickle=True) if you trust the file."
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # unpickling can raise anything the pickled code raises
            raise DataError(f"a trusted model file must unpickle, but {path} failed: {type(exc).__name__}: "
                            f"{str(exc)[:200]}. Re-save it with torch.save(model, path).") from exc
    except Exception as exc:  # not a torch file at all: torch raises several unrelated types
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(f"a model file must be a torch checkpoint, but {path} failed to load ({type(exc).__name__}: "
                        f"{reason}). Save it with torch.save(model.state_dict(), path).") from exc
    if isinstance(obj, nn.Module):
        return obj.eval()
    state = _state_dict(obj, path)
    net = cifar_resnet(depth)
    missing, unexpected, shapes = [], [], []
    expected = net.state_dict()
    for key, value in expected.items():
        if key not in state:
            missing.append(key)
        elif tuple(state[key].shape) != tuple(value.shape):
            shapes.append(f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}")
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected or shapes:
        found = _depth_of_keys(list(state))
        hint = (f"The keys are those of a ResNet-{found}: pass --model resnet{found}." if found and found != depth
                and f"resnet{found}" in MODEL_NAMES else f"Pass the state_dict of a CIFAR ResNet-{depth}.")
        problems = "; ".join(f"{label} {items[:3]}{' ...' if len(items) > 3 else ''}" for label, items in
                             (("missing", missing), ("unexpected", unexpected), ("shapes differ", shapes)) if items)
        raise DataError(f"a model file must match the CIFAR ResNet-{depth} layout of --model {model}, but {path} does "
                        f"not: {problems}. {hint}")
    net.load_state_dict(state, strict=True)
    return net.eval()
