"""The types handed from stage to stage, torch-free.

Budgets, cost tables, bit plans, quantizer settings, the one storage-accounting rule, the
registry, errors and atomic file writes. Nothing here imports torch, so solvers and hardware
models that work on arrays can use all of it.
"""
