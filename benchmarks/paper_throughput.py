"""Throughput of the paper-scale configs' training and inference steps, on the device at hand.

For every shipped config that reads a real dataset (`mexit/configs/*.yaml` with a `data_root`), this
builds the model exactly as a run would (dataset's standard class count and input shape), then times,
on random inputs of that shape:

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
    python benchmarks/paper_throughput.py --device cpu --batch 4 --steps 2 --configs msdnet-cifar100
"""
from __future__ import annotations

import argparse
import time

import torch

from mexit import throughput
from mexit.config import load_config, shipped_configs
from mexit.data import STANDARD_CLASSES, input_shape
from mexit.flops import exit_costs
from mexit.regimes import PHASE_SPECS, apply_phase, exit_weights, multi_exit_loss
from mexit.models import build_model
from mexit.train import make_optimizer


def paper_configs() -> list[str]:
    return [name for name in shipped_configs() if load_config(name).data.data_root is not None]


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


def measure(name: str, device: torch.device, batch: int | None, steps: int, write: str | None) -> None:
    config = load_config(name)
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
    parser.add_argument("--configs", nargs="+", default=None, help=f"default: {' '.join(paper_configs())}")
    parser.add_argument("--write", metavar="FILE", help="record the training rates for `mexit plan --throughput FILE`")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__} on {_device_name(device)}")
    for name in args.configs or paper_configs():
        measure(name, device, args.batch, args.steps, args.write)
    if args.write:
        print(f"training rates written to {args.write}: `mexit plan --profile paper --throughput {args.write}`")


if __name__ == "__main__":
    main()
