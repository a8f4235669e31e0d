"""Tests for reading versioned JSON documents (mpsearch/core/documents.py), and that cost tables,
plans and latency tables share its rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpsearch.core.costs import CostTable
from mpsearch.core.documents import check_envelope, parse_json, read_json
from mpsearch.core.errors import CostTableError, DataError, MPSearchError, PlanFormatError
from mpsearch.core.plan import BitPlan
from mpsearch.hardware_models.lut import LUTLatencyModel

FIX = "Write it again."


def read(path: Path) -> object:
    return read_json(path, error=DataError, what="a thing", fix=FIX)


def test_reads_a_json_object(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"x": [1, 2.5, null]}')
    assert read(tmp_path / "a.json") == {"x": [1, 2.5, None]}


BAD_FILES = {
    "missing": (None, r"a thing file must be readable, but '.*a\.json' is not: No such file or directory\. Check the path\. "),
    "empty": (b"", r"a thing file must be valid JSON, but '.*a\.json' is empty\. "),
    "blank": (b" \n\t", r"a thing file must be valid JSON, but '.*a\.json' is empty\. "),
    "png": (b"\x89PNG\r\n\x1a\n", r"a thing file must be UTF-8 JSON, but '.*a\.json' is binary\. "),
    "nul": (b'{"a": 1}\x00\x00', r"a thing file must be UTF-8 JSON, but '.*a\.json' is binary\. "),
    "cut": (b'{"a": [1, 2', r"a thing file must be valid JSON, but '.*a\.json' is not: Expecting .* \(it ends too early: cut short\?\)\. "),
    "toml": (b"budget = 3", r"a thing file must be valid JSON, but '.*a\.json' is not: Expecting value: line 1 column 1"),
    "deep": (b"[" * 200_000, r"a thing file must be valid JSON of sane depth, but '.*a\.json' nests too deeply\. "),
    "long-int": (b"1" * 5000, r"a thing file must be valid JSON, but '.*a\.json' is not: .*digits"),
}


@pytest.mark.parametrize(("content", "rule"), list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_bad_files_name_rule_file_and_fix(tmp_path: Path, content: bytes | None, rule: str) -> None:
    if content is not None:
        (tmp_path / "a.json").write_bytes(content)
    with pytest.raises(DataError, match="^" + rule + ".*" + FIX + "$"):
        read(tmp_path / "a.json")


def test_mid_file_error_is_not_called_cut_short() -> None:
    with pytest.raises(DataError, match=r"is not: Expecting ',' delimiter: line 1 column 9 \(char 8\)\. Write"):
        parse_json('{"a": 1 "b": 2}', error=DataError, what="a thing", where="the text", fix=FIX)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"must be readable, but .* is not: Is a directory\. Check the path\. Write it again\.$"):
        read(tmp_path)


def envelope(doc: object, versions=(1, 2)) -> object:
    return check_envelope(doc, error=PlanFormatError, what="a widget", format="mp.widget", versions=versions, fix=FIX)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], r"a widget document must be a JSON object with format='mp\.widget', but got list \[1, 2\]\. Write it again\.$"),
        ("x" * 200, r"but got str 'xxx.*\.\.\.\. Write"),  # long values are shortened
        ({"version": 1}, r"a widget document must have format='mp\.widget', but got format=None\. Write it again\.$"),
        ({"format": "mp.other", "version": 1}, r"but got format='mp\.other'\."),
        ({"format": "mp.widget"}, r"a widget version must be one of \[1, 2\], but got version=None\. Upgrade mpsearch if "
                                  r"the file comes from a newer one; else write it again\.$"),
        ({"format": "mp.widget", "version": 3}, r"but got version=3\."),
        ({"format": "mp.widget", "version": True}, r"but got version=True\."),  # True == 1, yet no version
        ({"format": "mp.widget", "version": "1"}, r"but got version='1'\."),
    ],
)
def test_envelope_rules(doc: object, message: str) -> None:
    with pytest.raises(PlanFormatError, match=message):
        envelope(doc)


def test_envelope_returns_the_document() -> None:
    doc = {"format": "mp.widget", "version": 2, "body": []}
    assert envelope(doc) is doc


LOADERS = [
    (CostTable.load, CostTableError, "a cost table", "Recompute it with `mpsearch sensitivity"),
    (BitPlan.load, PlanFormatError, "a plan", "Pass a plan written by `mpsearch search`"),
    (LUTLatencyModel.from_json, DataError, "a latency table", "Run `mpsearch hw calibrate` again"),
]


@pytest.mark.parametrize(("load", "error", "what", "fix"), LOADERS)
@pytest.mark.parametrize(
    ("content", "rule"),
    [(None, "file must be readable"), (b"", "file must be valid JSON"), (b"\xff\xfe\x00", "file must be UTF-8 JSON"),
     (b"[1, 2]", "document must be a JSON object with format="),
     (b'{"format": "mpsearch.other", "version": 1}', "document must have format="),
     (b"FORMAT_VERSION_9", "version must be one of [1], but got version=9")],
)
def test_every_document_follows_the_same_rules(tmp_path: Path, load, error, what, fix, content, rule) -> None:
    """Cost tables, plans and latency tables: one wording, each with its own error class and fix."""
    path = tmp_path / "doc.json"
    if content == b"FORMAT_VERSION_9":
        fmt = {CostTable.load: "mpsearch.costtable", BitPlan.load: "mpsearch.bitplan"}.get(load, "mpsearch.latency_lut")
        content = json.dumps({"format": fmt, "version": 9}).encode()
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error) as caught:
        load(path)
    message = str(caught.value)
    assert isinstance(caught.value, MPSearchError)
    assert message.startswith(what + " ") and rule in message and fix.lower() in message.lower(), message
