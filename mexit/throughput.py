"""Measured training throughput, and the GPU-hours a plan needs at that throughput.

``benchmarks/paper_throughput.py --write FILE`` times a P1, a P2 and a P3 training step of every
paper config on the device at hand and records, per backbone and dataset, the forward MACs a
second each phase gets through (images a second x the forward MACs an image of that phase's model).
``mexit plan --profile paper`` divides each run's estimated training MACs
(:func:`mexit.sweep.phase_macs`: forward MACs an image x images an epoch x the epoch cap) by that
rate: the hours of one such device that the run needs at its epoch caps. Early stopping ends phases
sooner; the per-epoch validation passes and gradient-dominance probes (a few percent) are left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mexit.checkpoint import write_bytes_atomic
from mexit.config import RunConfig

THROUGHPUT_FILE = "throughput.json"
"""The throughput file's name in the run store's folder, where ``mexit plan`` looks by default."""
PHASES_TIMED: tuple[str, ...] = ("P1", "P2", "P3")


@dataclass(frozen=True)
class Throughput:
    """A throughput file: the device it was measured on and, per :func:`entry` (``backbone/dataset``)
    and phase, the training rate in forward MACs a second."""

    device: str
    rates: Mapping[str, Mapping[str, float]]

    def phase_seconds(self, config: RunConfig, phase_macs: Sequence[float]) -> list[float] | None:
        """Each phase's seconds on this device (``phase_macs``: the phase's estimated training MACs),
        or None when the file has no measurement of this backbone on this dataset."""
        rates = self.rates.get(entry(config))
        if rates is None:
            return None
        return [macs / rates[name] for name, macs in zip(config.train.phase_list, phase_macs)]


def entry(config: RunConfig) -> str:
    """What a measurement stands for: the backbone on the dataset (heads and placements change a
    run's MACs, which the rate scales with, not the rate itself)."""
    return f"{config.model.backbone}/{config.data.name}"


def default_path(runs_root: str | Path) -> Path:
    return Path(runs_root) / THROUGHPUT_FILE


def record(path: str | Path, config: RunConfig, device: str, images_per_s: Mapping[str, float], forward_macs: Mapping[str, float]) -> None:
    """Add (or replace) one config's measurement in the throughput file at ``path``: per phase, the
    images a second of its training step and the forward MACs an image of the model it trains.
    Measurements from another device are replaced, not mixed."""
    missing = [name for name in PHASES_TIMED if name not in images_per_s or name not in forward_macs]
    if missing:
        raise ValueError(f"a throughput record needs every phase of {PHASES_TIMED}; missing {missing}")
    path = Path(path)
    stored = _read(path) if path.exists() else None
    rates = dict(stored["rates"]) if stored is not None and stored["device"] == device else {}
    rates[entry(config)] = {name: float(images_per_s[name]) * float(forward_macs[name]) for name in PHASES_TIMED}
    document = {"device": device, "unit": "forward MACs per second", "rates": rates}
    write_bytes_atomic(path, json.dumps(document, indent=2).encode())  # a reader sees the old file or the new one


def load(path: str | Path) -> Throughput | None:
    """The throughput file at ``path``, or None where there is none."""
    path = Path(path)
    if not path.exists():
        return None
    values = _read(path)
    return Throughput(device=values["device"], rates=values["rates"])


def _read(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"throughput file {path} is not valid JSON ({error}); write it again with benchmarks/paper_throughput.py --write") from None
    if not isinstance(values, dict) or not isinstance(values.get("device"), str) or not isinstance(values.get("rates"), dict):
        raise ValueError(f"throughput file {path} must hold a device and rates; write it again with benchmarks/paper_throughput.py --write")
    for name, rates in values["rates"].items():
        if not isinstance(rates, dict) or any(not isinstance(rates.get(p), (int, float)) or rates[p] <= 0 for p in PHASES_TIMED):
            raise ValueError(f"throughput file {path}: {name} needs a positive rate for each of {PHASES_TIMED}")
    return values
