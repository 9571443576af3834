"""Datasets: the IDX reader, class-balanced subsets, the three splits (train, validation held out of it, test), the
missing-dataset hint, transforms' output shapes, and the one evaluation on the test split."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from gpunet.data import DatasetError, DatasetMissingError, balanced_subset, holdout_count, load_fashion_mnist, read_idx, split_indices
from gpunet.errors import GpunetError
from gpunet.spec import DatasetSpec, RecipeSpec, TrainingSpec

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
    test = load_fashion_mnist(fake_fmnist, "test")
    assert train.images.shape == (40, 28, 28) and np.bincount(train.labels).tolist() == [4] * 10
    assert len(test) == 50 and train.num_classes == 10


def test_validation_split_is_held_out_class_balanced_and_seeded() -> None:
    labels = np.repeat(np.arange(10), 100)
    splits = split_indices(labels, 10, 0.2, seed=5)
    assert len(splits.val) == 200 and np.bincount(labels[splits.val]).tolist() == [20] * 10
    assert np.intersect1d(splits.train, splits.val).size == 0
    assert np.array_equal(np.union1d(splits.train, splits.val), np.arange(1000))
    again, other = split_indices(labels, 10, 0.2, seed=5), split_indices(labels, 10, 0.2, seed=6)
    assert np.array_equal(again.val, splits.val) and np.array_equal(again.train, splits.train)
    assert not np.array_equal(other.val, splits.val)


def test_train_subset_excludes_the_validation_images_and_leaves_them_unchanged() -> None:
    labels = np.repeat(np.arange(10), 100)
    full = split_indices(labels, 10, 150, seed=1)  # a count
    sub = split_indices(labels, 10, 150, train_subset=300, val_subset=50, seed=1)
    assert len(full.val) == 150 and len(sub.train) == 300 and len(sub.val) == 50
    assert np.bincount(labels[sub.train]).tolist() == [30] * 10 and np.bincount(labels[sub.val]).tolist() == [5] * 10
    assert np.intersect1d(sub.train, full.val).size == 0, "the train subset never takes a validation image"
    assert np.isin(sub.val, full.val).all(), "the validation subset is drawn from the held-out images"


def test_val_split_must_leave_images_on_both_sides() -> None:
    assert holdout_count(0.1, 60_000) == 6000 and holdout_count(5000.0, 60_000) == 5000
    for bad in (60_000.0, 0.000001):
        with pytest.raises(DatasetError, match="spec.training.dataset.valSplit"):
            holdout_count(bad, 60_000)


def _ids(dataset) -> set[bytes]:
    return {img.tobytes() for img in dataset.data.images}


def test_fashion_mnist_validation_comes_from_the_training_file_and_test_from_the_test_file(fake_fmnist: Path) -> None:
    from gpunet.data import build_datasets, build_test_dataset

    spec = DatasetSpec(path=str(fake_fmnist), val_split=0.25, test_subset=20, seed=3)
    train, val, _ = build_datasets(spec, RecipeSpec(), 28, 1)
    test, classes = build_test_dataset(spec, RecipeSpec(), 28, 1)
    train_file, test_file = (_ids(type("D", (), {"data": load_fashion_mnist(fake_fmnist, s)})) for s in ("train", "test"))
    assert len(val) == 50 and len(train) == 150 and len(test) == 20 and classes == 10
    assert _ids(val) <= train_file and _ids(train) <= train_file and not _ids(val) & _ids(train)
    assert _ids(test) <= test_file and not _ids(test) & train_file
    assert np.bincount(test.data.labels).tolist() == [2] * 10
    assert _ids(build_datasets(spec, RecipeSpec(), 28, 1)[1]) == _ids(val), "seeded: the same split every time"


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


def test_image_folder_holds_validation_out_of_train_and_tests_on_val(tmp_path: Path) -> None:
    from PIL import Image

    from gpunet.data import build_datasets, build_test_dataset

    for split, n in (("train", 5), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 40), (i * 40, 10, 200)).save(tmp_path / split / cls / f"{i}.png")
    spec = DatasetSpec(kind="imagefolder", path=str(tmp_path), val_split=4)
    train, val, classes = build_datasets(spec, RecipeSpec(rand_augment=""), 32, 3)
    test, test_classes = build_test_dataset(spec, RecipeSpec(), 32, 3)
    assert classes == test_classes == 2 and len(train) == 6 and len(val) == 4 and len(test) == 4
    assert not set(train.indices) & set(val.indices) and sorted(val.base.targets[i] for i in val.indices) == [0, 0, 1, 1]
    assert tuple(val[0][0].shape) == (3, 32, 32) and tuple(test[0][0].shape) == (3, 32, 32)
    assert all("/val/" in test.base.samples[i][0] for i in test.indices)
    assert all("/train/" in val.base.samples[i][0] for i in val.indices)


def test_evaluate_on_test_scores_the_weights_validation_chose(fake_fmnist: Path, tmp_path: Path) -> None:
    import torch

    from controller_helpers import MICRO_SPACE
    from gpunet.space import load_space
    from gpunet.train import evaluate_on_test, load_checkpoint, recipe_architecture, train_candidate

    space = load_space(MICRO_SPACE)
    arch = space.decode(space.sample(1, seed=0)[0].tolist())
    training = TrainingSpec(dataset=DatasetSpec(path=str(fake_fmnist), val_split=20, train_subset=40), epochs=1,
                            batch_size=20, recipe=RecipeSpec(rand_augment="", ema=0.0, reprob=0.0))
    outcome = train_candidate(arch, training, tmp_path / "c.pt")
    result = evaluate_on_test(arch, training, outcome.checkpoint_path)
    assert result.images == 50 and result.weights == "raw" and result.epoch == 1
    assert result.val_top1 == pytest.approx(outcome.best_top1) and 0.0 <= result.top1 <= 1.0
    # weights the validation split preferred are the ones tested: zeroed EMA weights predict class 0 everywhere
    state = load_checkpoint(outcome.checkpoint_path, recipe_architecture(arch, training, 10))
    state["ema"] = {k: torch.zeros_like(v) for k, v in state["model"].items()}
    state["ema_better"] = True
    torch.save(state, tmp_path / "ema.pt")
    zeroed = evaluate_on_test(arch, training, tmp_path / "ema.pt")
    assert zeroed.weights == "ema" and zeroed.top1 == pytest.approx(0.1)


def test_any_classifier_is_scored_on_the_test_split(fake_fmnist: Path) -> None:
    import torch

    from gpunet.train import top1_on_test

    class Says(torch.nn.Module):
        """Predicts class ``c`` for every image."""

        def __init__(self, c: int) -> None:
            super().__init__()
            self.c = c

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(torch.full((x.shape[0],), self.c), 10).float()

    training = TrainingSpec(dataset=DatasetSpec(path=str(fake_fmnist), test_subset=20))
    # the fake test file has 5 images per class; a subset of 20 keeps 2 per class
    assert top1_on_test(Says(3), training, 28, 1) == pytest.approx(2 / 20)


@pytest.mark.skipif(not (FMNIST / "t10k-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")
def test_installed_fashion_mnist() -> None:
    test = load_fashion_mnist(FMNIST, "test", subset=100)
    assert test.images.shape == (100, 28, 28) and np.bincount(test.labels).tolist() == [10] * 10
    splits = split_indices(load_fashion_mnist(FMNIST, "train").labels, 10, DatasetSpec().val_split)
    assert len(splits.val) == 6000 and len(splits.train) == 54_000
