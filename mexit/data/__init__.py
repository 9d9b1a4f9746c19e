"""Datasets by name: two embedded offline ones and the paper's datasets from a local ``data_root``.

``load(DataConfig(...))`` returns the four splits of one dataset (train, train_eval, val, test); every
item is ``(float32 C x H x W image, int label)``. Splits are stratified and seeded by ``config.seed``.

Input noise (``noise_std``) is Gaussian, in [0, 1] pixel units, added after the geometric transforms
and before normalisation, without clamping. ``train`` draws fresh noise on every access from torch's
global RNG; ``train_eval``, ``val`` and ``test`` draw it from a generator seeded by (seed, split,
index), so repeated evaluation sees identical inputs, each split its own draws. ``train_eval`` (the
training images through the evaluation transform: probes, BatchNorm statistics of the analyses)
is noised as training and testing are: the models are measured on the inputs they were trained
for. Nothing is downloaded unless ``download=True`` (CIFAR only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mexit.data.loading import ImageDataset, Splits, load

__all__ = ["DATASETS", "SPLITS", "STANDARD_CLASSES", "DataConfig", "ImageDataset", "Splits", "input_shape", "load"]

DATASETS: tuple[str, ...] = ("mnist5k", "digits", "cifar10", "cifar100", "tinyimagenet", "imagenet")
SPLITS: tuple[str, ...] = ("train", "train_eval", "val", "test")
AUGMENTATIONS: tuple[str, ...] = ("crop-flip", "trivial-augment", "none")
AUTHORS_AUGMENTATION: tuple[str, ...] = ("cifar100", "tinyimagenet", "imagenet")
VAL_TRANSFORMS: tuple[str, ...] = ("eval", "train")

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
_TRAIN_SPLIT = {  # images of the public train split (the embedded sets' test split is carved out of it)
    "mnist5k": 5000, "digits": 1797, "cifar10": 50000, "cifar100": 50000, "tinyimagenet": 100000, "imagenet": 1281167,
}


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to split, resize and perturb it.

    ``augment`` is the training split's augmentation: ``crop-flip`` (ours: random crops, and flips
    for the colour datasets; on TinyImageNet the authors' TrivialAugmentWide pipeline),
    ``trivial-augment`` (the authors' pipelines, built on TrivialAugmentWide, for the datasets
    whose pipeline their code fixes: :data:`AUTHORS_AUGMENTATION`), or ``none`` (the evaluation
    transform: for comparisons that must not depend on augmentation draws). The earlier spellings
    ``ours`` and ``authors`` are read as these (:data:`mexit.config.OPTION_ALIASES`).
    ``val_transform`` is what early stopping sees of the validation split: ``eval`` (ours: the
    evaluation transform) or ``train`` (the authors': the training transform, augmented); the
    validation logits a run stores always go through the evaluation transform.
    """

    name: str = "mnist5k"
    data_root: str | None = None
    train_size: int | None = None
    noise_std: float = 0.0
    image_size: int | None = None
    download: bool = False
    val_fraction: float = 0.1
    augment: str = "crop-flip"
    val_transform: str = "eval"
    seed: int = 0


def input_shape(config: DataConfig) -> tuple[int, int, int]:
    """The (C, H, W) of every item ``load(config)`` gives, known without reading any file."""
    validate(config)
    size = config.image_size or _DEFAULT_SIZE[config.name]
    return (len(_MEAN_STD[config.name][0]), size, size)


def train_images(config: DataConfig, holdout: bool = True) -> int:
    """About how many images one training epoch reads (``train_size``, or the public dataset's train
    split less ``val_fraction`` when a validation split is held out), known without reading any
    file; ``load`` counts what is on disk."""
    validate(config)
    pool = _TRAIN_SPLIT[config.name] * (1 - _EMBEDDED_TEST_FRACTION if config.name in ("mnist5k", "digits") else 1)
    return config.train_size or round(pool * (1 - config.val_fraction if holdout else 1))


def needs_data_root(name: str) -> bool:
    """Whether dataset ``name`` is read from files under a ``data_root`` (not embedded or generated in memory)."""
    return name in _LAYOUTS


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
    if config.val_transform not in VAL_TRANSFORMS:
        raise ValueError(f"data.val_transform must be one of {VAL_TRANSFORMS}, got {config.val_transform!r}")
    if config.augment not in AUGMENTATIONS:
        raise ValueError(f"data.augment must be one of {AUGMENTATIONS}, got {config.augment!r}")
    if config.augment == "trivial-augment" and config.name not in AUTHORS_AUGMENTATION:
        raise ValueError(
            f"data.augment='trivial-augment' (the authors' pipeline) is known for {AUTHORS_AUGMENTATION} only (the "
            f"authors' code fixes no pipeline for {config.name}); use 'crop-flip' or 'none'"
        )
    if config.download and config.name not in ("cifar10", "cifar100"):
        raise ValueError(f"download=True is only supported for cifar10 and cifar100, not {config.name!r}")


_LOADING = ("ImageDataset", "Splits", "load")


def __getattr__(name: str) -> Any:
    """``load``, ``ImageDataset`` and ``Splits`` come from :mod:`mexit.data.loading`, imported on
    first use: reading a config needs no torch, so commands such as ``mexit runs list`` start fast."""
    if name in _LOADING:
        from mexit.data import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
