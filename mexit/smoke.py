"""A smoke build: every run a profile needs, through the real code path, in seconds a run.

``mexit book --profile paper --smoke DIR`` proves that the paper profile runs before a GPU-hour is
spent on it. :func:`smoke_profile` turns a profile into its smoke version:

- every row (the profile's and each notebook's) reads the generated datasets under ``DIR``
  (:func:`mexit.data.generated.write_all`, written there by :func:`ensure_data` when missing), at
  their real class counts and the configs' own input resolutions;
- every run keeps its config (model at its real size, optimiser, schedule, augmentation, early
  stopping, probes) except what :data:`SMOKE_TRAIN` caps: each phase ends after a few optimiser
  steps on small batches, each evaluation reads a few batches, gradient dominance is probed once
  a phase, before its first step (the configs' probes every few hundred steps would never come; a
  probe after each step as well doubled what probes cost, about half the smoke's training, for the
  same function on the same model), and data loaders run one worker
  process where the config asks for several;
- two seeds (the fewest that give an interval), the fresh seeds (where a page has them) two more;
- the analyses' sizes (path points, plane, Bezier steps, rank and mutual-information samples)
  scaled down (:data:`SMOKE_SIZES`);
- the out-of-distribution page's datasets (its ``ood_sets`` read from files) generated too, under
  ``DIR/ood`` (:func:`ensure_ood_data`), its ``ood_root``;
- a row that starts from published weights (``model.pretrained``) starts instead from a local
  weight file of the same model, seeded random weights that the smoke writes under ``DIR/weights``
  (:func:`ensure_weights`), so that the offline transfer path (``model.checkpoint``: the file
  loaded, its classifier replaced where the class count differs, its hash in the run key) runs.

The caps are fields of the run config (``train.max_steps``, ``train.eval_batches``), so a smoke run
never shares a key with a real one; its store is ``DIR/runs`` and its book ``DIR/book``, whose every
page carries :func:`banner`. Numbers in a smoke book mean nothing: the pixels are random.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mexit.config import load_config

SMOKE_TRAIN: dict[str, Any] = {
    "train.max_steps": 1,
    "train.eval_batches": 2,
    "train.optim.batch_size": 8,
    "train.eval_batch_size": 4,
}
"""What a smoke run changes of every config: one optimiser step a phase at batch 8, and every
evaluation on two batches of 4 (early stopping's, the stored validation and test logits).

The step sets most of a smoke run's time: a ResNet-50 / TinyImageNet step at batch 8 (the
small-image stem, so 64 x 64 maps in its first stage) takes about 3 s on this 2-core CPU, and a
second step a phase made the paper smoke 152 runs x about 13 s. Smaller batches are cheaper but
make the paper's learning rates diverge on random pixels (ResNet-50 / TinyImageNet at lr 0.2: a NaN
loss at its second step at batch 4), which is not what a smoke build is for."""
SMOKE_SEEDS: tuple[int, ...] = (0, 1)
SMOKE_FRESH_SEEDS: tuple[int, ...] = (2, 3)
SMOKE_SIZES: dict[str, dict[str, Any]] = {
    "mode_connectivity": {
        "points": 3, "bn_batches": 1, "eval_samples": 16, "bezier_steps": 2,
        "plane_points": 3, "plane_bn_batches": 1, "plane_eval_samples": 16, "batch_size": 8,
    },
    "numerical_rank": {"samples": 16, "max_features": 64},
    "mutual_information": {"samples": 32, "max_features": 256},
    "gradient_dominance": {"equilibrium_seeds": [0]},
    "wall_clock": {"samples": 8, "batch_size": 8, "repeats": 1},
    "distribution_shift": {"samples": 8, "batch_size": 8},
    "out_of_distribution": {"samples": 8, "batch_size": 8},
}
"""The analyses' parameters in a smoke build, per notebook; each one a parameter its notebook
declares (a value a notebook does not declare would be dropped, so the test suite checks them).
The paths' ``batch_size`` matters most: at its default of 256 each path point re-estimates
BatchNorm on 256 images and each Bezier step trains on 256, minutes a point for the paper's
ResNet-50 and ViT-S on this CPU."""


def banner(profile_name: str) -> str:
    """What tops every page of a smoke build."""
    return (
        f"Smoke build of the {profile_name} profile: every run trained for {_steps(SMOKE_TRAIN['train.max_steps'])} a "
        "phase on generated data (random pixels), every analysis at a toy size. It shows that the profile runs; "
        "no number in it means anything."
    )


def _steps(count: int) -> str:
    return "one optimiser step" if count == 1 else f"{count} optimiser steps"


def smoke_profile(
    profile: Mapping[str, Any], data_dir: str | Path, seeds: Sequence[int] = SMOKE_SEEDS
) -> dict[str, Any]:
    """The smoke version of ``profile`` (as :func:`mexit.plan.load_profile` returns it) reading the
    generated datasets under ``data_dir`` (module docstring); ``seeds`` replace every seed list."""
    data_dir = Path(data_dir).resolve()
    smoke = copy.deepcopy(dict(profile))
    for group in _groups(smoke):
        if "rows" in group:
            group["rows"] = [_smoke_row(row, data_dir) for row in group["rows"]]
        if "seeds" in group:
            group["seeds"] = list(seeds)
        if group.get("fresh_seeds"):
            group["fresh_seeds"] = [seed for seed in SMOKE_FRESH_SEEDS if seed not in seeds]
    for notebook, sizes in SMOKE_SIZES.items():
        smoke["notebooks"][notebook] = {**(smoke["notebooks"].get(notebook) or {}), **sizes}
    for group in _groups(smoke):
        if "ood_root" in group:
            group["ood_root"] = str(data_dir / OOD_FOLDER)
    return smoke


OOD_FOLDER = "ood"


def ood_datasets_read(profile: Mapping[str, Any]) -> list[str]:
    """The datasets (names) that the groups of ``profile`` read from files as out-of-distribution sets."""
    from mexit.data import needs_data_root

    return sorted({name for group in _groups(profile) for name in group.get("ood_sets", []) if needs_data_root(name)})


def ensure_ood_data(data_dir: str | Path, names: Sequence[str]) -> Path:
    """The generated datasets ``names`` under ``data_dir/ood`` (the smoke's ``ood_root``), written
    where missing; that folder."""
    from mexit.data.generated import write

    root = Path(data_dir) / OOD_FOLDER
    for name in names:
        try:
            write(root, name)
        except FileExistsError:  # written by an earlier smoke build
            pass
    return root


def datasets_read(profile: Mapping[str, Any]) -> list[str]:
    """The datasets (names) the rows of ``profile`` read from a ``data_root``."""
    from mexit.data import needs_data_root

    names = {load_config(row["config"], row.get("overrides", [])).data.name for row in _rows(profile)}
    return sorted(name for name in names if needs_data_root(name))


def ensure_data(data_dir: str | Path, names: Sequence[str]) -> dict[str, Path]:
    """The generated datasets ``names`` under ``data_dir``, written where missing: ``{name: data_root}``."""
    from mexit.data.generated import write

    data_dir = Path(data_dir)
    roots = {}
    for name in names:
        root = data_dir / name
        if not root.exists():
            write(root, name)
        roots[name] = root
    return roots


def _groups(profile: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The profile's parameter groups: its global one and each notebook's (those it gives values)."""
    return [group for group in (profile["global_params"], *profile["notebooks"].values()) if group]


def for_pages(profile: Mapping[str, Any], pages: Sequence[str] | None) -> dict[str, Any]:
    """``profile`` with only the notebook groups of ``pages`` (all where None): what a build of
    those pages reads, so that it writes no weights and no datasets only other pages would read."""
    notebooks = profile["notebooks"] if pages is None else {name: group for name, group in profile["notebooks"].items() if name in pages}
    return {**profile, "notebooks": notebooks}


def _rows(profile: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [row for group in _groups(profile) for row in group.get("rows", [])]


def _smoke_row(row: Mapping[str, Any], data_dir: Path) -> dict[str, Any]:
    """``row`` with the smoke overrides after its own: the generated data, the caps, one probe a phase."""
    from mexit.data import needs_data_root

    overrides = list(row.get("overrides", []))
    config = load_config(row["config"], overrides)
    extra = [f"{name}={value}" for name, value in SMOKE_TRAIN.items()]
    if needs_data_root(config.data.name):
        extra.append(f"data.data_root={data_dir / config.data.name}")
    if config.train.dominance_every > 0:  # the probe at the phase's start only: the capped steps come before the next
        extra.append(f"train.dominance_every={SMOKE_TRAIN['train.max_steps'] + 1}")
    if config.train.num_workers > 1:  # one loader process still goes through the workers' path, without 8 forks a loader
        extra.append("train.num_workers=1")
    if config.model.pretrained:
        extra += ["model.pretrained=false", f"model.checkpoint={weights_file(data_dir, config.model.backbone)}"]
    return {**row, "overrides": overrides + extra}


WEIGHTS_FOLDER = "weights"


def weights_file(data_dir: str | Path, backbone: str) -> Path:
    """Where a smoke keeps the local weight file that stands in for ``backbone``'s published weights."""
    return Path(data_dir) / WEIGHTS_FOLDER / f"{backbone.replace('/', '--')}.pt"


def pretrained_backbones(profile: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The backbones (name, keywords) that rows of ``profile`` start from published weights, once each."""
    found: dict[str, dict[str, Any]] = {}
    for row in _rows(profile):
        model = load_config(row["config"], row.get("overrides", [])).model
        if model.pretrained:
            found.setdefault(model.backbone, dict(model.backbone_kwargs))
    return sorted(found.items())


def ensure_weights(data_dir: str | Path, backbones: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Path]:
    """For each backbone (name, keywords) of :func:`pretrained_backbones`, the state dict of its
    library's model at its native class count, seeded random weights, in :func:`weights_file`:
    written where missing (atomically; the same bytes each time), so that its hash, which keys the
    smoke's runs, stays the same from one smoke build to the next. Returns the files."""
    import io

    import timm
    import torch
    import torchvision

    from mexit.checkpoint import write_bytes_atomic
    from mexit.models.backbones import TIMM_PREFIX, TV_PREFIX

    written = []
    for name, kwargs in backbones:
        target = weights_file(data_dir, name)
        if not target.exists():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                if name.startswith(TV_PREFIX):
                    model = torchvision.models.get_model(name.removeprefix(TV_PREFIX), weights=None, **kwargs)
                elif name.startswith(TIMM_PREFIX):
                    model = timm.create_model(name.removeprefix(TIMM_PREFIX), pretrained=False, **kwargs)
                else:
                    raise ValueError(f"model.pretrained: backbone={name!r} has no published weights to stand in for")
            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(target, buffer.getvalue())
        written.append(target)
    return written
