"""Training data for candidate networks: Fashion-MNIST (IDX files) and ImageFolder (ImageNet layout).

- Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; MIT licence, Zalando SE): the four IDX files
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, by default in ``/usr/share/datasets/fashion-mnist``
  (Debian package ``dataset-fashion-mnist``). 60,000 training and 10,000 test images, ``28 x 28``, 10 classes.
- ImageFolder: ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg`` (torchvision's layout).

Three splits (:func:`split_indices`, fields of :class:`gpunet.spec.DatasetSpec`):

- **validation**: ``valSplit`` images (a fraction of the training images, or a count) held out of the training
  images, class-balanced and seeded by ``dataset.seed``; the search scores and selects candidates on it
  (:func:`build_datasets`). The default is 0.1: 6,000 Fashion-MNIST images, 10% of an ImageFolder's ``train/``
  (MnasNet and EfficientNet held out 50,000 ImageNet training images the same way: ``valSplit: 50000``).
- **train**: the rest of the training images (optionally a class-balanced ``trainSubset`` of them), disjoint from
  the validation split whatever the subset.
- **test**: Fashion-MNIST's 10,000 test images, or the ImageFolder's ``val/`` (ImageNet's validation set, the split
  papers report), optionally a class-balanced ``testSubset``; used once, for the final models
  (:func:`build_test_dataset`, :func:`gpunet.train.evaluate_on_test`).

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
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: The field of the validation split's size in a ``NASSearch``.
VAL_SPLIT_FIELD = "spec.training.dataset.valSplit"
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


def holdout_count(val_split: float, total: int) -> int:
    """Images in the validation split: ``round(val_split x total)`` for a fraction below 1, else ``val_split``.

    Raises:
        DatasetError: not at least one image, or not fewer than ``total`` (training needs images too).
    """
    count = int(round(val_split * total)) if val_split < 1 else int(val_split)
    if not 1 <= count < total:
        raise DatasetError(VAL_SPLIT_FIELD, val_split, f"a fraction or a count leaving 1..{total - 1} of the {total} "
                           "training images for validation", reason=f"that holds out {count}")
    return count


@dataclass(frozen=True)
class Splits:
    """Indices into the training images (``N`` labels) of the train and validation splits: sorted int64 arrays,
    disjoint."""

    train: np.ndarray
    val: np.ndarray


def split_indices(labels: np.ndarray, num_classes: int, val_split: float, train_subset: int = 0, val_subset: int = 0,
                  seed: int = 0) -> Splits:
    """The validation split held out of ``labels`` (``N``, the training images' classes) and the train split left.

    The validation split is a class-balanced random subset of :func:`holdout_count` images, drawn with ``seed``
    first, so it does not depend on ``train_subset``; then ``train_subset`` (0 = all) of the remaining images and
    ``val_subset`` (0 = all) of the validation split, class-balanced, with seeds derived from ``seed``.

    Raises:
        DatasetError: ``val_split`` holds out no image or all of them.
    """
    labels = np.asarray(labels)
    val = balanced_subset(labels, holdout_count(val_split, len(labels)), num_classes, seed)
    rest = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    train = rest[balanced_subset(labels[rest], train_subset, num_classes, seed + 1)]
    val = val[balanced_subset(labels[val], val_subset, num_classes, seed + 2)]
    return Splits(train, val)


def load_fashion_mnist(root: str | Path, split: str, subset: int = 0, seed: int = 0) -> ArrayDataset:
    """Fashion-MNIST ``split`` (``"train"``: the 60,000 training images; ``"test"``: the 10,000 test images),
    optionally a class-balanced subset of ``subset`` images. Raises :class:`DatasetMissingError` with an install
    hint, :class:`DatasetError` for a file that is not IDX."""
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


def build_datasets(dataset: Any, recipe: Any, resolution: int, in_chans: int) -> tuple[Any, Any, int]:
    """The train and validation torch Datasets of a :class:`gpunet.spec.DatasetSpec` (:func:`split_indices` of
    its training images: the search never sees the test split).

    Images come out as ``in_chans x resolution x resolution`` float tensors (training augmentation on the train
    split, resize only on the validation split). Returns ``(train, val, num_classes)``. Raises
    :class:`DatasetMissingError` when the data is not there, :class:`DatasetError` for a bad ``valSplit``.
    """
    if dataset.kind == "fashion-mnist":
        full = load_fashion_mnist(dataset.root, "train")
        splits = split_indices(full.labels, full.num_classes, dataset.val_split, dataset.train_subset,
                               dataset.val_subset, dataset.seed)
        train, val = (_channels(ArrayDataset(full.images[i], full.labels[i], 10), in_chans) for i in (splits.train, splits.val))
        return (_AugmentedArrays(train, _array_transform(resolution, recipe, True, in_chans)),
                _AugmentedArrays(val, _array_transform(resolution, recipe, False, in_chans)), 10)
    if dataset.kind == "imagefolder":
        folder = _folder(dataset, "train")  # scanned once; each split applies its own transform
        splits = split_indices(np.asarray(folder.targets), len(folder.classes), dataset.val_split,
                               dataset.train_subset, dataset.val_subset, dataset.seed)
        train_tf, val_tf = _folder_transforms(recipe, resolution)
        return _Transformed(folder, splits.train, train_tf), _Transformed(folder, splits.val, val_tf), len(folder.classes)
    raise DatasetError("spec.training.dataset.kind", dataset.kind, DATASET_KINDS)


def build_test_dataset(dataset: Any, recipe: Any, resolution: int, in_chans: int) -> tuple[Any, int]:
    """The test torch Dataset of a :class:`gpunet.spec.DatasetSpec`: Fashion-MNIST's 10,000 test images or the
    ImageFolder's ``val/`` (a class-balanced ``testSubset`` of them, seeded by ``dataset.seed``), resized like the
    validation split. Returns ``(test, num_classes)``; for the final models only (see the module docstring).
    Raises :class:`DatasetMissingError` when the data is not there."""
    if dataset.kind == "fashion-mnist":
        test = _channels(load_fashion_mnist(dataset.root, "test", dataset.test_subset, dataset.seed), in_chans)
        return _AugmentedArrays(test, _array_transform(resolution, recipe, False, in_chans)), 10
    if dataset.kind == "imagefolder":
        folder = _folder(dataset, "val")
        index = balanced_subset(np.asarray(folder.targets), dataset.test_subset, len(folder.classes), dataset.seed)
        return _Transformed(folder, index, _folder_transforms(recipe, resolution)[1]), len(folder.classes)
    raise DatasetError("spec.training.dataset.kind", dataset.kind, DATASET_KINDS)


def _channels(data: ArrayDataset, in_chans: int) -> ArrayDataset:
    """Grey images repeated into 3 channels for a 3-channel network."""
    if in_chans == 3 and data.images.ndim == 3:
        data.images = np.repeat(data.images[..., None], 3, axis=-1)
    return data


def _folder_transforms(recipe: Any, resolution: int) -> tuple[Any, Any]:
    """timm's ImageNet training and evaluation transforms of the recipe."""
    from timm.data import create_transform

    train_tf = create_transform(resolution, is_training=True, auto_augment=recipe.rand_augment or None,
                                re_prob=recipe.reprob, re_mode=recipe.remode, crop_pct=recipe.crop_pct)
    return train_tf, create_transform(resolution, is_training=False, crop_pct=recipe.crop_pct)


class _Transformed:
    """torch Dataset: the items ``indices`` of ``base`` (which yields ``(PIL image, label)``) through ``transform``."""

    def __init__(self, base: Any, indices: np.ndarray, transform: Any) -> None:
        self.base, self.indices, self.transform = base, [int(i) for i in indices], transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image, label = self.base[self.indices[i]]
        return self.transform(image), int(label)


def _folder(dataset: Any, split: str) -> Any:
    from torchvision.datasets import ImageFolder

    root = Path(dataset.root)
    for name in ("train", "val"):  # both are needed: a search without its test split cannot finish
        if not (root / name).is_dir():
            raise DatasetMissingError(PATH_FIELD, str(root), _IMAGE_FOLDER_LAYOUT,
                                      reason=f"ImageFolder dataset is missing: no {name}/ folder there")
    return ImageFolder(str(root / split))


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
