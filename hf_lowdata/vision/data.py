"""Image data for few-shot experiments: Fashion-MNIST, scikit-learn's digits, deterministic tasks.

Images are kept as ``uint8`` arrays (N, H, W) (grayscale) or (N, H, W, 3) and turned into model
inputs by :func:`images_to_pixel_values` (vectorised resize + Lite0's [-1, 1] scaling), which is
much faster than a per-image PIL processor for thousands of 28x28 images and agrees with
:func:`~hf_lowdata.vision.efficientnet.load_image_processor` to within uint8 rounding.

Sampling reuses the text data layer's rule (:func:`hf_lowdata.data.example_rank`): the labelled
set of (k, seed) is the k lowest-ranked images of each class, so sets are nested across k and
identical on every machine; the unlabelled pool is drawn the same way from what is left.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import DataError, example_rank
from .efficientnet import PIXEL_MEAN, PIXEL_STD, VisionAssetError

FASHION_MNIST_DIR = Path(os.environ.get("HF_LOWDATA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                        "Bag", "Ankle boot")
#: scikit-learn's digits have no official split: the first 1,200 images train, the other 597 test.
DIGITS_TRAIN_SIZE = 1200


def check_images(images: Any, source: str = "images") -> None:
    """Refuse what is not a uint8 array of shape (N, H, W) or (N, H, W, 3), saying how to convert it (float
    pixels in [0, 1] would otherwise be scaled a second time and predict one class for everything)."""
    if not isinstance(images, np.ndarray):
        raise DataError(f"{source}: images must be a numpy uint8 array (N, H, W) or (N, H, W, 3), got "
                        f"{type(images).__name__} (PIL images: np.stack([np.asarray(im.convert('RGB')) ...])).")
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        hints = []
        if images.dtype.kind == "f":
            hints.append("float pixels in [0, 1]: (images * 255).round().astype(np.uint8)")
        if images.ndim == 4 and images.shape[-1] == 4:
            hints.append("RGBA: drop the alpha channel, images[..., :3]")
        if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
            hints.append("channels first: images.transpose(0, 2, 3, 1)")
        if images.ndim == 2:
            hints.append("one image: images[None]")
        raise DataError(f"{source}: images must be uint8 of shape (N, H, W) or (N, H, W, 3), got {images.dtype} "
                        f"{images.shape}" + (f" ({'; '.join(hints)})." if hints else "."))


@dataclass(frozen=True)
class ImageSet:
    """Images (uint8, (N, H, W) or (N, H, W, 3)) with integer labels (or ``None``) and label names."""

    images: np.ndarray
    labels: np.ndarray | None
    label_names: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        check_images(self.images, self.source)
        if self.labels is not None:  # a list of labels would break the draws' comparisons and fancy indexing
            object.__setattr__(self, "labels", np.asarray(self.labels))
        if len(set(self.label_names)) != len(self.label_names):
            raise DataError(f"{self.source}: label names repeat: {list(self.label_names)}.")
        if self.labels is None:
            return
        if len(self.labels) != len(self.images):
            raise DataError(f"{self.source}: {len(self.images)} images but {len(self.labels)} labels.")
        labels = np.asarray(self.labels)
        if labels.dtype.kind not in "iu":
            raise DataError(f"{self.source}: labels must be integer class indices into label_names, got "
                            f"{labels.dtype} (map names to indices: label_names.index(name)).")
        outside = labels[(labels < 0) | (labels >= len(self.label_names))]
        if len(outside):
            raise DataError(f"{self.source}: labels {sorted(set(outside.tolist()))[:5]} are outside 0.."
                            f"{len(self.label_names) - 1} (one per name in label_names).")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subset(self, indices, source: str | None = None) -> ImageSet:
        idx = np.asarray(list(indices), dtype=np.int64)
        labels = None if self.labels is None else self.labels[idx]
        return ImageSet(self.images[idx], labels, self.label_names, source or self.source)

    def without_labels(self) -> ImageSet:
        return ImageSet(self.images, None, self.label_names, self.source)


@dataclass(frozen=True)
class ImageFewShotTask:
    """The image counterpart of :class:`hf_lowdata.data.FewShotTask`."""

    name: str
    labelled: ImageSet
    test: ImageSet
    seed: int
    k: int
    unlabelled: ImageSet | None = None

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.labelled.label_names

    @property
    def num_labels(self) -> int:
        return self.labelled.num_labels


def _read_idx(path: Path, header: int) -> np.ndarray:
    """The uint8 payload of a gzipped idx file; a damaged or truncated file is a VisionAssetError naming it.

    The header holds a magic number (its last byte: the number of dimensions) and the size of each
    dimension, so a file cut short (even one gzip reads without complaint) is caught here.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; a cut-off stream an EOFError
        raise _damaged(path, str(err)) from err
    dims = header // 4 - 1
    if len(raw) < header or raw[:3] != b"\x00\x00\x08" or raw[3] != dims:
        raise _damaged(path, f"no idx header of {dims} dimension(s)")
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    if len(raw) - header != int(np.prod(shape)):
        raise _damaged(path, f"{len(raw) - header} bytes of data where its header announces {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


def _damaged(path: Path, detail: str) -> VisionAssetError:
    return VisionAssetError(
        f"The Fashion-MNIST file {path} is damaged or truncated ({detail}). Reinstall the package: apt-get install "
        "--reinstall dataset-fashion-mnist, or set HF_LOWDATA_FASHION_MNIST to a folder with intact idx .gz files."
    )


def load_fashion_mnist(split: str = "train", directory: str | os.PathLike | None = None) -> ImageSet:
    """Fashion-MNIST ``split`` ("train": 60,000, "test": 10,000 images of 28x28) from the Debian package."""
    if split not in ("train", "test"):
        raise DataError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}.")
    folder = Path(directory) if directory is not None else FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.is_file() or not labels_path.is_file():
        raise VisionAssetError(
            f"Fashion-MNIST is not installed at {folder} (missing {images_path.name} or {labels_path.name}). "
            "Install the Debian package: apt-get install dataset-fashion-mnist (scripts/system_packages.sh "
            "does it), or set HF_LOWDATA_FASHION_MNIST to a folder with the four idx .gz files."
        )
    images = _read_idx(images_path, 16).reshape(-1, 28, 28)
    labels = _read_idx(labels_path, 8).astype(np.int64)
    return ImageSet(images, labels, FASHION_MNIST_LABELS, f"fashion-mnist {split}")


def load_digits(split: str = "train") -> ImageSet:
    """scikit-learn's 8x8 digits as uint8 images; "train" = the first 1,200, "test" = the rest, "all"."""
    from sklearn.datasets import load_digits as sk_digits

    if split not in ("train", "test", "all"):
        raise DataError(f"digits split must be 'train', 'test' or 'all', got {split!r}.")
    bunch = sk_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    part = {"train": slice(0, DIGITS_TRAIN_SIZE), "test": slice(DIGITS_TRAIN_SIZE, None), "all": slice(None)}[split]
    return ImageSet(images[part], labels[part], tuple(str(d) for d in range(10)), f"digits {split}")


def _ranked(purpose: str, seed: int, indices) -> list[int]:
    return sorted(indices, key=lambda i: example_rank(purpose, seed, int(i), ""))


def make_image_few_shot_task(
    train: ImageSet, test: ImageSet, k: int, seed: int, unlabelled: int = 0, name: str = "images"
) -> ImageFewShotTask:
    """``k`` labelled images per class from ``train`` (deterministic per (k, seed), nested in k), and
    optionally an unlabelled pool of ``unlabelled`` further images of ``train``."""
    if train.labels is None:
        raise DataError(f"{train.source}: cannot draw labelled images from unlabelled data.")
    if k < 1:
        raise DataError(f"k must be at least 1, got {k}.")
    if unlabelled < 0:
        raise DataError(f"unlabelled must be 0 (no pool) or a positive pool size, got {unlabelled}.")
    chosen: list[int] = []
    for label, label_name in enumerate(train.label_names):
        members = np.flatnonzero(train.labels == label)
        if len(members) < k:
            raise DataError(f"{train.source}: class {label_name!r} has {len(members)} images, fewer than k={k}.")
        chosen.extend(_ranked(f"labelled:{label}", seed, members)[:k])
    pool = None
    if unlabelled:
        used = set(chosen)
        rest = [i for i in range(len(train)) if i not in used]
        pool_idx = _ranked("unlabelled", seed, rest)[:unlabelled]
        pool = train.subset(pool_idx, f"{name} unlabelled pool").without_labels()
    labelled = train.subset(chosen, f"{name} labelled ({k}/class, seed {seed})")
    return ImageFewShotTask(name=name, labelled=labelled, test=test, seed=seed, k=k, unlabelled=pool)


def split_off_dev(train: ImageSet, size: int) -> tuple[ImageSet, ImageSet]:
    """Hold out ``size`` training images as a dev set: ``(the rest, dev)``.

    For choosing settings without touching the test split (Fashion-MNIST and digits have no official
    dev split). The dev images are a fixed, seed-independent draw, so every run of a sweep is scored on
    the same images, and they never enter a labelled set or an unlabelled pool drawn from the rest.
    """
    if train.labels is None:
        raise DataError(f"{train.source}: a dev set needs labels.")
    if not 0 < size < len(train):
        raise DataError(f"{train.source}: the dev set needs 1 to {len(train) - 1} images, got {size}.")
    ranked = _ranked("dev", 0, range(len(train)))
    dev, rest = sorted(ranked[:size]), sorted(ranked[size:])
    return train.subset(rest, f"{train.source} without dev"), train.subset(dev, f"{train.source} dev ({size})")


def images_to_pixel_values(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, 3) -> float pixel values (N, 3, size, size) in [-1, 1].

    Bilinear resize (antialiased when shrinking), grayscale copied to three channels, then Lite0's
    scaling. ``size`` should be a multiple of 32 (see :mod:`hf_lowdata.vision.efficientnet`).
    """
    check_images(images)
    x = torch.from_numpy(np.array(images, dtype=np.float32))  # a writable float copy
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        shrink = x.shape[-1] > size or x.shape[-2] > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return ((x / 255.0 - PIXEL_MEAN) / PIXEL_STD).contiguous()
