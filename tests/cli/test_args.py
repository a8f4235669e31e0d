"""Argument types, one-line usage errors and SIGTERM handling of the command line (mpsearch/cli/args.py)."""

from __future__ import annotations

import argparse
import os
import signal
import time

import pytest

from mpsearch.cli.args import (
    MAX_BUDGETS,
    Parser,
    Terminated,
    budget_values,
    fraction,
    int_at_least,
    seconds,
    sigterm_as_interrupt,
)


@pytest.mark.parametrize("text, value", [("1", 1), ("500", 500), (" 7", 7)])
def test_int_at_least_accepts(text: str, value: int) -> None:
    assert int_at_least(1, "--limit", 500)(text) == value


@pytest.mark.parametrize("text", ["0", "-5", "abc", "2.5", ""])
def test_int_at_least_refuses_in_the_flags_terms(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"must be an integer >= 1, but got {text!r}. Pass e.g. --limit 500"):
        int_at_least(1, "--limit", 500)(text)


@pytest.mark.parametrize("text", ["-1", "0", "nan", "inf", "-inf", "abc"])
def test_seconds_must_be_positive_and_finite(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="must be a positive number of seconds"):
        seconds(text)
    assert seconds("0.5") == 0.5


@pytest.mark.parametrize("text", ["0", "1", "nan", "-0.5", "2", "x"])
def test_fraction_is_strictly_between_zero_and_one(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="between 0 and 1"):
        fraction(text)
    assert fraction("1e-6") == 1e-6


def test_budget_values_parse_ranges_and_lists() -> None:
    assert budget_values("2.5:4:0.5") == [2.5, 3.0, 3.5, 4.0]
    assert budget_values("3,4") == [3.0, 4.0]


@pytest.mark.parametrize("text, words", [("1:2", "three numbers"), ("2:4:1:5", "three numbers"), ("nan:4:1", "finite"),
                                         ("2:4:1e-9", f"at most {MAX_BUDGETS:,} budgets"), ("", "at least one budget"),
                                         ("3:2:0.5", "STOP >= START"), ("a,b", "'a'")])
def test_budget_values_refuse_before_any_array_is_built(text: str, words: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=words):
        budget_values(text)


def test_parser_errors_are_one_line_with_status_2(capsys: pytest.CaptureFixture) -> None:
    parser = Parser(prog="tool")
    parser.add_argument("--limit", type=int_at_least(1, "--limit", 5), required=True)
    for argv in (["--limit", "0"], [], ["--limit", "3", "--nope"]):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("tool: error: ")
        assert err.rstrip().endswith("Run `tool --help` for the options.")


def test_sigterm_raises_terminated_inside_and_restores_the_old_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at once; the sleep is never finished
    assert signal.getsignal(signal.SIGTERM) is before
    assert issubclass(Terminated, KeyboardInterrupt)  # every `except KeyboardInterrupt` cleanup also runs on SIGTERM
