"""Generated datasets on disk, in exactly the layouts the real loaders read (:mod:`mexit.data`).

No dataset can be downloaded here, yet the paper configs read CIFAR-100 (torchvision's python
pickles), TinyImageNet (``tiny-imagenet-200/`` with ``wnids.txt``, ``train/<wnid>/images/`` and
``val/val_annotations.txt``) and ImageNet (ImageFolder ``train/`` and ``val/``). :func:`write`
makes one of them with random pixels, the real class count by default and a few images a class, so
that the whole path from files to a trained run can be exercised anywhere (the tests use it too)::

    from mexit.data.generated import write_all
    roots = write_all("smoke-data")  # {"cifar100": "smoke-data/cifar100", ...}: each a data_root

or, from the shell, ``mexit smoke-data smoke-data``. The ImageNet JPEGs vary in size and colour
mode (RGB, greyscale, CMYK), as the real ones do.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

REAL_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200, "imagenet": 1000}
"""The datasets :func:`write` lays out, with their real class counts."""
IMAGENET_MODES: tuple[str, ...] = ("RGB", "L", "CMYK")
TRAIN_PER_CLASS = 10
"""Training images a class by default: the fewest that let a stratified 10% validation split hold
one image of every class."""
TEST_PER_CLASS = 2


def write(
    root: str | Path,
    name: str,
    *,
    classes: int | None = None,
    train_per_class: int = TRAIN_PER_CLASS,
    test_per_class: int = TEST_PER_CLASS,
    seed: int = 0,
) -> Path:
    """Write dataset ``name`` (one of :data:`REAL_CLASSES`) under ``root`` in its real layout, with
    ``classes`` classes (default: the real count) of ``train_per_class`` training and
    ``test_per_class`` test images each (the test split is the official one: CIFAR's test batch,
    TinyImageNet's and ImageNet's ``val``). Returns ``root``, the ``data.data_root`` to read it.
    Refuses to write into a layout that already exists."""
    if name not in REAL_CLASSES:
        raise ValueError(f"name must be one of {', '.join(REAL_CLASSES)}, got {name!r}")
    classes = REAL_CLASSES[name] if classes is None else classes
    for label, value in (("classes", classes), ("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if value < 1:
            raise ValueError(f"{label} must be >= 1, got {value}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    if name in ("cifar10", "cifar100"):
        _write_cifar(root, name, classes, train_per_class, test_per_class, rng)
    elif name == "tinyimagenet":
        _write_tinyimagenet(root, classes, train_per_class, test_per_class, rng)
    else:
        _write_imagenet(root, classes, train_per_class, test_per_class, rng)
    return root


def write_all(directory: str | Path, *, train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS) -> dict[str, Path]:
    """Every dataset the paper configs read, at its real class count, each in ``directory/<name>``:
    ``{name: data_root}``."""
    directory = Path(directory)
    return {
        name: write(directory / name, name, train_per_class=train_per_class, test_per_class=test_per_class)
        for name in ("cifar100", "tinyimagenet", "imagenet")
    }


def _labels(classes: int, per_class: int) -> list[int]:
    return [label for label in range(classes) for _ in range(per_class)]


def _fresh(path: Path) -> Path:
    if path.exists():
        raise FileExistsError(f"{path} exists already; generated data is written into a new folder only")
    path.mkdir(parents=True)
    return path


def _pickle(path: Path, value: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(value, file)


def _write_cifar(root: Path, name: str, classes: int, train_per_class: int, test_per_class: int, rng: np.random.Generator) -> None:
    """torchvision's archive, unpacked: five training batches, one test batch and the meta file."""
    import torchvision.datasets

    spec = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    label_key = "labels" if name == "cifar10" else "fine_labels"
    folder = _fresh(root / spec.base_folder)
    train_labels = _labels(classes, train_per_class)
    for (file, _md5), rows in zip(spec.train_list, np.array_split(np.arange(len(train_labels)), len(spec.train_list))):
        data = rng.integers(0, 256, (len(rows), 3072), dtype=np.uint8)
        _pickle(folder / file, {"data": data, label_key: [train_labels[r] for r in rows], "batch_label": file})
    test_labels = _labels(classes, test_per_class)
    data = rng.integers(0, 256, (len(test_labels), 3072), dtype=np.uint8)
    _pickle(folder / spec.test_list[0][0], {"data": data, label_key: test_labels, "batch_label": "test"})
    _pickle(folder / spec.meta["filename"], {spec.meta["key"]: [f"class{i}" for i in range(classes)]})


def _jpeg(path: Path, size: tuple[int, int], rng: np.random.Generator, mode: str = "RGB") -> None:
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format="JPEG")


def _wnid(index: int) -> str:
    """A WordNet-style class id, as the real folders are named (n01440764, ...)."""
    return f"n{index + 1:08d}"


def _write_tinyimagenet(root: Path, classes: int, train_per_class: int, test_per_class: int, rng: np.random.Generator) -> None:
    """The official tiny-imagenet-200 layout: 64x64 JPEGs, wnids.txt (in no particular order),
    ``train/<wnid>/images/`` with a boxes file, ``val/images/`` listed by ``val_annotations.txt``."""
    base = _fresh(root / "tiny-imagenet-200")
    wnids = [_wnid(i) for i in range(classes)]
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    for wnid in wnids:
        images = base / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(train_per_class):
            _jpeg(images / f"{wnid}_{i}.JPEG", (64, 64), rng)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for i, label in enumerate(_labels(classes, test_per_class)):
        _jpeg(base / "val" / "images" / f"val_{i}.JPEG", (64, 64), rng)
        lines.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def _write_imagenet(root: Path, classes: int, train_per_class: int, test_per_class: int, rng: np.random.Generator) -> None:
    """ImageFolder ``train/<wnid>/`` and ``val/<wnid>/`` trees of JPEGs of varied sizes and modes."""
    count = 0
    for split, per_class in (("train", train_per_class), ("val", test_per_class)):
        for label in range(classes):
            folder = _fresh(root / split / _wnid(label))
            for i in range(per_class):
                size = (48 + 7 * (count % 9), 40 + 5 * (count % 11))
                _jpeg(folder / f"{_wnid(label)}_{i}.JPEG", size, rng, IMAGENET_MODES[count % len(IMAGENET_MODES)])
                count += 1
