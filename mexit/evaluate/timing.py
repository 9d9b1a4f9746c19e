"""Real early exit, timed: what a budget's operating point costs in seconds on this machine, beside
what its MACs predict.

:func:`time_early_exit` runs :meth:`mexit.models.MultiExit.early_exit` (samples that leave are
dropped from the batch, later blocks never run) over a set of images at each threshold, and the
backbone alone (its final exit, no IC computed) as the reference; each timing is the median of
``repeats`` passes after one untimed warm-up batch.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor

from mexit.models import MultiExit


def machine() -> str:
    """This machine in words: its processor, core count and torch's threads."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__} on {torch.get_num_threads()} threads"


def _median_seconds(run: Callable[[], None], repeats: int, device: torch.device) -> float:
    """The median over ``repeats`` of ``run``'s seconds, the device's queued work included."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.inference_mode()
def time_early_exit(
    model: MultiExit, images: Tensor, thresholds: Sequence[float], *, batch_size: int = 256, repeats: int = 3,
    rule: str | None = None,
) -> pd.DataFrame:
    """Seconds per image of early exit under exit ``rule`` (None: the model's own) at each of
    ``thresholds`` (one row each: ``threshold``, ``ms_per_image``, ``time_pct``: % of the backbone
    alone) and of the backbone alone (``threshold`` NaN, ``time_pct`` 100), over ``images`` in
    batches of ``batch_size``; ``model`` in eval mode, on the images' device."""
    if model.training:
        raise RuntimeError("time_early_exit times eval mode: call model.eval() first")
    if repeats < 1 or batch_size < 1 or len(images) == 0:
        raise ValueError(f"repeats and batch_size must be >= 1 and images non-empty, got {repeats}, {batch_size}, {len(images)}")
    batches = list(torch.split(images, batch_size))

    def backbone() -> None:
        model.ics_active = False
        try:
            for batch in batches:
                model(batch)
        finally:
            model.ics_active = True

    def exits(threshold: float) -> Callable[[], None]:
        def run() -> None:
            for batch in batches:
                model.early_exit(batch, threshold, rule)

        return run

    model.early_exit(batches[0], 0.5, rule)  # warm-up: first-call allocations stay out of the timings
    reference = _median_seconds(backbone, repeats, images.device)
    rows = [{"threshold": float("nan"), "seconds": reference}]
    rows += [{"threshold": float(t), "seconds": _median_seconds(exits(float(t)), repeats, images.device)} for t in thresholds]
    frame = pd.DataFrame(rows)
    frame["ms_per_image"] = 1000 * frame["seconds"] / len(images)
    frame["time_pct"] = 100 * frame["seconds"] / reference
    return frame.drop(columns="seconds")
