"""Text for causal language models: paragraphs, the standard prose split, fixed-length token windows.

The recipe is the one GPTQ-family papers use for WikiText-2: tokenize the text once, concatenate
it into one token stream, and cut that stream into non-overlapping windows of ``seq_len``
tokens (the tail shorter than a window is dropped). Paragraphs are joined with the tokenizer's
end-of-sequence token by default, so no window silently runs one paragraph into the next; pass
``separator="\\n\\n"`` to join them as WikiText-2 is joined. The choice moves perplexity: on the
held-out abstracts (quantization_abstracts.txt, lines 400 on), SmolLM2-135M-Instruct gives 44.3
with its EOS (the chat token ``<|im_end|>``) between sentences and 36.5 with a newline. No BOS
token is added to a window: every window is a plain slice of the stream.

``python_docs_prose.txt`` (4,365 paragraphs of Python documentation prose, one a line; see the
data folder's README) plays WikiText-2's part. Its standard split: calibration from the lines
whose index modulo 10 is not 9, evaluation (perplexity) on the lines whose index modulo 10 is 9,
so both parts cover every document.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mpsearch.core.errors import ConfigError, DataError

__all__ = ["PROSE_FILE", "PROSE_PARTS", "ByteTokenizer", "load_prose", "read_paragraphs", "split_lines", "text_windows"]

#: The English prose corpus file name inside a data folder.
PROSE_FILE = "python_docs_prose.txt"
#: The two parts of the standard split.
PROSE_PARTS = ("calibration", "evaluation")


def read_paragraphs(path: str | os.PathLike[str]) -> list[str]:
    """The lines of a UTF-8 text file, one paragraph a line, in file order (blank lines kept as "").

    Blank lines are kept so that line indices, and hence :func:`split_lines`, match the file.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"the text file must exist, but {file} was not found. Pass --data-dir pointing at a folder "
                        f"that holds {PROSE_FILE}, or the path of a text file.")
    return file.read_text(encoding="utf-8").splitlines()


def split_lines(lines: Sequence[str], part: str) -> list[str]:
    """The standard split: ``"calibration"`` keeps lines whose index % 10 != 9, ``"evaluation"`` the others.

    Blank lines are dropped after the split.

    >>> split_lines([f"p{i}" for i in range(20)], "evaluation")
    ['p9', 'p19']
    """
    if part not in PROSE_PARTS:
        raise ConfigError(f"`part` must be one of {PROSE_PARTS}, but got part={part!r}. Pass 'calibration' or 'evaluation'.")
    held_out = part == "evaluation"
    return [line for i, line in enumerate(lines) if (i % 10 == 9) == held_out and line.strip()]


def load_prose(data_dir: str | os.PathLike[str], part: str) -> list[str]:
    """One part of ``<data_dir>/python_docs_prose.txt`` under the standard split (:func:`split_lines`)."""
    return split_lines(read_paragraphs(Path(data_dir).expanduser() / PROSE_FILE), part)


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255, end of sequence 256: a tokenizer that needs no files.

    It has the two things :func:`text_windows` uses from a Hugging Face tokenizer (calling it on
    a list of texts, and ``eos_token_id``), and fits :func:`mpsearch.zoo.llm.tiny_decoder`'s
    default vocabulary of 260.
    """

    eos_token_id = 256

    def __call__(self, texts: Sequence[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [list(text.encode("utf-8")) for text in texts]}


def token_stream(tokenizer: Any, texts: Sequence[str], separator: int | str | None = None) -> torch.Tensor:
    """All texts tokenized in one call and joined with ``separator`` between them: a token id, a string
    (tokenized on its own, e.g. "\\n\\n" as WikiText-2 is joined) or None for the tokenizer's EOS."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence) or not texts \
            or not all(isinstance(t, str) for t in texts):
        raise DataError(f"`texts` must be a non-empty sequence of str, but got {type(texts).__name__}. "
                        "Pass e.g. load_prose(data_dir, 'calibration'), or read_paragraphs(path).")
    sep = getattr(tokenizer, "eos_token_id", None) if separator is None else separator
    sep_ids = tokenizer([sep], add_special_tokens=False)["input_ids"][0] if isinstance(sep, str) else [sep]
    if not sep_ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in sep_ids):
        raise ConfigError(f"the separator between texts must be a token id >= 0 or a non-empty string, but got {sep!r} "
                          "(None: the tokenizer has no eos_token_id). Pass separator=<token id> or e.g. separator='\\n\\n'.")
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for i, piece in enumerate(encoded):
        if i:
            ids.extend(sep_ids)
        ids.extend(piece)
    return torch.tensor(ids, dtype=torch.int64)


def text_windows(tokenizer: Any, texts: Sequence[str], seq_len: int, n: int | None = None, seed: int = 0, *,
                 separator: int | str | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``seq_len`` tokens from the texts: an int64 tensor (n, seq_len).

    The texts are tokenized once (no special tokens), joined with ``separator`` (default:
    ``tokenizer.eos_token_id``; a string is tokenized on its own) between consecutive texts, and
    the stream is cut at multiples of ``seq_len``; the last, partial window is dropped. ``n=None`` returns every window in stream
    order; ``n=k`` returns k distinct windows chosen at random with ``seed``, in stream order.

    >>> from mpsearch.zoo.text import ByteTokenizer
    >>> text_windows(ByteTokenizer(), ["abcd", "ef"], seq_len=3).tolist()
    [[97, 98, 99], [100, 256, 101]]
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ConfigError(f"`seq_len` must be an integer of at least 2 (one token to predict from another), but got "
                          f"seq_len={seq_len!r}. Pass e.g. 256.")
    stream = token_stream(tokenizer, texts, separator)
    available = len(stream) // seq_len
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"`n` must be a positive number of windows or None for all, but got n={n!r}. Pass e.g. 32.")
    if available == 0 or (n is not None and n > available):
        raise DataError(f"the text must hold {n or 1} window(s) of {seq_len} tokens, but its {len(stream)} tokens make "
                        f"{available}. Pass more text, a smaller seq_len or n <= {available}.")
    windows = stream[: available * seq_len].reshape(available, seq_len)
    if n is None:
        return windows
    chosen = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:n]
    return windows[chosen.sort().values].clone()
