"""CIFAR-10 test images for evaluating and calibrating the CNN zoo.

Two sources: the complete test set as ``<data_dir>/cifar10_test.npz`` (see
the data folder's README for its provenance), or, without a data folder, the
first 1000 test images embedded in the package so tests and examples run
anywhere. Both are validated on load, because a wrongly shaped array would
otherwise only surface later as a confusing shape error deep inside a model.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from mpsearch.core.errors import DataError

__all__ = [
    "CIFAR10_FILE",
    "DATA_DIR_ENV",
    "EMBEDDED_CIFAR10",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CifarSplit",
    "default_data_dir",
    "load_cifar10",
    "load_cifar10_split",
    "split_cifar10",
    "to_tensor",
]

#: File name of the full CIFAR-10 test set inside a data folder.
CIFAR10_FILE = "cifar10_test.npz"
#: Environment variable naming the default data folder.
DATA_DIR_ENV = "MPSEARCH_DATA_DIR"
#: The embedded first 1000 test images, shipped with the package.
EMBEDDED_CIFAR10 = Path(__file__).resolve().parent / "assets" / "cifar10_test_first1000.npz"

#: Normalisation the pretrained ResNets were trained with (ImageNet statistics on [0, 1] pixels).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_data_dir() -> Path | None:
    """The data folder named by ``$MPSEARCH_DATA_DIR``, or None when it is unset or empty."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value) if value else None


def _validate(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Raise DataError unless ``images``/``labels`` form a valid CIFAR-10 array pair."""
    fix = (
        f"Regenerate {path.name} with `images` uint8 (N, 32, 32, 3) "
        "and `labels` int64 (N,) in 0..9."
    )
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(
            f"`images` in {path} must be uint8 of shape (N, 32, 32, 3) (HWC, RGB), "
            f"but got dtype={images.dtype}, shape={images.shape}. {fix}"
        )
    if labels.dtype != np.int64 or labels.shape != (images.shape[0],):
        raise DataError(
            f"`labels` in {path} must be int64 of shape ({images.shape[0]},) to match `images`, "
            f"but got dtype={labels.dtype}, shape={labels.shape}. {fix}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(
            f"`labels` in {path} must lie in 0..9, but got min={labels.min()}, "
            f"max={labels.max()}. {fix}"
        )


def _unreadable(path: Path, exc: BaseException) -> DataError:
    """The DataError for an archive that cannot be read: not a zip file, truncated, corrupt, pickled."""
    fix = "Reinstall mpsearch." if path == EMBEDDED_CIFAR10 else "Copy the file again or regenerate it."
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        head = b"PK"
    if not head.startswith(b"PK"):  # numpy would call it a pickle and suggest loading it unsafely
        return DataError(f"{path} must be an .npz archive (a zip file), but it is not one: it begins with {head!r}. {fix}")
    kind = type(exc).__name__ if type(exc).__module__ == "builtins" else f"{type(exc).__module__}.{type(exc).__name__}"
    reason = str(exc).split(". ")[0].rstrip(".")  # numpy's first sentence, without its advice to unpickle
    return DataError(f"{path} must be a complete .npz archive without pickled objects, but reading it failed "
                     f"({kind}: {reason}). {fix}")


def load_cifar10(
    data_dir: str | os.PathLike[str] | None = None, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 test images and labels.

    Args:
        data_dir: Folder holding ``cifar10_test.npz`` (all 10,000 images). None reads the
            embedded first 1000 test images instead.
        limit: Keep only the first ``limit`` images (None keeps all).

    Returns:
        ``(images, labels)``: uint8 array (N, 32, 32, 3), HWC RGB, and int64 array (N,).

    Example:
        >>> images, labels = load_cifar10(limit=8)
        >>> images.shape, labels.dtype
        ((8, 32, 32, 3), dtype('int64'))
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise DataError(f"`limit` must be a non-negative int or None, but got limit={limit!r}.")
    path = EMBEDDED_CIFAR10 if data_dir is None else Path(data_dir) / CIFAR10_FILE
    if not path.is_file():
        raise DataError(
            f"The CIFAR-10 test set must exist at {path}, but it was not found. Pass --data-dir "
            f"(or set ${DATA_DIR_ENV}) pointing at a folder containing {CIFAR10_FILE}."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"images", "labels"} - set(archive.files)
            if missing:
                raise DataError(
                    f"{path} must contain the arrays `images` and `labels`, but it lacks "
                    f"{sorted(missing)} (has {sorted(archive.files)}). Regenerate the file."
                )
            images, labels = archive["images"], archive["labels"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        # A truncated or corrupt archive raises any of these, depending on where the damage is.
        raise _unreadable(path, exc) from exc
    _validate(path, images, labels)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Convert uint8 HWC images (N, 32, 32, 3) to a normalised float32 tensor (N, 3, 32, 32).

    Pixels are scaled to [0, 1] and normalised with the ImageNet mean and std that the
    pretrained ResNets expect.
    """
    ok = isinstance(images, np.ndarray) and images.dtype == np.uint8
    if not ok or images.ndim != 4 or images.shape[-1] != 3:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise DataError(
            f"`images` must be a uint8 numpy array of shape (N, H, W, 3), but got "
            f"dtype={dtype}, shape={shape}. Pass the arrays returned by load_cifar10()."
        )
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


@dataclasses.dataclass(frozen=True, eq=False)
class CifarSplit:
    """CIFAR-10 test images split for calibration (the first ``n_calib``) and held-out evaluation.

    The calibration images feed sensitivity estimates, bias correction and activation ranges;
    accuracy is measured on the images after them (``images[n_calib:eval_stop]``), which the
    calibration never saw. ``x_*``/``y_*`` are the model-ready tensors, each converted once,
    when first read. ``source`` is ``"embedded"``, the data folder, or a description.
    """

    images: np.ndarray
    labels: np.ndarray
    n_calib: int
    eval_stop: int
    source: str

    @property
    def n_images(self) -> int:
        """Images in the whole source, calibration and held-out (and any beyond ``eval_stop``)."""
        return len(self.labels)

    @functools.cached_property
    def x_calib(self) -> torch.Tensor:
        """Calibration images, normalised float32 (n_calib, 3, 32, 32)."""
        return to_tensor(self.images[: self.n_calib])

    @functools.cached_property
    def y_calib(self) -> torch.Tensor:
        """Calibration labels, int64 (n_calib,)."""
        return torch.from_numpy(self.labels[: self.n_calib])

    @functools.cached_property
    def x_eval(self) -> torch.Tensor:
        """Held-out images, normalised float32."""
        return to_tensor(self.images[self.n_calib : self.eval_stop])

    @functools.cached_property
    def y_eval(self) -> torch.Tensor:
        """Held-out labels, int64."""
        return torch.from_numpy(self.labels[self.n_calib : self.eval_stop])


def _count(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DataError(f"`{name}` must be an int of at least {low}, but got {name}={value!r}. Pass e.g. {name}={max(low, 1)}.")


def split_cifar10(
    images: np.ndarray, labels: np.ndarray, n_calib: int, *, eval_limit: int | None = None,
    min_eval: int = 1, source: str = "the given arrays", what: str = "n_calib",
) -> CifarSplit:
    """Split arrays from :func:`load_cifar10` into calibration and held-out tensors.

    Args:
        images, labels: uint8 (N, 32, 32, 3) images and their int64 labels.
        n_calib: How many of the first images calibrate; at most ``N - min_eval``.
        eval_limit: Keep only the first ``eval_limit`` held-out images (None keeps all).
        min_eval: Held-out images that must remain (0 lets the calibration take every image).
        source: Where the arrays came from, for error messages.
        what: The caller's name for ``n_calib`` (a CLI flag, a config key), for error messages.

    Example:
        >>> images, labels = load_cifar10(limit=10)
        >>> data = split_cifar10(images, labels, 4, eval_limit=5)
        >>> tuple(data.x_calib.shape), tuple(data.x_eval.shape), data.n_images
        ((4, 3, 32, 32), (5, 3, 32, 32), 10)
    """
    _count("min_eval", min_eval, 0)
    if eval_limit is not None:
        _count("eval_limit", eval_limit, 1)
    n_images = len(labels)
    if len(images) != n_images:
        raise DataError(f"`images` and `labels` must have the same length, but got {len(images)} images and "
                        f"{n_images} labels. Pass the arrays load_cifar10() returns.")
    top = n_images - min_eval
    kept = f", and {min_eval} must be left to evaluate on" if min_eval else ""
    if top < 1:
        raise DataError(f"calibration needs at least {min_eval + 1} images{kept}, but {source} holds {n_images}. "
                        "Pass a data folder with more images.")
    if isinstance(n_calib, bool) or not isinstance(n_calib, int) or not 1 <= n_calib <= top:
        raise DataError(f"{what} must be within 1..{top:,}: {source} holds {n_images:,} images{kept}, but got "
                        f"{what}={n_calib!r}. Pass {what}={min(256, top)}, or a data folder with more images.")
    stop = n_images if eval_limit is None else min(n_images, n_calib + eval_limit)
    return CifarSplit(images=images, labels=labels, n_calib=n_calib, eval_stop=stop, source=source)


def load_cifar10_split(
    data_dir: str | os.PathLike[str] | None = None, n_calib: int = 256, *, eval_limit: int | None = None,
    min_eval: int = 1, what: str = "n_calib",
) -> CifarSplit:
    """The CIFAR-10 test set of ``data_dir`` (None: the embedded 1000 images), split as :func:`split_cifar10`.

    This is the one way the quickstart, studies, benchmarks and the command line get their
    calibration and held-out images, so they all calibrate and evaluate on the same ones.

    Example:
        >>> data = load_cifar10_split(n_calib=256)
        >>> len(data.x_calib), len(data.x_eval), data.source
        (256, 744, 'embedded')
    """
    images, labels = load_cifar10(data_dir)
    source = "the embedded test set" if data_dir is None else str(Path(data_dir) / CIFAR10_FILE)
    split = split_cifar10(images, labels, n_calib, eval_limit=eval_limit, min_eval=min_eval, source=source, what=what)
    return dataclasses.replace(split, source="embedded" if data_dir is None else str(data_dir))
