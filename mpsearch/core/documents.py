"""Reading the versioned JSON documents mpsearch writes: cost tables, bit plans, latency tables.

Each document is a JSON object with an envelope, ``{"format": NAME, "version": N, ...}``.
:func:`read_json` and :func:`check_envelope` apply one set of rules to all of them, so a
missing, empty, binary, truncated or foreign file is refused with the same kind of message
whatever it was meant to be: the rule, the file or value, and how to get a good one. The
caller passes its own error class (so ``except PlanFormatError`` keeps working), a name for
the document ("a cost table") and the fix that makes a good one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from mpsearch.core.errors import MPSearchError

__all__ = ["check_envelope", "parse_json", "read_json"]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_json(data: bytes | str, *, error: type[MPSearchError], what: str, where: str, fix: str) -> Any:
    """Parse UTF-8 JSON ``data``; an empty, binary or malformed text raises ``error``.

    The message reads "``what`` must be valid JSON, but ``where`` is not: ...", e.g. what="a plan
    file", where="'plan.json'".
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise error(f"{what} must be UTF-8 JSON, but {where} is binary. {fix}") from None
    else:
        text = data
    if "\x00" in text:
        raise error(f"{what} must be UTF-8 JSON, but {where} is binary. {fix}")
    if not text.strip():
        raise error(f"{what} must be valid JSON, but {where} is empty. {fix}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        ended = err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string")
        cut = " (it ends too early: cut short?)" if ended else ""
        raise error(f"{what} must be valid JSON, but {where} is not: {err}{cut}. {fix}") from None
    except RecursionError:
        raise error(f"{what} must be valid JSON of sane depth, but {where} nests too deeply. {fix}") from None
    except ValueError as err:  # e.g. an integer longer than Python converts
        raise error(f"{what} must be valid JSON, but {where} is not: {err}. {fix}") from None


def read_json(path: str | os.PathLike[str], *, error: type[MPSearchError], what: str, fix: str) -> Any:
    """The parsed JSON content of the file at ``path``; any failure raises ``error`` with ``fix``.

    >>> from mpsearch.core.errors import DataError
    >>> try:
    ...     read_json("no-such.json", error=DataError, what="a table", fix="Pass another path.")
    ... except DataError as err:
    ...     print(err)
    a table file must be readable, but 'no-such.json' is not: No such file or directory. Check the path. Pass another path.
    """
    where = repr(str(path))
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise error(f"{what} file must be readable, but {where} is not: {reason}. Check the path. {fix}") from None
    return parse_json(data, error=error, what=f"{what} file", where=where, fix=fix)


def check_envelope(
    doc: Any, *, error: type[MPSearchError], what: str, format: str, versions: Collection[int], fix: str
) -> Mapping[str, Any]:
    """``doc`` itself when it is a JSON object of ``format`` at one of ``versions``; else raise ``error``.

    >>> check_envelope({"format": "x", "version": 1}, error=MPSearchError, what="a thing", format="x",
    ...                versions=(1,), fix="Write it again.")["version"]
    1
    """
    if not isinstance(doc, Mapping):
        raise error(
            f"{what} document must be a JSON object with format={format!r}, but got "
            f"{type(doc).__name__} {_short(doc)}. {fix}"
        )
    if doc.get("format") != format:
        raise error(f"{what} document must have format={format!r}, but got format={_short(doc.get('format'))}. {fix}")
    version = doc.get("version")
    if isinstance(version, bool) or version not in versions:
        raise error(
            f"{what} version must be one of {sorted(versions)}, but got version={_short(version)}. "
            f"Upgrade mpsearch if the file comes from a newer one; else {fix[:1].lower()}{fix[1:]}"
        )
    return doc
