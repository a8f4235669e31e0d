"""Stage 5: a plan applied to a model.

Fake quantization (``evaluate``), bias correction, packed modules on the fast kernels
(``apply``, ``modules``) and the safetensors export and load (``export``).
"""
