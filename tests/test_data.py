"""Tests of mexit.data: every dataset loaded through ``load`` from files written here in its real format."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image
from torch.utils.data import DataLoader

from mexit.data import DATASETS, DataConfig, Splits, generated, input_shape, load

CLASSES = 4  # classes in the written real-format datasets
TRAIN_PER_CLASS = 10
TEST_PER_CLASS = 2


def _labels(per_class: int) -> list[int]:
    return [label for label in range(CLASSES) for _ in range(per_class)]


def write_cifar(root: Path, name: str) -> None:
    generated.write(root, name, classes=CLASSES, train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS)


def write_tinyimagenet(root: Path) -> None:
    generated.write(root, "tinyimagenet", classes=CLASSES, train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS)


def write_imagenet(root: Path) -> None:
    generated.write(root, "imagenet", classes=CLASSES, train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS)


WRITERS = {
    "cifar10": lambda root: write_cifar(root, "cifar10"),
    "cifar100": lambda root: write_cifar(root, "cifar100"),
    "tinyimagenet": write_tinyimagenet,
    "imagenet": write_imagenet,
}
SHAPES = {
    "mnist5k": (1, 32, 32),
    "digits": (1, 8, 8),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "tinyimagenet": (3, 64, 64),
    "imagenet": (3, 224, 224),
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, str]:
    """One data_root per real dataset, written once for the module."""
    result = {}
    for name, write in WRITERS.items():
        root = tmp_path_factory.mktemp(name)
        write(root)
        result[name] = str(root)
    return result


def config_for(name: str, roots: dict[str, str], **overrides) -> DataConfig:
    return DataConfig(name=name, data_root=roots.get(name), **overrides)


@pytest.mark.parametrize("name", DATASETS)
def test_load_every_dataset(name: str, roots: dict[str, str]) -> None:
    splits = load(config_for(name, roots))
    classes = 10 if name in ("mnist5k", "digits") else CLASSES
    assert splits.name == name
    assert splits.num_classes == classes
    assert splits.input_shape == SHAPES[name] == input_shape(config_for(name, roots))
    for split in ("train", "train_eval", "val", "test"):
        dataset = getattr(splits, split)
        image, label = dataset[len(dataset) - 1]
        assert type(image) is torch.Tensor and image.dtype == torch.float32
        assert image.shape == SHAPES[name]
        assert type(label) is int and label == splits.targets(split)[-1].item()
        targets = splits.targets(split)
        assert targets.dtype == torch.int64 and len(targets) == len(dataset)
        assert set(targets.tolist()) == set(range(classes)), f"a class is missing from {split}"
    assert torch.equal(splits.targets("train"), splits.targets("train_eval"))
    assert len(splits.val) == pytest.approx(0.1 * (len(splits.train) + len(splits.val)), abs=1)
    if name not in ("mnist5k", "digits"):
        assert len(splits.train) + len(splits.val) == CLASSES * TRAIN_PER_CLASS
        assert len(splits.test) == CLASSES * TEST_PER_CLASS


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_embedded_splits_are_disjoint_and_stratified(name: str) -> None:
    splits = load(DataConfig(name=name))
    rows = [set(getattr(splits, split).indices.tolist()) for split in ("train", "val", "test")]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    total = sum(len(r) for r in rows)
    assert len(rows[2]) == pytest.approx(0.2 * total, abs=1)
    for split in ("train", "val", "test"):
        counts = torch.bincount(splits.targets(split), minlength=10).float()
        share = counts / counts.sum()
        assert share.max() - share.min() < 0.05, f"{split} is not stratified"
    if name == "mnist5k":  # the pilot's split
        assert (len(splits.train), len(splits.val), len(splits.test)) == (3600, 400, 1000)
        assert total == 5000


def test_mnist5k_images_are_real_digits() -> None:
    splits = load(DataConfig())
    image, _ = splits.train_eval[0]
    pixels = image * 0.3081 + 0.1307  # undo the normalisation
    assert torch.all(pixels[:, :2] .abs() < 1e-6) and torch.all(pixels[:, :, -2:].abs() < 1e-6), "2-pixel zero pad"
    assert 0.9 < pixels.max() <= 1.0 + 1e-6 and pixels.min().abs() < 1e-6
    batch, labels = next(iter(DataLoader(splits.train, batch_size=8)))
    assert batch.shape == (8, 1, 32, 32) and labels.dtype == torch.int64


@pytest.mark.parametrize("name", DATASETS)
def test_loading_is_deterministic(name: str, roots: dict[str, str]) -> None:
    config = config_for(name, roots, noise_std=0.1, image_size=16)
    first, second = load(config), load(config)
    for split in ("train", "val", "test"):
        assert torch.equal(first.targets(split), second.targets(split))
    assert torch.equal(first.val[0][0], second.val[0][0])
    assert torch.equal(first.test[1][0], second.test[1][0])
    other = load(config_for(name, roots, noise_std=0.1, image_size=16, seed=1))
    assert not np.array_equal(first.val.indices, other.val.indices), "the seed picks the split"


@pytest.mark.parametrize("name", DATASETS)
def test_noise_fixed_on_eval_fresh_on_train(name: str, roots: dict[str, str]) -> None:
    clean = load(config_for(name, roots, image_size=16))
    noisy = load(config_for(name, roots, image_size=16, noise_std=0.5))
    for split in ("train_eval", "val", "test"):
        dataset = getattr(noisy, split)
        assert torch.equal(dataset[0][0], dataset[0][0]), f"{split} noise must be fixed"
        assert not torch.equal(dataset[0][0], getattr(clean, split)[0][0]), f"{split} is noised as training is"
    noise = {split: getattr(noisy, split)[0][0] - getattr(clean, split)[0][0] for split in ("train_eval", "val", "test")}
    assert not torch.allclose(noise["train_eval"], noise["val"]) and not torch.allclose(noise["train_eval"], noise["test"]), \
        "each split draws its own noise"
    torch.manual_seed(0)
    first = noisy.train[0][0]
    again = noisy.train[0][0]
    torch.manual_seed(0)
    assert torch.equal(noisy.train[0][0], first), "train noise comes from torch's global RNG"
    assert not torch.equal(first, again), "train noise is fresh on every access"


def test_noise_is_in_pixel_units_before_normalisation() -> None:
    clean, noisy = load(DataConfig(name="digits")), load(DataConfig(name="digits", noise_std=0.5))
    pixel_std = 0.3760  # digits' normalisation std
    diffs = torch.stack([noisy.val[i][0] - clean.val[i][0] for i in range(len(noisy.val))]) * pixel_std
    assert diffs.mean().abs() < 0.02
    assert diffs.std().item() == pytest.approx(0.5, rel=0.05)
    assert not torch.equal(noisy.val[0][0] - clean.val[0][0], noisy.test[0][0] - clean.test[0][0])


@pytest.mark.parametrize("name", ["mnist5k", "cifar10", "imagenet"])
def test_train_size_takes_a_stratified_subset(name: str, roots: dict[str, str]) -> None:
    full = load(config_for(name, roots))
    size = 1000 if name == "mnist5k" else 2 * CLASSES
    subset = load(config_for(name, roots, train_size=size))
    assert len(subset.train) == len(subset.train_eval) == size
    assert set(subset.train.indices.tolist()) <= set(full.train.indices.tolist())
    counts = torch.bincount(subset.targets("train"))
    assert counts.max() - counts.min() <= 1
    assert torch.equal(subset.targets("val"), full.targets("val"))
    assert torch.equal(subset.targets("test"), full.targets("test"))
    same = load(config_for(name, roots, train_size=full.train.indices.size))
    assert torch.equal(same.targets("train"), full.targets("train"))


@pytest.mark.parametrize(
    ("name", "size", "train_shape"),
    [("mnist5k", 28, (1, 28, 28)), ("mnist5k", 16, (1, 16, 16)), ("digits", 11, (1, 11, 11)),
     ("cifar100", 20, (3, 20, 20)), ("tinyimagenet", 32, (3, 32, 32)), ("imagenet", 24, (3, 24, 24))],
)
def test_image_size(name: str, size: int, train_shape: tuple, roots: dict[str, str]) -> None:
    splits = load(config_for(name, roots, image_size=size))
    assert splits.input_shape == train_shape
    assert splits.train[0][0].shape == splits.val[0][0].shape == splits.test[0][0].shape == train_shape


def test_embedded_images_are_zero_padded_centrally() -> None:
    native = load(DataConfig(name="digits")).train_eval[0][0] * 0.3760 + 0.3053
    padded = load(DataConfig(name="digits", image_size=11)).train_eval[0][0] * 0.3760 + 0.3053
    assert torch.allclose(padded[:, 1:9, 1:9], native, atol=1e-6)
    padded[:, 1:9, 1:9] = 0
    assert torch.all(padded.abs() < 1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "svhn"}, "name must be one of ('mnist5k', 'digits', 'cifar10', 'cifar100', 'tinyimagenet', 'imagenet')"),
        ({"val_fraction": 0.0}, "val_fraction must be in (0, 1)"),
        ({"val_fraction": 1.0}, "val_fraction must be in (0, 1)"),
        ({"train_size": 0}, "train_size must be a positive integer"),
        ({"train_size": 3601}, "train_size must be at most 3600"),
        ({"train_size": 5}, "cannot make a stratified train_size"),
        ({"noise_std": -0.1}, "noise_std must be a finite number >= 0"),
        ({"noise_std": float("nan")}, "noise_std must be a finite number >= 0"),
        ({"image_size": 0}, "image_size must be a positive integer"),
        ({"seed": -1}, "seed must be an integer"),
        ({"download": True}, "download=True is only supported for cifar10 and cifar100"),
        ({"name": "cifar10"}, "data_root is required for cifar10: a folder holding cifar-10-batches-py/"),
        ({"name": "cifar100"}, "data_root is required for cifar100: a folder holding cifar-100-python/"),
        ({"name": "tinyimagenet"}, "data_root is required for tinyimagenet: a folder holding tiny-imagenet-200/"),
        ({"name": "imagenet"}, "data_root is required for imagenet: a folder holding train/<class>/<image>"),
    ],
)
def test_bad_config_is_rejected(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        load(DataConfig(**overrides))
    assert message in str(error.value)


def test_bad_split_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load(DataConfig(name="digits")).targets("validation")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar10", "expected cifar10 in torchvision's format at {root}/cifar-10-batches-py (data_batch_1, "
         "data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch, batches.meta); missing data_batch_1"),
        ("cifar100", "expected cifar100 in torchvision's format at {root}/cifar-100-python (train, test, meta)"),
        ("tinyimagenet", "expected TinyImageNet at {root}/tiny-imagenet-200 (tiny-imagenet-200/ with wnids.txt"),
        ("imagenet", "expected ImageNet at {root} (train/<class>/<image> and val/<class>/<image>"),
    ],
)
def test_missing_files_name_the_expected_path(name: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load(DataConfig(name=name, data_root=str(tmp_path)))
    assert expected.format(root=tmp_path) in str(error.value)
    if name.startswith("cifar"):
        assert "pass download=True (data.download=true on the command line) to fetch it" in str(error.value)


def test_partly_missing_files_are_named(roots: dict[str, str], tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="missing test_batch;"):
        load(DataConfig(name="cifar10", data_root=str(tmp_path)))
    write_tinyimagenet(tmp_path)
    (tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_0.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match="val_0.JPEG"):
        load(DataConfig(name="tinyimagenet", data_root=str(tmp_path)))
    write_imagenet(tmp_path / "inet")
    (tmp_path / "inet" / "val" / "n00000001").rename(tmp_path / "inet" / "val" / "n99999999")
    with pytest.raises(FileNotFoundError, match="class folders of .*val differ"):
        load(DataConfig(name="imagenet", data_root=str(tmp_path / "inet")))


def test_download_goes_through_torchvision_only_when_asked(tmp_path: Path, monkeypatch) -> None:
    calls = []

    class FakeCIFAR100(torchvision.datasets.CIFAR100):
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((root, download))
            write_cifar(Path(root), "cifar100")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    with pytest.raises(FileNotFoundError):
        load(DataConfig(name="cifar100", data_root=str(tmp_path)))
    assert calls == []
    splits = load(DataConfig(name="cifar100", data_root=str(tmp_path), download=True))
    assert calls == [(str(tmp_path), True)]
    assert isinstance(splits, Splits) and splits.num_classes == CLASSES


@pytest.mark.parametrize("name", DATASETS)
def test_train_items_are_augmented(name: str, roots: dict[str, str]) -> None:
    splits = load(config_for(name, roots, image_size=16))
    torch.manual_seed(0)
    draws = [splits.train[0][0] for _ in range(5)]
    assert any(not torch.equal(draws[0], draw) for draw in draws[1:])
    assert torch.equal(splits.train_eval[0][0], splits.train_eval[0][0])
    plain = load(config_for(name, roots, image_size=16, augment="none"))  # train items as evaluated
    assert all(torch.equal(plain.train[i][0], plain.train_eval[i][0]) for i in range(3))


def test_the_authors_augmentation_where_their_code_fixes_one(roots: dict[str, str]) -> None:
    from torchvision.transforms import v2

    for name in ("cifar100", "imagenet"):
        splits = load(config_for(name, roots, image_size=16, augment="trivial-augment"))
        steps = [type(t).__name__ for t in splits.train.pipeline.to_unit.transforms]
        assert "TrivialAugmentWide" in steps and "RandomHorizontalFlip" not in steps and "RandomCrop" not in steps
        assert any(isinstance(t, v2.RandomErasing) and t.p == 0.1 for t in splits.train.pipeline.finish.transforms)
        torch.manual_seed(0)
        draws = [splits.train[0][0] for _ in range(5)]
        assert any(not torch.equal(draws[0], draw) for draw in draws[1:])
    imagenet = load(config_for("imagenet", roots, image_size=16, augment="trivial-augment"))
    resize = imagenet.test.pipeline.to_unit.transforms[0]
    assert isinstance(resize, v2.Resize) and resize.size == [16]  # Resize(size) then CenterCrop(size)
    with pytest.raises(ValueError, match="data.augment='trivial-augment' \\(the authors' pipeline\\) is known for"):
        load(config_for("cifar10", roots, augment="trivial-augment"))
    with pytest.raises(ValueError, match="data.augment must be one of"):
        load(config_for("cifar10", roots, augment="trivial"))


def test_cifar_pixels_and_labels_match_the_pickles(roots: dict[str, str]) -> None:
    splits = load(config_for("cifar10", roots))
    with open(Path(roots["cifar10"]) / "cifar-10-batches-py" / "data_batch_1", "rb") as file:
        batch = pickle.load(file)
    position = int(np.flatnonzero(splits.train_eval.indices < len(batch["labels"]))[0])
    row = int(splits.train_eval.indices[position])
    image, label = splits.train_eval[position]
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.247, 0.243, 0.262])
    pixels = image * std[:, None, None] + mean[:, None, None]
    expected = torch.from_numpy(batch["data"][row].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(pixels, expected, atol=1e-5)
    assert label == batch["labels"][row]


def test_folder_datasets_follow_their_annotations(roots: dict[str, str]) -> None:
    tiny = load(config_for("tinyimagenet", roots))
    assert tiny.targets("test").tolist() == _labels(TEST_PER_CLASS)  # wnids sorted, whatever wnids.txt's order
    image = tiny.test[3][0] * torch.tensor([0.2302, 0.2265, 0.2262])[:, None, None]
    image += torch.tensor([0.4802, 0.4481, 0.3975])[:, None, None]
    with Image.open(Path(roots["tinyimagenet"]) / "tiny-imagenet-200" / "val" / "images" / "val_3.JPEG") as file:
        expected = torch.from_numpy(np.array(file.convert("RGB"))).permute(2, 0, 1).float() / 255
    assert torch.allclose(image, expected, atol=1e-5)
    imagenet = load(config_for("imagenet", roots))
    for split in ("train_eval", "test"):
        dataset = getattr(imagenet, split)
        folders = [Path(dataset.source.paths[row]).parent.name for row in dataset.indices]
        assert folders == [f"n{label + 1:08d}" for label in imagenet.targets(split).tolist()]


def test_generated_datasets_have_the_real_class_counts_and_layouts(tmp_path: Path) -> None:
    """``mexit smoke-data DIR``: CIFAR-100, TinyImageNet and ImageNet at 100, 200 and 1,000 classes,
    each read by its real loader from ``DIR/<name>``; ImageNet's JPEGs vary in size and colour mode."""
    from mexit.cli import main

    assert main(["smoke-data", str(tmp_path / "smoke"), "--train-per-class", "10", "--test-per-class", "1"]) == 0
    for name, classes in (("cifar100", 100), ("tinyimagenet", 200), ("imagenet", 1000)):
        splits = load(DataConfig(name=name, data_root=str(tmp_path / "smoke" / name), image_size=32))
        assert splits.num_classes == classes and len(splits.test) == classes
        assert len(splits.train) + len(splits.val) == 10 * classes
        assert set(splits.targets("val").tolist()) == set(range(classes)), "a 10% validation split holds every class"
    folder = tmp_path / "smoke" / "imagenet" / "train" / "n00000001"
    with Image.open(next(folder.iterdir())) as first:
        modes, sizes = {first.mode}, {first.size}
    for path in sorted((tmp_path / "smoke" / "imagenet" / "val").glob("*/*.JPEG"))[:12]:
        with Image.open(path) as image:
            modes.add(image.mode)
            sizes.add(image.size)
    assert modes == {"RGB", "L", "CMYK"} and len(sizes) > 3
    with pytest.raises(FileExistsError, match="exists already"):
        generated.write(tmp_path / "smoke" / "imagenet", "imagenet", classes=2)
    with pytest.raises(ValueError, match="name must be one of cifar10, cifar100, tinyimagenet, imagenet"):
        generated.write(tmp_path / "x", "mnist")
    with pytest.raises(ValueError, match="train_per_class must be >= 1"):
        generated.write(tmp_path / "x", "imagenet", train_per_class=0)


@pytest.mark.parametrize("name", ["mnist5k", "digits", "cifar10"])
def test_a_batch_equals_its_items_stacked_with_the_same_random_draws(name: str, roots: dict[str, str]) -> None:
    """Training batches are built from the images in memory at once (mexit.data.loading.batch_of):
    the same crops and noise, drawn in the same order, as item by item; other pipelines (CIFAR's
    flip) go item by item."""
    from torch.utils.data import Subset

    from mexit.data.loading import batch_loader, batch_of, in_order

    splits = load(config_for(name, roots, noise_std=0.3, image_size=16 if name != "cifar10" else None))
    positions = [5, 0, 17, 3, 3, 11]
    for dataset in (splits.train, splits.val, Subset(splits.train, list(range(len(splits.train)))[::-1])):
        chosen = [p % len(dataset) for p in positions]
        torch.manual_seed(7)
        expected = [dataset[p] for p in chosen]
        torch.manual_seed(7)
        images, labels = batch_of(dataset, chosen)
        assert torch.equal(images, torch.stack([image for image, _ in expected]))  # bit for bit
        assert labels.tolist() == [label for _, label in expected] and labels.dtype == torch.int64
    loaded = [labels for _, labels in batch_loader(splits.test, in_order(len(splits.test), 7))]
    assert [len(b) for b in loaded][:-1] == [7] * (len(loaded) - 1)
    assert torch.cat(loaded).tolist() == splits.targets("test").tolist()
