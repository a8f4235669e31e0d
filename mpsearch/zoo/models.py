"""Pretrained CIFAR-10 ResNets by name.

The weights are the published checkpoints of akamaster/pytorch_resnet_cifar10
(BSD-2-Clause). ResNet-20 is embedded in the package so the zoo works without
a data folder; the deeper ones are read from a data folder holding the
original ``.th`` files. Loading is strict, so an architecture that drifts from
the checkpoint fails loudly instead of silently evaluating random weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mpsearch.core.errors import DataError, UnknownNameError
from mpsearch.zoo.resnet import cifar_resnet

__all__ = ["CHECKPOINT_FILES", "EMBEDDED_RESNET20", "MODEL_NAMES", "load_pretrained"]

#: Names accepted by :func:`load_pretrained`.
MODEL_NAMES: tuple[str, ...] = ("resnet20", "resnet32", "resnet44", "resnet56")

#: Original checkpoint file name of each model, as found in a data folder.
CHECKPOINT_FILES: dict[str, str] = {
    "resnet20": "resnet20-12fca82f.th",
    "resnet32": "resnet32-d509ac18.th",
    "resnet44": "resnet44-014dd654.th",
    "resnet56": "resnet56-4bfd9763.th",
}

#: The embedded ResNet-20 weights: a plain float32 state_dict without the ``module.`` prefix.
EMBEDDED_RESNET20 = Path(__file__).resolve().parent / "assets" / "resnet20_cifar10.pt"

_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (``weights_only=True``) and return a plain state_dict.

    Accepts either the original format (a dict with ``state_dict`` whose keys carry the
    ``module.`` prefix of ``nn.DataParallel``) or a bare state_dict; the prefix is stripped.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt files
        # Only torch's first line: the rest advises weights_only=False, which we never want.
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(
            f"A checkpoint must be a torch file loadable with weights_only=True, but {path} "
            f"failed to load ({type(exc).__name__}: {reason}). Replace it with the original file."
        ) from exc
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        raise DataError(
            f"A checkpoint must hold a state_dict of tensors, but {path} holds "
            f"{type(checkpoint).__name__}. Replace it with the original file."
        )
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def _checkpoint_path(name: str, data_dir: str | os.PathLike[str] | None) -> Path:
    """Where to read ``name``'s weights from: the data folder, else the embedded asset."""
    file_name = CHECKPOINT_FILES[name]
    if data_dir is not None:
        candidate = Path(data_dir) / file_name
        if candidate.is_file():
            return candidate
        if os.path.lexists(candidate):  # a folder or a dangling link is a mistake, not an absent file
            kind = "a directory" if candidate.is_dir() else "not a readable file"
            fallback = ", or remove it to use the embedded weights" if name == "resnet20" else ""
            raise DataError(
                f"A checkpoint must be a regular file, but {candidate} is {kind}. Replace it with the original "
                f"{file_name}{fallback}."
            )
    if name == "resnet20" and EMBEDDED_RESNET20.is_file():
        return EMBEDDED_RESNET20
    where = "no data folder was given" if data_dir is None else f"{Path(data_dir)} lacks it"
    raise DataError(
        f"Model {name!r} needs its checkpoint {file_name}, but {where}. Pass --data-dir "
        f"(data_dir=...) pointing at a folder that contains {file_name}."
    )


def load_pretrained(name: str, data_dir: str | os.PathLike[str] | None = None) -> nn.Module:
    """Build a pretrained CIFAR-10 ResNet in eval mode.

    Args:
        name: One of :data:`MODEL_NAMES`.
        data_dir: Folder holding the original checkpoint files. ResNet-20 falls back to the
            embedded weights when the folder is None or lacks its file; the others need it.

    Example:
        >>> model = load_pretrained("resnet20")
        >>> model.training
        False
    """
    if name not in _DEPTHS:
        raise UnknownNameError(
            f"`name` must be a known pretrained model, but got name={name!r}. "
            f"Pass one of: {', '.join(MODEL_NAMES)}."
        )
    path = _checkpoint_path(name, data_dir)
    model = cifar_resnet(_DEPTHS[name])
    try:
        model.load_state_dict(read_state_dict(path), strict=True)
    except RuntimeError as exc:
        raise DataError(
            f"The checkpoint for {name!r} must match the CIFAR ResNet-{_DEPTHS[name]} layout, "
            f"but {path} does not: {exc}. Replace it with the original file."
        ) from exc
    return model.eval()
