"""Throughput of the paper-scale configs' training and inference steps, on the device at hand.

For every backbone and dataset that a row of the paper profile trains on a real dataset (one row each:
a throughput entry stands for a backbone on a dataset), this builds the model exactly as a run would
(dataset's standard class count and input shape; random weights where the row starts from published
ones, which do not change the speed), then times, on random inputs of that shape:

- a P2 training step (backbone and ICs, the config's optimiser, bf16 autocast when the config asks
  for it on CUDA), over a P1 step of the same model (backbone only, ICs not in the loss), and a P3
  step (ICs only, backbone frozen);
- inference of all exits, in eval mode.

It prints images/s, the ratio P2/P1, per-exit MACs and, on CUDA, peak memory. It is the check to run
first on a GPU machine (no dataset needed), after the paper profile's smoke build
(`mexit book --profile paper --smoke DIR`); on a CPU, shrink it: `--batch 4 --steps 2`.
`--write FILE` records each config's training rates (:mod:`mexit.throughput`), from which
`mexit plan --profile paper --throughput FILE` estimates every run's GPU-hours.

    python benchmarks/paper_throughput.py --device cuda --write runs/throughput.json
    python benchmarks/paper_throughput.py --device cpu --batch 4 --steps 2 --rows "MSDNet / CIFAR-100"
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from mexit import throughput
from mexit.config import RunConfig, load_config
from mexit.plan import load_profile
from mexit.data import STANDARD_CLASSES, input_shape
from mexit.flops import exit_costs
from mexit.regimes import PHASE_SPECS, apply_phase, exit_weights, multi_exit_loss
from mexit.models import build_model
from mexit.train import make_optimizer


def paper_rows() -> dict[str, RunConfig]:
    """One row of the paper profile per backbone and dataset it trains on a real dataset: ``{label: config}``."""
    profile = load_profile("paper")
    rows = [row for group in (profile["global_params"], *profile["notebooks"].values()) if group for row in group.get("rows", [])]
    chosen: dict[str, tuple[str, RunConfig]] = {}
    for row in rows:
        config = load_config(row["config"], row.get("overrides", []))
        if config.data.data_root is not None:
            chosen.setdefault(throughput.entry(config), (row["label"], config))
    return dict(chosen.values())


def time_steps(step: callable, steps: int, device: torch.device) -> float:
    """Median seconds of ``step`` over ``steps`` calls, after two warm-up calls."""
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(name: str, config: RunConfig, device: torch.device, batch: int | None, steps: int, write: str | None) -> None:
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, pretrained=False, checkpoint=None))
    shape, classes = input_shape(config.data), STANDARD_CLASSES[config.data.name]
    optim = config.train.optim_for(0)
    batch = batch or optim.batch_size
    torch.manual_seed(0)
    model = build_model(config, shape, classes).to(device)
    costs = exit_costs(build_model(config, shape, classes))
    images = torch.randn(batch, *shape, device=device)
    labels = torch.randint(0, classes, (batch,), device=device)
    bf16 = optim.bf16 and device.type == "cuda"

    def training_step(phase: str):  # noqa: ANN202
        spec = PHASE_SPECS[phase]
        exits = spec.exits_in_loss(model.num_exits)
        weights = exit_weights("uniform", exits, model.num_exits).to(device)
        handle = apply_phase(model, spec)
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], optim)
        handle.remove()

        def step() -> None:
            inner = apply_phase(model, spec)
            model.train()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = multi_exit_loss(model(images), labels, exits, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            inner.remove()

        return step

    @torch.no_grad()
    def inference() -> None:
        model.eval()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            model(images)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    p1 = time_steps(training_step("P1"), steps, device)
    p2 = time_steps(training_step("P2"), steps, device)
    p3 = time_steps(training_step("P3"), steps, device)
    infer = time_steps(inference, steps, device)
    memory = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    print(f"{name}: {config.model.backbone} on {config.data.name} {shape}, {model.num_exits} exits, batch {batch}{', bf16' if bf16 else ''}{memory}")
    print(f"  train P1 {batch / p1:9.1f} img/s   P2 {batch / p2:9.1f} img/s   P3 {batch / p3:9.1f} img/s   P2/P1 time {p2 / p1:.3f}")
    print(f"  inference (all exits) {batch / infer:9.1f} img/s")
    macs = ", ".join(f"{m / 1e6:.0f}" for m in costs.macs)
    print(f"  MACs per exit (M): {macs}; backbone alone {costs.backbone_macs / 1e6:.0f} M")
    if write:
        every_exit = float(costs.macs[-1])  # what sweep.phase_macs counts an image of P2 and P3
        throughput.record(
            write, config, _device_name(device), {"P1": batch / p1, "P2": batch / p2, "P3": batch / p3},
            {"P1": float(costs.backbone_macs), "P2": every_exit, "P3": every_exit},
        )


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="per-step batch (default: the config's)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", nargs="+", default=None, metavar="LABEL", help="row labels of the paper profile (default: one a backbone and dataset)")
    parser.add_argument("--write", metavar="FILE", help="record the training rates for `mexit plan --throughput FILE`")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__} on {_device_name(device)}")
    rows = paper_rows()
    unknown = [label for label in args.rows or [] if label not in rows]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; allowed: {', '.join(repr(label) for label in rows)}")
    for label in args.rows or rows:
        measure(label, rows[label], device, args.batch, args.steps, args.write)
    if args.write:
        print(f"training rates written to {args.write}: `mexit plan --profile paper --throughput {args.write}`")


if __name__ == "__main__":
    main()
