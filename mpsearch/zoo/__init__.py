"""Real models and data to search bit allocations on.

* CIFAR-10 ResNet-20/32/44/56 with the published pretrained weights
  (:func:`load_pretrained`; ResNet-20 and the first 1000 test images are embedded),
* the CIFAR-10 test set (:func:`load_cifar10`, :func:`to_tensor`) and top-1 :func:`accuracy`,
* the all-MiniLM-L6-v2 sentence encoder (:func:`load_minilm`, :func:`embed_sentences`) and a
  text corpus (:func:`load_corpus`); ``transformers`` is imported only when they are called.

Example:
    >>> from mpsearch.zoo import accuracy, load_cifar10, load_pretrained, to_tensor
    >>> images, labels = load_cifar10()
    >>> accuracy(load_pretrained("resnet20"), to_tensor(images), labels)  # doctest: +SKIP
    91.5
"""

from __future__ import annotations

from mpsearch.zoo.data import CifarSplit, default_data_dir, load_cifar10, load_cifar10_split, split_cifar10, to_tensor
from mpsearch.zoo.eval import accuracy
from mpsearch.zoo.minilm import (
    MissingDependencyError,
    embed_sentences,
    load_corpus,
    load_minilm,
    minilm_dir,
)
from mpsearch.zoo.models import MODEL_NAMES, load_pretrained
from mpsearch.zoo.resnet import CifarResNet, cifar_resnet

__all__ = [
    "MODEL_NAMES",
    "CifarResNet",
    "CifarSplit",
    "MissingDependencyError",
    "accuracy",
    "cifar_resnet",
    "default_data_dir",
    "embed_sentences",
    "load_cifar10",
    "load_cifar10_split",
    "load_corpus",
    "load_minilm",
    "load_pretrained",
    "minilm_dir",
    "split_cifar10",
    "to_tensor",
]
