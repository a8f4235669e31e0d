"""The error hierarchy.

Every error that mpsearch raises on bad input is an :class:`MPSearchError`.
Subclasses also inherit the builtin exception a caller would expect, so
``except ValueError`` keeps working. Messages state the rule, the value, and
the fix, in that order.
"""

from __future__ import annotations


class MPSearchError(Exception):
    """Root of every error mpsearch raises on purpose."""


class PlanFormatError(MPSearchError, ValueError):
    """A bit-plan document is malformed or of an unknown format or version."""


class PlanMismatchError(MPSearchError, ValueError):
    """A bit plan does not fit the model or search space it is applied to."""


class BitsOutOfRangeError(MPSearchError, ValueError):
    """A bit width is outside the allowed range or the unit's choices."""


class InfeasibleBudgetError(MPSearchError, ValueError):
    """No plan satisfies the budget; the message names the smallest feasible one."""


class BudgetError(MPSearchError, ValueError):
    """A budget is malformed (unknown kind, non-finite or non-positive value)."""


class BudgetTooLargeError(BudgetError):
    """A budget is above the largest useful one: every unit at its widest choice already fits."""


class CostTableError(MPSearchError, ValueError):
    """A cost table is malformed (shape mismatch, NaN, negative costs...)."""


class SearchSpaceError(MPSearchError, ValueError):
    """A search space cannot be built as asked (bad pins, ties, patterns...)."""


class ConfigError(MPSearchError, ValueError):
    """A configuration value (quantizer, estimator, solver option) is invalid."""


class MissingDependencyError(MPSearchError, ImportError):
    """An optional dependency is not installed; the message names the pip command."""


class DataError(MPSearchError, ValueError):
    """Input data is missing or of the wrong shape, dtype or content."""


class UnknownNameError(MPSearchError, KeyError):
    """A name (model, solver, estimator...) is not registered.

    The message lists the known names.
    """

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0]) if self.args else ""


class SolverError(MPSearchError, RuntimeError):
    """A solver backend failed for a reason other than infeasibility."""


class OutputError(MPSearchError, OSError):
    """An output path cannot be written: a full or read-only disk, no permission, a directory or
    device where a file belongs, or a folder holding another run's files. ``errno`` and
    ``filename`` carry the operating system's code and the path when there is one."""

    def __init__(self, message: str, *, errno: int | None = None, filename: str | None = None) -> None:
        super().__init__(message)
        self.errno, self.filename = errno, filename

    def __str__(self) -> str:  # OSError would print "[Errno n] None" once errno is set
        return str(self.args[0]) if self.args else ""


class UnsupportedModelError(MPSearchError, RuntimeError):
    """The model cannot do what an estimator needs (e.g. an operation without a double backward)."""


class MPSearchWarning(UserWarning):
    """A warning about a run that will work but may be slow, large or less accurate than asked."""


class FloatModulesWarning(UserWarning):
    """Some modules of a model cannot be quantized; they stay in floating point (named in the message)."""


class NoisyEstimateWarning(MPSearchWarning):
    """A sampled sensitivity estimate stopped before it was precise enough to rank units reliably."""


__all__ = [
    "BitsOutOfRangeError",
    "BudgetError",
    "BudgetTooLargeError",
    "ConfigError",
    "CostTableError",
    "DataError",
    "FloatModulesWarning",
    "InfeasibleBudgetError",
    "MPSearchError",
    "MPSearchWarning",
    "MissingDependencyError",
    "NoisyEstimateWarning",
    "OutputError",
    "PlanFormatError",
    "PlanMismatchError",
    "SearchSpaceError",
    "SolverError",
    "UnknownNameError",
    "UnsupportedModelError",
]
