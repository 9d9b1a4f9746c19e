"""Test-time corruptions of the ImageNet-C families that can be made offline, at severities 1-5.

After Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019): the families and their five severities are those of their CIFAR-10-C
code, applied to a float image in [0, 1] (C x H x W, one or three channels) before normalisation.
Where this differs from theirs it is ours, and said so:

- ``gaussian_noise``: add N(0, s^2), s = 0.04, 0.06, 0.08, 0.09, 0.10;
- ``shot_noise``: Poisson photon noise, x -> Poisson(x * r) / r, r = 500, 250, 100, 75, 50;
- ``impulse_noise``: salt-and-pepper on a fraction 0.01, 0.02, 0.03, 0.05, 0.07 of the pixels (each
  channel drawn on its own, as scikit-image's ``random_noise`` that they call);
- ``gaussian_blur``: a Gaussian blur of standard deviation 0.4, 0.6, 0.7, 0.8, 1.0 pixels of a
  32-pixel image, scaled with the image's side (ours: one table for every resolution), its kernel
  cut at 3 standard deviations (theirs, scikit-image's, at 4);
- ``contrast``: x -> (x - mean) * c + mean, c = 0.75, 0.5, 0.4, 0.3, 0.15, each channel's mean;
- ``jpeg_compression``: JPEG at quality 80, 65, 58, 50, 40 (PIL's encoder, as theirs);
- ``pixelate``: down to a fraction 0.95, 0.9, 0.85, 0.75, 0.65 of the side (box filter), back up
  with nearest neighbours (ours; theirs resizes back up with PIL's box filter too).

Every result is clipped to [0, 1]. Random families draw from a generator seeded by (a constant of
this module, family, severity, the image's index), so a corrupted test set is the same on every
pass and machine, and its draws are independent of the test split's own noise.
:func:`perturbed` applies one to a test split; :func:`imagenet_c` reads ImageNet-C's own files
instead, where a ``data_root`` holds them. Training never reads this module (it is outside the
code that keys runs, the training path's import closure, :data:`mexit.config.TRAINING_ROOTS`).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import find_classes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mexit.data import _DEFAULT_SIZE, _MEAN_STD, DataConfig, validate
from mexit.data.loading import ImageDataset, _folder_source, _Pipeline

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
_STREAM = 0x636F7272  # "corr": keeps the corruptions' draws apart from the splits' noise, seeded (seed, split, index)

_LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
}


def _gaussian_noise(image: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    return image + level * torch.randn(image.shape, generator=generator)


def _shot_noise(image: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    return torch.poisson(image.clamp(0, 1) * level, generator=generator) / level


def _impulse_noise(image: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    draw = torch.rand(image.shape, generator=generator)
    salt = torch.rand(image.shape, generator=generator) < 0.5
    hit = draw < level
    return torch.where(hit & salt, 1.0, torch.where(hit, 0.0, image))


def _gaussian_blur(image: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    sigma = level * image.shape[-1] / 32
    kernel = 2 * int(np.ceil(3 * sigma)) + 1
    return F.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


def _contrast(image: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    mean = image.mean(dim=(-2, -1), keepdim=True)
    return (image - mean) * level + mean


def _jpeg_compression(image: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    buffer = io.BytesIO()
    F.to_pil_image(image.clamp(0, 1)).save(buffer, format="JPEG", quality=int(level))
    with Image.open(buffer) as compressed:
        return F.to_dtype(F.to_image(compressed), torch.float32, scale=True).as_subclass(torch.Tensor)


def _pixelate(image: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    side = image.shape[-1]
    small = max(1, int(side * level))
    down = torch.nn.functional.adaptive_avg_pool2d(image.unsqueeze(0), small)
    return torch.nn.functional.interpolate(down, size=image.shape[-2:], mode="nearest").squeeze(0)


_FAMILIES: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "jpeg_compression": _jpeg_compression,
    "pixelate": _pixelate,
}
CORRUPTIONS: tuple[str, ...] = tuple(_FAMILIES)


def seeded_generator(entropy: list[int]) -> torch.Generator:
    """A torch generator seeded from ``entropy`` through numpy's SeedSequence: one stream per
    distinct list, the same on every machine."""
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def check_corruption(family: str, severity: int) -> None:
    """A ``ValueError`` naming the allowed values unless ``family`` and ``severity`` are known."""
    if family not in _FAMILIES:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {family!r}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")


@dataclass(frozen=True)
class Corruption:
    """One family at one severity, as a callable ``(image, index) -> image`` (the slot of
    :class:`mexit.data.loading.ImageDataset`'s noise): deterministic for each image index."""

    family: str
    severity: int

    def __post_init__(self) -> None:
        check_corruption(self.family, self.severity)

    def __call__(self, image: torch.Tensor, index: int) -> torch.Tensor:
        generator = seeded_generator([_STREAM, CORRUPTIONS.index(self.family), self.severity, index])
        level = _LEVELS[self.family][self.severity - 1]
        return _FAMILIES[self.family](image, level, generator).clamp(0, 1)


def perturbed(dataset: ImageDataset, perturb: Callable[[torch.Tensor, int], torch.Tensor]) -> ImageDataset:
    """``dataset`` with ``perturb(image, index)`` (a :class:`Corruption`) applied to each image in
    [0, 1] before the dataset's own test-time noise (``data.noise_std``, part of the task the runs
    were trained on) and normalisation: the scene shifts, the sensor stays."""
    noise = dataset.noise

    def perturbed_then_noised(image: torch.Tensor, index: int) -> torch.Tensor:
        shifted = perturb(image, index)
        return shifted if noise is None else noise(shifted, index)

    return ImageDataset(dataset.source, dataset.indices, dataset.pipeline, perturbed_then_noised)


IMAGENET_C_FOLDER = "imagenet-c"


def imagenet_c_folder(config: DataConfig, family: str, severity: int) -> Path | None:
    """Where ``config``'s ``data_root`` holds ImageNet-C's images of ``family`` at ``severity``
    (``imagenet-c/<family>/<severity>/<class>/<image>``, the layout the authors' code reads from
    ``IMAGENET_C_PATH``), or None: not ImageNet, or no such folder."""
    if config.name != "imagenet" or config.data_root is None:
        return None
    folder = Path(config.data_root) / IMAGENET_C_FOLDER / family / str(severity)
    return folder if folder.is_dir() else None


def imagenet_c(config: DataConfig, family: str, severity: int) -> ImageDataset | None:
    """ImageNet-C's images of ``family`` at ``severity`` (:func:`imagenet_c_folder`), or None where
    ``data_root`` lacks them. Read as the authors do: bicubic Resize and CenterCrop to the input size
    (ImageNet-C's images are already 224 x 224 centre crops), then normalised; classes numbered as
    ImageNet's ``train`` folders."""
    validate(config)
    folder = imagenet_c_folder(config, family, severity)
    if folder is None:
        return None
    _, class_to_idx = find_classes(Path(config.data_root) / "train")
    source = _folder_source(folder, class_to_idx, "imagenet")
    size = config.image_size or _DEFAULT_SIZE[config.name]
    bicubic = v2.InterpolationMode.BICUBIC
    unit = v2.Compose([v2.Resize(size, interpolation=bicubic), v2.CenterCrop(size), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    return ImageDataset(source, np.arange(len(source.targets)), _Pipeline(unit, v2.Normalize(*_MEAN_STD["imagenet"])), None)
