"""Temporary hooks and modes: observe a model for one block and leave it as it was found.

:class:`ModelHooks` registers forward and forward-pre hooks inside a ``with`` block, puts the
model in eval mode (or the mode asked for), and on leaving, also by an exception, removes every
hook and restores each module's ``training`` flag. :func:`model_mode` does the mode part alone.
They live in ``kernels`` (activation calibration uses them, and ``kernels`` may not import
``space``); this module is where every later stage imports them from.
"""

from __future__ import annotations

from mpsearch.kernels._hooks import ModelHooks, model_mode

__all__ = ["ModelHooks", "model_mode"]
