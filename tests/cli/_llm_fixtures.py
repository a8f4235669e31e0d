"""A tiny causal LM saved as a model folder, with a character tokenizer, and a text file to calibrate on."""

from __future__ import annotations

import random
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def char_tokenizer():
    """A real transformers fast tokenizer, one token per letter (anything else is <unk>), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(LETTERS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="</s>")


def save_tiny_lm(folder: Path, seed: int = 0) -> Path:
    """``tiny_decoder`` (2 blocks, vocabulary 28) and its tokenizer, as ``save_pretrained`` writes them."""
    from mpsearch.zoo.llm import tiny_decoder

    tiny_decoder(seed=seed, vocab_size=28).save_pretrained(str(folder))
    char_tokenizer().save_pretrained(str(folder))
    return folder


def write_text(path: Path, lines: int = 200, words: int = 8, seed: int = 0) -> Path:
    """``lines`` paragraphs of seeded pseudo-words: every tenth one is held out by the standard split."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 6))) for _ in range(60)]
    path.write_text("\n".join(" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(lines)) + "\n",
                    encoding="utf-8")
    return path
