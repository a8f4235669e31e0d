"""Small real-model fixtures shared by the estimator tests (a few images, a few sentences)."""

from __future__ import annotations

import functools

import pytest
import torch

from mpsearch.sensitivity import Calibration
from mpsearch.sensitivity.losses import minilm_calibration as text_calibration
from mpsearch.zoo import load_cifar10, load_pretrained, to_tensor

SENTENCES = ["Mixed-precision quantization assigns bits per layer.", "Low-bit weights save memory."]


def resnet20_calibration(n: int = 8) -> tuple[torch.nn.Module, Calibration]:
    images, labels = load_cifar10(limit=n)  # embedded images, no data folder needed
    calib = Calibration.classification(to_tensor(images), torch.as_tensor(labels), batch_size=n)
    return load_pretrained("resnet20"), calib


@functools.lru_cache(maxsize=1)
def _minilm():
    from mpsearch.zoo import load_minilm

    return load_minilm()


def minilm_calibration():
    try:
        model, tokenizer = _minilm()
    except (ImportError, OSError, ValueError) as exc:  # the optional extra or the packaged model is missing
        pytest.skip(f"MiniLM unavailable: {exc}")
    return model, text_calibration(model, tokenizer, SENTENCES, batch_size=2)
