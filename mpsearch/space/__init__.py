"""Stage 1: the model as a search space.

``discover`` finds the quantizable units of a model (its ``Conv2d``, ``Linear`` and
transformers ``Conv1D`` modules), their bit choices, ties and pins; ``forward`` runs a model on
calibration batches; ``hooks`` observes it without leaving hooks behind.
"""

from mpsearch.space.discover import FloatModule, QuantUnit, SearchSpace, discover

__all__ = ["FloatModule", "QuantUnit", "SearchSpace", "discover"]
