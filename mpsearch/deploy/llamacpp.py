"""Build and run llama.cpp's tools: llama-quantize, llama-perplexity, llama-bench, llama-imatrix.

llama.cpp is built from source, from the PyPI source distribution of ``llama-cpp-python``, which
vendors the whole llama.cpp tree. :func:`build_tools` downloads it with pip into a cache folder
(``$MPSEARCH_CACHE/llama.cpp``, default ``~/.cache/mpsearch/llama.cpp``), configures it with
cmake (no curl, tests, examples or server) and builds only the four tools; a second call finds
them and does nothing. Nothing is built at import time. :func:`find_tools` uses a given folder,
then ``$MPSEARCH_LLAMACPP_BIN``, then the cache.

The runners return parsed figures: :func:`perplexity` the final perplexity (and, against a
``--kl-divergence-base`` file, the mean KL divergence in nats), :func:`bench` tokens per second.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from mpsearch.core.errors import DataError, MissingDependencyError, MPSearchError

__all__ = ["TOOLS", "LlamaCppError", "PerplexityResult", "bench", "build_tools", "find_tools", "imatrix",
           "perplexity", "quantize"]

TOOLS = ("llama-quantize", "llama-perplexity", "llama-bench", "llama-imatrix")


class LlamaCppError(MPSearchError, RuntimeError):
    """A llama.cpp tool failed or printed nothing that could be parsed; the message holds its output's tail."""


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("MPSEARCH_CACHE")
    return Path(root) / "llama.cpp" if root else Path.home() / ".cache" / "mpsearch" / "llama.cpp"


def _has_tools(folder: Path) -> bool:
    return all((folder / t).is_file() and os.access(folder / t, os.X_OK) for t in TOOLS)


def find_tools(bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the four tools: ``bin_dir``, else ``$MPSEARCH_LLAMACPP_BIN``, else the build cache.

    Raises :class:`MissingDependencyError` naming :func:`build_tools` when none has them.
    """
    tried = [Path(p) for p in (bin_dir, os.environ.get("MPSEARCH_LLAMACPP_BIN")) if p]
    tried.append(_cache_dir(None) / "build" / "bin")
    for folder in tried:
        if _has_tools(folder):
            return folder
    raise MissingDependencyError(
        f"llama.cpp's tools {list(TOOLS)} must be in one folder, but none of {[str(p) for p in tried]} has them. "
        "Build them once with mpsearch.deploy.llamacpp.build_tools(), or set MPSEARCH_LLAMACPP_BIN to a build's bin folder.")


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    except FileNotFoundError:
        raise MissingDependencyError(f"{what} needs `{cmd[0]}` on PATH, but it was not found. Install it.") from None
    output = done.stdout + done.stderr
    if done.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-8:])
        raise LlamaCppError(f"{what} must succeed, but `{' '.join(cmd[:3])} ...` exited with {done.returncode}:\n{tail}")
    return output


def build_tools(cache_dir: str | os.PathLike[str] | None = None, *, jobs: int = 2) -> Path:
    """Download llama.cpp (the ``llama-cpp-python`` source distribution) and build the four tools once.

    Returns the folder of the binaries. Needs pip, cmake and a C++ compiler; a missing one is a
    :class:`MissingDependencyError` naming it.
    """
    root = _cache_dir(cache_dir)
    out = root / "build" / "bin"
    if _has_tools(out):
        return out
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise MissingDependencyError(f"building llama.cpp needs `{tool}`, but it is not on PATH. "
                                         "Install cmake and a C++ compiler (e.g. apt-get install cmake g++).")
    root.mkdir(parents=True, exist_ok=True)
    sdists = sorted(root.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        _run(["python3", "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "llama-cpp-python",
              "-d", str(root)], "downloading llama-cpp-python's source")
        sdists = sorted(root.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        raise DataError(f"pip must download a llama_cpp_python-*.tar.gz into {root}, but none is there. "
                        "Download it by hand into that folder.")
    src = root / "src"
    if not (src / "CMakeLists.txt").is_file():
        with tarfile.open(sdists[-1]) as archive:
            top = archive.getnames()[0].split("/")[0]
            archive.extractall(root / "unpacked", filter="data")
        (root / "unpacked" / top / "vendor" / "llama.cpp").rename(src)
    build = root / "build"
    _run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
          "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"], "configuring llama.cpp")
    _run(["cmake", "--build", str(build), "-j", str(jobs), "--target", *TOOLS], "building llama.cpp")
    if not _has_tools(out):
        raise LlamaCppError(f"the build must leave {list(TOOLS)} in {out}, but they are missing. Check the cmake output.")
    return out


def quantize(source: str | os.PathLike[str], out: str | os.PathLike[str], base_type: str, *,
             tensor_type_file: str | os.PathLike[str] | None = None, imatrix_file: str | os.PathLike[str] | None = None,
             pure: bool = False, threads: int = 2, bin_dir: str | os.PathLike[str] | None = None) -> str:
    """Run llama-quantize ``source`` -> ``out`` at ``base_type`` (e.g. ``Q4_K_M``, ``Q8_0``, ``F32``); its log.

    ``--allow-requantize`` is always passed, so an already quantized file can be the source.
    ``pure`` (``--pure``) gives every weight the base type, not llama.cpp's mix (a row length the type
    cannot take still gets llama.cpp's fallback).
    """
    cmd = [str(find_tools(bin_dir) / "llama-quantize"), "--allow-requantize"] + (["--pure"] if pure else [])
    if tensor_type_file is not None:
        cmd += ["--tensor-type-file", str(tensor_type_file)]
    if imatrix_file is not None:
        cmd += ["--imatrix", str(imatrix_file)]
    cmd += [str(source), str(out), base_type, str(threads)]
    return _run(cmd, f"llama-quantize to {base_type}")


@dataclass(frozen=True)
class PerplexityResult:
    """llama-perplexity's final estimate, its error, and the mean KL divergence (nats) when a base was given."""

    perplexity: float
    error: float
    kl_divergence: float | None
    chunks: int
    ctx: int


_FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
_PPL_KLD = re.compile(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)\s*±\s*([0-9.]+)")
_KLD = re.compile(r"Mean\s+KLD:\s*(-?[0-9.]+)")


def perplexity(model: str | os.PathLike[str], text_file: str | os.PathLike[str], *, ctx: int = 256, chunks: int = 8,
               kl_base: str | os.PathLike[str] | None = None, write_kl_base: bool = False, threads: int = 2,
               bin_dir: str | os.PathLike[str] | None = None) -> PerplexityResult:
    """llama-perplexity on the first ``chunks`` windows of ``ctx`` tokens of ``text_file``.

    With ``kl_base`` and ``write_kl_base``, the run saves the model's logits there (the reference);
    with ``kl_base`` alone it reads them and adds the mean KL divergence against them.
    """
    cmd = [str(find_tools(bin_dir) / "llama-perplexity"), "-m", str(model), "-f", str(text_file), "-c", str(ctx),
           "--chunks", str(chunks), "-t", str(threads)]
    if kl_base is not None:
        cmd += ["--kl-divergence-base", str(kl_base)] + ([] if write_kl_base else ["--kl-divergence"])
    output = _run(cmd, "llama-perplexity")
    final = _FINAL.search(output) or _PPL_KLD.search(output)
    kld = _KLD.search(output) if kl_base is not None and not write_kl_base else None
    if final is None or (kl_base is not None and not write_kl_base and kld is None):
        tail = "\n".join(output.strip().splitlines()[-6:])
        raise LlamaCppError(f"llama-perplexity must print a final estimate, but its output ends with:\n{tail}")
    return PerplexityResult(float(final.group(1)), float(final.group(2)),
                            float(kld.group(1)) if kld else None, chunks, ctx)


def bench(model: str | os.PathLike[str], *, prompt: int = 64, gen: int = 32, repetitions: int = 2, threads: int = 2,
          bin_dir: str | os.PathLike[str] | None = None) -> dict[str, float]:
    """llama-bench tokens/s: ``{"pp": prompt processing, "tg": generation}`` (means over repetitions)."""
    cmd = [str(find_tools(bin_dir) / "llama-bench"), "-m", str(model), "-p", str(prompt), "-n", str(gen),
           "-r", str(repetitions), "-t", str(threads), "-o", "json"]
    output = _run(cmd, "llama-bench")
    try:
        rows = json.loads(output[output.index("["): output.rindex("]") + 1])
    except ValueError:
        raise LlamaCppError(f"llama-bench must print a JSON list, but printed: {output[-300:]!r}") from None
    speeds = {}
    for row in rows:
        speeds["pp" if row.get("n_prompt", 0) else "tg"] = float(row["avg_ts"])
    return speeds


def imatrix(model: str | os.PathLike[str], text_file: str | os.PathLike[str], out: str | os.PathLike[str], *,
            ctx: int = 256, chunks: int = 16, threads: int = 2, bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """llama-imatrix: an importance matrix of ``model`` on ``text_file``, written to ``out``."""
    _run([str(find_tools(bin_dir) / "llama-imatrix"), "-m", str(model), "-f", str(text_file), "-o", str(out),
          "-c", str(ctx), "--chunks", str(chunks), "-t", str(threads)], "llama-imatrix")
    if not Path(out).is_file():
        raise LlamaCppError(f"llama-imatrix must write {out}, but it did not. Check its output.")
    return Path(out)
