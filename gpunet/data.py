"""Training data for candidate networks: Fashion-MNIST (IDX files) and ImageFolder (ImageNet layout).

- Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; MIT licence, Zalando SE): the four IDX files
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, by default in ``/usr/share/datasets/fashion-mnist``
  (Debian package ``dataset-fashion-mnist``). 60,000 training and 10,000 test images, ``28 x 28``, 10 classes.
  The test split is the validation split of the search.
- ImageFolder: ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg`` (torchvision's layout).

Augmentation follows the GPUNet paper's supplement Table 5 where it applies to the data: timm RandAugment
(``rand-m9-mstd0.5``), random erasing (``reprob 0.2``, pixel mode), crop 1.0 (a plain resize to the
network's resolution). Fashion-MNIST adds a horizontal flip; ImageFolder uses timm's ImageNet transform
(random-resized crop, flip, RandAugment, erasing). Evaluation: resize only.

Torch is imported on use so that :func:`read_idx` and :func:`balanced_subset` stay light.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GpunetError
from .spec import DATASET_KINDS

#: Fashion-MNIST class names, in label order.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: Mean and standard deviation of Fashion-MNIST's training pixels (scaled to [0, 1]).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: The field of a dataset's location in a ``NASSearch``.
PATH_FIELD = "spec.training.dataset.path"
_FASHION_MNIST_FILES = ("the four Fashion-MNIST IDX files: install them with `sudo apt-get install dataset-fashion-mnist` "
                        "(Debian package), or set spec.training.dataset.path")
_IMAGE_FOLDER_LAYOUT = "ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg (ImageNet layout)"


class DatasetError(GpunetError, ValueError):
    """Training data that cannot be used: a file that is not what it claims to be, an unknown dataset kind."""


class DatasetMissingError(DatasetError, FileNotFoundError):
    """The dataset is not where the spec says; the message says how to get it."""


@dataclass
class ArrayDataset:
    """Images held in memory: ``images`` is ``N x H x W`` (grey) or ``N x H x W x 3`` uint8, ``labels`` is ``N``."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array of its stored dtype and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != 0 or dtype_code not in dtypes:
        raise DatasetError(str(path), data[:4].hex(), "an IDX file (magic 0x0000 then a type code 0x08..0x0E)",
                           reason="not an IDX file")
    shape = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    return np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetMissingError(PATH_FIELD, str(root), _FASHION_MNIST_FILES, reason=f"Fashion-MNIST is missing: no {stem}.gz there")


def balanced_subset(labels: np.ndarray, count: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced random subset of ``count`` items (``count // C`` per class, the remainder
    going to the first classes); ``count`` 0 or ``>= len(labels)`` gives all indices. Sorted, deterministic."""
    if count <= 0 or count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per_class = [count // num_classes + (1 if c < count % num_classes else 0) for c in range(num_classes)]
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(members)[: per_class[c]])
    return np.sort(np.concatenate(chosen))


def load_fashion_mnist(root: str | Path, split: str, subset: int = 0, seed: int = 0) -> ArrayDataset:
    """Fashion-MNIST ``split`` (``"train"`` or ``"val"`` = the 10,000 test images), optionally a class-balanced
    subset of ``subset`` images. Raises :class:`DatasetMissingError` with an install hint, :class:`DatasetError`
    for a file that is not IDX."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetMissingError(PATH_FIELD, str(root), _FASHION_MNIST_FILES, reason="Fashion-MNIST is missing: no such folder")
    images_stem, labels_stem = _FILES[split]
    images, labels = read_idx(_find(root, images_stem)), read_idx(_find(root, labels_stem)).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{root} split {split}", f"{images.shape[0]} images, {labels.shape[0]} labels",
                           "as many labels as images")
    index = balanced_subset(labels, subset, 10, seed)
    return ArrayDataset(images[index], labels[index], 10)


class _AugmentedArrays:
    """torch Dataset: PIL augmentation of in-memory arrays -> normalised ``C x R x R`` float tensors."""

    def __init__(self, data: ArrayDataset, transform: Any) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.data.images[i])), int(self.data.labels[i])


def _array_transform(resolution: int, recipe: Any, train: bool, channels: int) -> Any:
    from timm.data import rand_augment_transform
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms as T

    mean, std = normalization("fashion-mnist", channels)
    steps: list[Any] = [T.Resize((resolution, resolution))]
    if train:
        steps.append(T.RandomHorizontalFlip())
        if recipe.rand_augment:
            steps.append(rand_augment_transform(recipe.rand_augment, {"img_mean": 128 if channels == 1 else (128,) * 3}))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if train and recipe.reprob > 0:
        steps.append(RandomErasing(recipe.reprob, mode=recipe.remode, device="cpu"))
    return T.Compose(steps)


def build_datasets(dataset: Any, recipe: Any, resolution: int, in_chans: int, seed: int = 0) -> tuple[Any, Any, int]:
    """The training and validation torch Datasets of a :class:`gpunet.spec.DatasetSpec`.

    Images come out as ``in_chans x resolution x resolution`` float tensors. Returns ``(train, val,
    num_classes)``. Raises :class:`DatasetMissingError` when the data is not there.
    """
    if dataset.kind == "fashion-mnist":
        train = load_fashion_mnist(dataset.root, "train", dataset.train_subset, seed)
        val = load_fashion_mnist(dataset.root, "val", dataset.val_subset, seed)
        if in_chans == 3:
            train.images, val.images = (np.repeat(d.images[..., None], 3, axis=-1) for d in (train, val))
        return (_AugmentedArrays(train, _array_transform(resolution, recipe, True, in_chans)),
                _AugmentedArrays(val, _array_transform(resolution, recipe, False, in_chans)), 10)
    if dataset.kind == "imagefolder":
        return _image_folder(dataset, recipe, resolution, seed)
    raise DatasetError("spec.training.dataset.kind", dataset.kind, DATASET_KINDS)


def _image_folder(dataset: Any, recipe: Any, resolution: int, seed: int) -> tuple[Any, Any, int]:
    import torch
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    root = Path(dataset.root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DatasetMissingError(PATH_FIELD, str(root), _IMAGE_FOLDER_LAYOUT,
                                      reason=f"ImageFolder dataset is missing: no {split}/ folder there")
    train_tf = create_transform(resolution, is_training=True, auto_augment=recipe.rand_augment or None,
                                re_prob=recipe.reprob, re_mode=recipe.remode, crop_pct=recipe.crop_pct)
    val_tf = create_transform(resolution, is_training=False, crop_pct=recipe.crop_pct)
    train, val = ImageFolder(str(root / "train"), train_tf), ImageFolder(str(root / "val"), val_tf)
    if dataset.train_subset:
        train = torch.utils.data.Subset(train, balanced_subset(np.asarray(train.targets), dataset.train_subset, len(train.classes), seed).tolist())
    if dataset.val_subset:
        val = torch.utils.data.Subset(val, balanced_subset(np.asarray(val.targets), dataset.val_subset, len(val.classes), seed).tolist())
    num_classes = len(train.dataset.classes if isinstance(train, torch.utils.data.Subset) else train.classes)
    return train, val, num_classes


def normalization(kind: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` that the input pipeline of dataset ``kind`` subtracts and divides by, after
    scaling pixels to [0, 1]: Fashion-MNIST's own statistics, or timm's ImageNet defaults for ImageFolder."""
    if kind == "fashion-mnist":
        return (FASHION_MNIST_MEAN,) * in_chans, (FASHION_MNIST_STD,) * in_chans
    if kind == "imagefolder":
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    raise DatasetError("spec.training.dataset.kind", kind, DATASET_KINDS)


def available_cpus() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
