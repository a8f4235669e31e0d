"""Regenerate the embedded zoo assets from the original published files.

Run from the repository root::

    python -m mpsearch.zoo.make_assets --data-dir DATA

It writes into ``mpsearch/zoo/assets/``:

* ``resnet20_cifar10.pt``: the ResNet-20 checkpoint of akamaster/pytorch_resnet_cifar10 as a
  plain float32 state_dict without the ``module.`` prefix (loads with ``weights_only=True``);
* ``cifar10_test_first1000.npz``: the first 1000 CIFAR-10 test images and labels;
* ``README.md``: credits and the sha256 of each asset, so the provenance can be checked.

The script exists so the embedded bytes are reproducible from their sources rather than
trusted as opaque blobs.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mpsearch.zoo.data import CIFAR10_FILE, EMBEDDED_CIFAR10, load_cifar10
from mpsearch.zoo.models import CHECKPOINT_FILES, EMBEDDED_RESNET20, read_state_dict

ASSETS_DIR = EMBEDDED_CIFAR10.parent
NUM_EMBEDDED_IMAGES = 1000

_README = """# Embedded zoo assets

Small real data shipped inside the package so `mpsearch.zoo` works without a data folder.
Regenerate with `python -m mpsearch.zoo.make_assets --data-dir <folder with the originals>`.

| file | content | sha256 |
|---|---|---|
| `{weights}` | {weights_what} | `{weights_sha}` |
| `{images}` | {images_what} | `{images_sha}` |

## Credits
- ResNet-20 weights: from the public repository
  [akamaster/pytorch_resnet_cifar10](https://github.com/akamaster/pytorch_resnet_cifar10)
  by Yerlan Idelbayev, file `pretrained_models/{source_ckpt}`
  (sha256 `{source_sha}`),
  BSD-2-Clause license (text below). Re-saved with values unchanged as a plain state_dict
  (prefix `module.` removed, float32).
- Images: the CIFAR-10 dataset, Alex Krizhevsky, "Learning Multiple Layers of Features from
  Tiny Images", technical report, University of Toronto, 2009. The first {n} images of the test
  set in canonical order, taken from `{source_npz}`.

## License of the ResNet-20 weights (BSD-2-Clause, reproduced as it requires)

Copyright (c) 2018, Yerlan Idelbayev

Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this list of
   conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice, this list of
   conditions and the following disclaimer in the documentation and/or other materials provided
   with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER
IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT
OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_assets(data_dir: Path, out_dir: Path = ASSETS_DIR) -> dict[str, str]:
    """Write the embedded assets from the originals in ``data_dir``; return name -> sha256."""
    out_dir.mkdir(parents=True, exist_ok=True)
    source_ckpt = data_dir / CHECKPOINT_FILES["resnet20"]
    state = {k: v.to(torch.float32).contiguous() for k, v in read_state_dict(source_ckpt).items()}
    weights_path = out_dir / EMBEDDED_RESNET20.name
    torch.save(state, weights_path)

    images, labels = load_cifar10(data_dir, limit=NUM_EMBEDDED_IMAGES)
    images_path = out_dir / EMBEDDED_CIFAR10.name
    np.savez_compressed(
        images_path,
        images=np.ascontiguousarray(images, dtype=np.uint8),
        labels=np.ascontiguousarray(labels, dtype=np.int64),
    )

    hashes = {p.name: sha256_file(p) for p in (weights_path, images_path)}
    n_params = sum(v.numel() for k, v in state.items() if "running_" not in k)
    readme = _README.format(
        weights=weights_path.name,
        weights_what=f"ResNet-20 CIFAR-10 state_dict ({n_params:,} parameters, float32)",
        weights_sha=hashes[weights_path.name],
        images=images_path.name,
        images_what=(
            f"`images` uint8 ({NUM_EMBEDDED_IMAGES}, 32, 32, 3) HWC RGB, "
            f"`labels` int64 ({NUM_EMBEDDED_IMAGES},)"
        ),
        images_sha=hashes[images_path.name],
        source_ckpt=source_ckpt.name,
        source_sha=sha256_file(source_ckpt),
        n=NUM_EMBEDDED_IMAGES,
        source_npz=CIFAR10_FILE,
    )
    (out_dir / "README.md").write_text(readme, encoding="utf-8")
    return hashes


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the sha256 of each written asset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help=f"folder holding {CHECKPOINT_FILES['resnet20']} and {CIFAR10_FILE}",
    )
    parser.add_argument("--out-dir", type=Path, default=ASSETS_DIR, help="where to write assets")
    args = parser.parse_args(argv)
    for name, digest in make_assets(args.data_dir, args.out_dir).items():
        print(f"{digest}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
