"""Command-line argument types, one-line usage errors, and SIGTERM handled like Ctrl-C.

Flags are checked where argparse reads them, in the flag's own terms: ``--max-probes 0`` says
``--max-probes must be an integer >= 2``, not which option of which estimator it feeds.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

__all__ = ["MAX_BUDGETS", "Parser", "Terminated", "budget_values", "fraction", "int_at_least", "seconds", "sigterm_as_interrupt"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: argparse's rule and value, then where the options are listed."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message.rstrip('.')}. Run `{self.prog} --help` for the options.\n")


def int_at_least(low: int, flag: str, example: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``, refused in the flag's own terms."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, but got {text!r}. Pass e.g. {flag} {example}")
        return value

    return parse


def _number(text: str, ok: Callable[[float], bool], rule: str, fix: str) -> float:
    """``text`` as a float when ``ok`` holds for it (a non-number is NaN, which ``ok`` must refuse)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, but got {text!r}. {fix}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    return _number(text, lambda v: math.isfinite(v) and v > 0, "a positive number of seconds",
                   "Pass e.g. --time-limit 60, or leave it out for no limit")


MAX_BUDGETS = 1000


def budget_values(text: str) -> list[float]:
    """An argparse type: budgets as START:STOP:STEP (inclusive) or a comma list; 1 to 1,000 values."""
    from mpsearch.core.errors import MPSearchError
    from mpsearch.workflows.quickstart import budget_grid

    fix = "Pass e.g. --budgets 2.5:4:0.25 or --budgets 2.5,3,4"
    if ":" in text:
        try:
            start, stop, step = (float(v) for v in text.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"a range must read START:STOP:STEP with three numbers, but got {text!r}. {fix}") from None
        if not all(math.isfinite(v) for v in (start, stop, step)):
            raise argparse.ArgumentTypeError(f"a range must hold finite numbers, but got {text!r}. {fix}")
        if step > 0 and stop >= start and (count := (stop - start) / step + 1) > MAX_BUDGETS:
            raise argparse.ArgumentTypeError(f"a range must give at most {MAX_BUDGETS:,} budgets, but {text!r} gives "
                                             f"{count:,.0f}. Pass a larger STEP")
    try:
        values = budget_grid(text)
    except MPSearchError as err:
        raise argparse.ArgumentTypeError(str(err).rstrip(".")) from None
    if not values:
        raise argparse.ArgumentTypeError(f"must name at least one budget, but got {text!r}. {fix}")
    return values


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1 (a relative tolerance)."""
    return _number(text, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)",
                   "Pass e.g. --tol 0.1 (10 % relative standard error)")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so every ``except KeyboardInterrupt`` cleanup runs (checkpoints)."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while a command runs (main thread only; the old handler comes back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
