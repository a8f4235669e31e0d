"""The ``mpsearch`` command line: ``mpsearch.cli.main`` for the verbs, ``mpsearch.cli.hw`` for ``hw``."""

from mpsearch.cli.main import main

__all__ = ["main"]
