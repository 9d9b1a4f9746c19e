"""Out-of-distribution images for the models of one dataset: inputs none of its classes describe.

Each set is given as images of the in-distribution dataset's shape (channels and side), put
through its test-time noise (``data.noise_std``, part of the task; drawn per image) and its
normalisation, so a model reads them as it reads its own test split; labels are -1.

- ``gaussian-noise`` (generated): every pixel drawn from N(0.5, 0.25^2), clipped to [0, 1];
- ``photo-patches`` (generated, ours): square patches of random side (an eighth to a half of the
  shorter side) and place cut from scikit-learn's two bundled photographs (``china.jpg``,
  ``flower.jpg``), resized to the input side, grey where the dataset is;
- a dataset of :data:`mexit.data.DATASETS` (``cifar10`` beside CIFAR-100 is the usual near-OOD set):
  its test split, read from ``data_root`` as :func:`mexit.data.load` reads it, resized and centre
  cropped to the input side, its channels matched (grey or repeated).

Generated images are drawn from a generator seeded by (a constant of this module, set, index): the
same on every machine.
Training never reads this module (it is outside the code that keys runs,
the training path's import closure, :data:`mexit.config.TRAINING_ROOTS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torchvision.transforms import v2

from mexit.data import _MEAN_STD, DATASETS, DataConfig, input_shape, validate
from mexit.data.loading import ImageDataset, _Noise, _Pipeline, load
from mexit.evaluate.corruptions import seeded_generator

GENERATED_OOD: tuple[str, ...] = ("gaussian-noise", "photo-patches")
_STREAM = 0x6F6F64  # "ood": keeps these draws apart from the splits' noise and the corruptions'
FOREIGN_SPLIT = 3
"""The split number of the foreign images' test-time noise (the test split's is 2, validation's 1)."""
OOD_SETS: tuple[str, ...] = (*GENERATED_OOD, *DATASETS)


@lru_cache(maxsize=1)
def _photographs() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous() for image in load_sample_images().images)


@dataclass(frozen=True)
class _GeneratedSource:
    """``count`` generated images of shape ``shape`` (C, H, W) in [0, 1]: set ``name``."""

    name: str
    shape: tuple[int, int, int]
    count: int

    @property
    def targets(self) -> np.ndarray:
        return np.full(self.count, -1, dtype=np.int64)

    def image(self, index: int) -> torch.Tensor:
        generator = seeded_generator([_STREAM, GENERATED_OOD.index(self.name), index])
        if self.name == "gaussian-noise":
            return (0.5 + 0.25 * torch.randn(self.shape, generator=generator)).clamp(0, 1)
        photos = _photographs()
        photo = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        short = min(photo.shape[-2:])
        side = int(torch.randint(short // 8, short // 2 + 1, (1,), generator=generator))
        top = int(torch.randint(photo.shape[-2] - side + 1, (1,), generator=generator))
        left = int(torch.randint(photo.shape[-1] - side + 1, (1,), generator=generator))
        patch = photo[:, top : top + side, left : left + side].float() / 255
        return _fit(v2.functional.resize(patch, list(self.shape[-2:]), antialias=True), self.shape[0]).clamp(0, 1)


def _fit(image: torch.Tensor, channels: int) -> torch.Tensor:
    """``image`` with ``channels`` channels: grey from colour, or grey repeated."""
    if image.shape[0] == channels:
        return image
    if channels == 1:
        return v2.functional.rgb_to_grayscale(image)
    return image.expand(channels, *image.shape[1:]).contiguous()


def ood_set(name: str, config: DataConfig, count: int, data_root: str | None = None) -> ImageDataset:
    """Out-of-distribution set ``name`` (module docstring) for the models of ``config``'s dataset:
    ``count`` images (a dataset's first ``count`` test images, or all it has), labels -1. A dataset
    is read from ``data_root`` (None: ``config.data_root``)."""
    validate(config)
    if name not in OOD_SETS:
        raise ValueError(f"ood set must be one of {OOD_SETS}, got {name!r}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    shape = input_shape(config)
    normalize = v2.Normalize(*_MEAN_STD[config.name])
    noise = _Noise(config.noise_std, (config.seed, FOREIGN_SPLIT)) if config.noise_std else None
    if name in GENERATED_OOD:
        source = _GeneratedSource(name, shape, count)
        return ImageDataset(source, np.arange(count), _Pipeline(v2.Identity(), normalize), noise)  # type: ignore[arg-type]
    test = load(DataConfig(name=name, data_root=data_root or config.data_root, seed=config.seed)).test
    side = shape[-1]
    own = test.pipeline.to_unit

    def to_unit(image: object) -> torch.Tensor:
        unit = v2.functional.center_crop(v2.functional.resize(own(image), [side], antialias=True), [side, side])
        return _fit(unit, shape[0])

    foreign = ImageDataset(test.source, test.indices[:count], _Pipeline(to_unit, normalize), noise)
    foreign.targets = np.full(len(foreign.indices), -1, dtype=np.int64)
    return foreign
