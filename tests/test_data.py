"""Datasets: the IDX reader, class-balanced subsets, the missing-dataset hint, transforms' output shapes."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from gpunet.data import DatasetMissingError, balanced_subset, load_fashion_mnist, read_idx
from gpunet.errors import GpunetError
from gpunet.spec import DatasetSpec, RecipeSpec

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.fixture
def fake_fmnist(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("t10k", 50)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 255, size=(n, 28, 28))
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels)  # uncompressed works too
    return tmp_path


def test_read_idx_round_trips(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", a)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), a)


def test_read_idx_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 20)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "x")


def test_balanced_subset_has_equal_classes_and_is_deterministic() -> None:
    labels = np.repeat(np.arange(10), 50)
    idx = balanced_subset(labels, 95, 10, seed=3)
    counts = np.bincount(labels[idx], minlength=10)
    assert len(idx) == 95 and counts.max() - counts.min() <= 1
    assert np.array_equal(idx, balanced_subset(labels, 95, 10, seed=3))
    assert len(balanced_subset(labels, 0, 10)) == 500


def test_fashion_mnist_subsets(fake_fmnist: Path) -> None:
    train = load_fashion_mnist(fake_fmnist, "train", subset=40)
    val = load_fashion_mnist(fake_fmnist, "val")
    assert train.images.shape == (40, 28, 28) and np.bincount(train.labels).tolist() == [4] * 10
    assert len(val) == 50 and train.num_classes == 10


def test_missing_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist") as missing:
        load_fashion_mnist(tmp_path / "nowhere", "train")
    assert isinstance(missing.value, GpunetError) and isinstance(missing.value, FileNotFoundError)
    assert str(missing.value).startswith(f"spec.training.dataset.path: got '{tmp_path / 'nowhere'}'; ")
    with pytest.raises(DatasetMissingError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path, "train")


def test_image_folder_missing_split_is_explained(tmp_path: Path) -> None:
    from gpunet.data import build_datasets

    with pytest.raises(DatasetMissingError, match="ImageNet layout"):
        build_datasets(DatasetSpec(kind="imagefolder", path=str(tmp_path)), RecipeSpec(), 32, 3)


def test_transforms_give_network_sized_tensors(fake_fmnist: Path) -> None:
    from gpunet.data import build_datasets

    train, val, classes = build_datasets(DatasetSpec(path=str(fake_fmnist), train_subset=20), RecipeSpec(), 32, 1)
    x, y = train[0]
    assert tuple(x.shape) == (1, 32, 32) and 0 <= y < 10 and classes == 10
    xv, _ = val[0]
    assert tuple(xv.shape) == (1, 32, 32)


def test_image_folder_reads_the_imagenet_layout(tmp_path: Path) -> None:
    from PIL import Image

    from gpunet.data import build_datasets

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (i * 90, 10, 200)).save(tmp_path / split / cls / f"{i}.png")
    train, val, classes = build_datasets(DatasetSpec(kind="imagefolder", path=str(tmp_path)), RecipeSpec(rand_augment=""), 32, 3)
    assert classes == 2 and len(train) == 4 and tuple(val[0][0].shape) == (3, 32, 32)


@pytest.mark.skipif(not (FMNIST / "t10k-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")
def test_installed_fashion_mnist() -> None:
    val = load_fashion_mnist(FMNIST, "val", subset=100)
    assert val.images.shape == (100, 28, 28) and np.bincount(val.labels).tolist() == [10] * 10
