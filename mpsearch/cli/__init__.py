"""The ``mpsearch`` command line: ``mpsearch.cli.main`` runs the verbs, ``parsers`` declares them;
``llm`` serves causal LMs, ``quantizer`` the ``--quantizer rtn|gptq`` options, ``hw`` and ``export`` their verbs."""

from mpsearch.cli.main import main

__all__ = ["main"]
