"""Token windows from text and the standard prose split."""

from __future__ import annotations

import pytest
import torch

from mpsearch.core.errors import ConfigError, DataError
from mpsearch.zoo.text import PROSE_FILE, ByteTokenizer, load_prose, read_paragraphs, split_lines, text_windows

TEXTS = [f"paragraph number {i} of the test text." for i in range(40)]


def test_windows_are_the_stream_cut_at_multiples_of_seq_len():
    tok = ByteTokenizer()
    stream = []
    for i, text in enumerate(TEXTS):
        stream += ([256] if i else []) + list(text.encode())
    windows = text_windows(tok, TEXTS, seq_len=50)
    assert windows.dtype == torch.int64 and windows.shape == (len(stream) // 50, 50)
    assert windows.reshape(-1).tolist() == stream[: windows.numel()]  # tail shorter than a window dropped


def test_chosen_windows_are_seeded_distinct_and_in_stream_order():
    every = text_windows(ByteTokenizer(), TEXTS, seq_len=20)
    a = text_windows(ByteTokenizer(), TEXTS, seq_len=20, n=10, seed=0)
    assert torch.equal(a, text_windows(ByteTokenizer(), TEXTS, seq_len=20, n=10, seed=0))
    assert not torch.equal(a, text_windows(ByteTokenizer(), TEXTS, seq_len=20, n=10, seed=1))
    rows = [next(i for i in range(len(every)) if torch.equal(every[i], w)) for w in a]
    assert rows == sorted(set(rows)) and len(rows) == 10


def test_separator_override_and_missing_eos():
    class NoEos:
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[1, 2] for _ in texts]}

    assert text_windows(NoEos(), ["a", "b"], seq_len=5, separator=9).tolist() == [[1, 2, 9, 1, 2]]
    assert text_windows(ByteTokenizer(), ["a", "b"], seq_len=4, separator="\n\n").tolist() == [[97, 10, 10, 98]]
    with pytest.raises(ConfigError, match="no eos_token_id"):
        text_windows(NoEos(), ["a", "b"], seq_len=5)


def test_bad_arguments_say_what_to_pass():
    with pytest.raises(DataError, match="sequence of str"):
        text_windows(ByteTokenizer(), "one string", seq_len=4)
    with pytest.raises(ConfigError, match="at least 2"):
        text_windows(ByteTokenizer(), TEXTS, seq_len=1)
    with pytest.raises(DataError, match=r"makes? \d+.*n <= "):
        text_windows(ByteTokenizer(), TEXTS, seq_len=100, n=1000)
    with pytest.raises(ConfigError, match="positive number of windows"):
        text_windows(ByteTokenizer(), TEXTS, seq_len=8, n=0)


def test_split_is_by_line_index_and_covers_every_line_once():
    lines = [f"p{i}" if i % 7 else "" for i in range(45)]
    calib, held = split_lines(lines, "calibration"), split_lines(lines, "evaluation")
    assert held == ["p9", "p19", "p29", "p39"]
    assert sorted(calib + held) == sorted(line for line in lines if line)
    with pytest.raises(ConfigError, match="'calibration' or 'evaluation'"):
        split_lines(lines, "test")


def test_read_paragraphs_keeps_line_indices(tmp_path):
    (tmp_path / "t.txt").write_text("a\n\nb\n", encoding="utf-8")
    assert read_paragraphs(tmp_path / "t.txt") == ["a", "", "b"]
    with pytest.raises(DataError, match="was not found"):
        read_paragraphs(tmp_path / "missing.txt")


def test_prose_split_of_the_real_corpus(shared_data_dir):
    if not (shared_data_dir / PROSE_FILE).is_file():
        pytest.skip(f"{PROSE_FILE} not in the data folder")
    lines = read_paragraphs(shared_data_dir / PROSE_FILE)
    calib, held = load_prose(shared_data_dir, "calibration"), load_prose(shared_data_dir, "evaluation")
    assert len(calib) + len(held) == sum(1 for line in lines if line.strip())
    assert held[0] == lines[9] and held[-1] == lines[(len(lines) - 10) // 10 * 10 + 9]
    assert not set(held) & set(calib)
