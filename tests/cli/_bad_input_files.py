"""File contents for the bad-input corpus, made from the declarative specs of bad_inputs/cases.json.

A spec is a string (the file's text) or a dict with one of these keys:

* ``text`` / ``hex``: literal text, or bytes written as hex;
* ``copy``: a file of the bad_inputs folder, byte for byte;
* ``json``: a JSON file of the bad_inputs folder, with ``set`` (key paths such as ``bits/conv1`` -> new values) and
  ``delete`` (key paths) applied;
* ``cifar``: a CIFAR-10 npz made of the first images of the embedded set, bent by the options
  of :func:`cifar_npz`;
* ``checkpoint``: a torch checkpoint, see :func:`checkpoint`;
* ``of`` with ``keep`` (a fraction: truncate) or ``zero`` (a fraction: 64 bytes zeroed there):
  damage the bytes of another spec.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np


def _apply(doc: Any, sets: dict[str, Any], deletes: list[str]) -> Any:
    for dotted, value in sets.items():
        *parents, last = dotted.split("/")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    for dotted in deletes:
        *parents, last = dotted.split("/")
        node = doc
        for key in parents:
            node = node[key]
        del node[last]
    return doc


def cifar_npz(n: int = 8, *, image_dtype: str = "uint8", layout: str = "nhwc", label_dtype: str = "int64",
              label_value: int | None = None, labels_len: int | None = None, drop: str | None = None,
              object_labels: bool = False, compressed: bool = False) -> bytes:
    from mpsearch.zoo.data import load_cifar10

    images, labels = load_cifar10(limit=n)
    images = images.astype(image_dtype)
    if layout == "nchw":
        images = images.transpose(0, 3, 1, 2)
    labels = labels.astype(label_dtype)
    if label_value is not None:
        labels[-1] = label_value
    if labels_len is not None:
        labels = labels[:labels_len]
    arrays = {"images": images, "labels": np.array(list(labels), dtype=object) if object_labels else labels}
    if drop:
        del arrays[drop]
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


class Opaque:
    """A class a weights-only checkpoint loader must refuse to unpickle."""


def checkpoint(depth: int = 20, *, content: str = "original") -> bytes:
    """ResNet-20 weights in the original layout (``state_dict`` with the ``module.`` prefix), or a bent variant."""
    import torch

    from mpsearch.zoo.models import EMBEDDED_RESNET20

    state = torch.load(EMBEDDED_RESNET20, weights_only=True)
    if content == "missing_key":
        state.pop("linear.weight")
    if content == "wrong_shape":
        state["linear.weight"] = torch.zeros(7, state["linear.weight"].shape[1])
    obj: Any = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    if content == "not_tensors":
        obj = {"state_dict": {"conv1.weight": [1, 2, 3]}}
    if content == "object":
        obj = {"state_dict": Opaque()}
    if content == "list":
        obj = [1, 2, 3]
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def make_file(spec: Any, folder: Path) -> bytes:
    """The bytes of one file of a case."""
    if isinstance(spec, str):
        return spec.encode()
    if "text" in spec:
        return spec["text"].encode()
    if "hex" in spec:
        return bytes.fromhex(spec["hex"])
    if "copy" in spec:
        return (folder / spec["copy"]).read_bytes()
    if "json" in spec:
        doc = _apply(json.loads((folder / spec["json"]).read_text()), spec.get("set", {}), spec.get("delete", []))
        return json.dumps(doc).encode()
    if "cifar" in spec:
        return cifar_npz(**spec["cifar"])
    if "checkpoint" in spec:
        return checkpoint(**spec["checkpoint"])
    if "of" in spec:
        data = bytearray(make_file(spec["of"], folder))
        if "keep" in spec:
            return bytes(data[: int(len(data) * spec["keep"])])
        at = int(len(data) * spec["zero"])
        data[at : at + 64] = bytes(len(data[at : at + 64]))
        return bytes(data)
    raise ValueError(f"unknown file spec {spec!r}")
