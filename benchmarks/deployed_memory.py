"""Resident memory of loading one model, measured in a fresh process (run by deployed.py).

    python benchmarks/deployed_memory.py fp32 resnet20|minilm|smollm2
    python benchmarks/deployed_memory.py packed FOLDER numba|torch   # export.load, no float model
    python benchmarks/deployed_memory.py numba-runtime               # Numba alone: no model

Prints one JSON line: ``rss_imports_mib`` (after importing torch, transformers and mpsearch),
``rss_loaded_mib`` (after loading and one forward) and ``peak_mib`` (the process's high-water
mark, ``VmHWM``), so ``peak_mib - rss_imports_mib`` is what loading and running cost; that
cost split into anonymous memory (``RssAnon``: tensors, Python objects) and file-backed pages
(``RssFile``: library code paged in by the ops a model runs first, safetensors files mapped by
the float loaders), after loading and one forward. The
``numba`` backend also loads Numba and its compiled kernels (LLVM), whatever the model:
``numba-runtime`` measures that alone (import Numba, run one disk-cached decoding kernel on a
few bytes). ``torch`` runs the same packed model on PyTorch ops only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident MiB now (VmRSS), at its peak (VmHWM), or of one kind (RssAnon,
    RssFile). Not ``ru_maxrss``: a child started from a large parent inherits the parent's
    high-water mark there."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fp32_model(name: str):
    if name == "resnet20":
        from mpsearch.zoo.models import load_pretrained

        return load_pretrained("resnet20")
    if name == "minilm":
        from mpsearch.zoo.minilm import load_minilm

        return load_minilm()[0]
    from mpsearch.zoo.llm import load_smollm2

    return load_smollm2()[0]


def probe(model):
    import torch

    if type(model).__name__ == "CifarResNet":
        return model(torch.zeros(1, 3, 32, 32))
    return model(input_ids=torch.ones(1, 8, dtype=torch.long))


def numba_runtime() -> None:
    """What any model on the ``numba`` backend pays first: Numba imported, LLVM started, one
    compiled kernel loaded from the disk cache and run."""
    import numpy as np

    from mpsearch.kernels.numba_cpu import _numba_module

    kernel = _numba_module("_numba_dequant").make_dequantize(4, False)
    kernel(np.zeros((1, 2), np.uint8), np.ones((1, 1), np.float32), np.zeros((1, 1), np.uint8), 4,
           np.empty((1, 4), np.float32))


def main() -> int:
    import torch
    import transformers  # noqa: F401  (imported by both kinds; counted in the baseline)

    from mpsearch.deploy.export import load

    kind = sys.argv[1]
    base, anon, file = rss_mib(), rss_mib("RssAnon"), rss_mib("RssFile")
    if kind == "numba-runtime":
        numba_runtime()
    else:
        with torch.inference_mode():
            model = fp32_model(sys.argv[2]) if kind == "fp32" else load(sys.argv[2],
                                                                        backend=sys.argv[3])
            probe(model)
    doc = {"kind": kind, "rss_imports_mib": round(base, 1), "rss_loaded_mib": round(rss_mib(), 1),
           "peak_mib": round(rss_mib("VmHWM"), 1),
           "anon_over_imports_mib": round(rss_mib("RssAnon") - anon, 1),
           "file_over_imports_mib": round(rss_mib("RssFile") - file, 1)}
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
