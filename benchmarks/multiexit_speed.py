"""Speed of multi-exit models, measured in one run.

(a) Training-step time of a multi-exit model over that of its plain backbone, next to the goal:
    at most 1 + the ICs' share of the backbone's MACs + 5%. Models are in channels-last memory
    order, as mexit trains them (`train.channels_last`); the plain backbone in the default
    (NCHW) order is timed too, to show what that order saves. The ICs' floor: their forward and
    backward passes alone, on maps cut to the pooled size (so pooling costs nothing), over the
    plain step: what the ICs' operations cost however fast their pooling were.
(b) Early-exit inference time over the full forward pass, at a max-probability threshold chosen
    so that half of the samples leave at an IC in the first half of the network; next to the
    backbone alone with the same samples dropped at the same blocks (the ICs free), which is
    what the blocks' own times, rather than their MACs, predict.

Models are randomly initialised and inputs are Gaussian noise: timing depends only on shapes
and, for (b), on where samples leave, which the threshold fixes. Run: python benchmarks/multiexit_speed.py
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mexit.flops import exit_costs
from mexit.models import MultiExit, build
from mexit.models.multiexit import select_samples

CASES = {
    "resnet20": dict(backbone="resnet20", kwargs=dict(in_chans=3, img_size=32), batch=128),
    "vit-tiny/4": dict(
        backbone="timm/vit_tiny_patch16_224", kwargs=dict(img_size=32, patch_size=4, head="linear"), batch=32
    ),
}


def train_step(model: MultiExit, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = sum(F.cross_entropy(out, y) for out in logits) / len(logits)
    loss.backward()
    optimizer.step()


def interleaved_medians(steps: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each step, timed in turns so that load from elsewhere hits all alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def build_case(name: str, placement: str | list[int], channels_last: bool = True) -> MultiExit:
    case = CASES[name]
    torch.manual_seed(0)
    model = build(case["backbone"], 10, placement=placement, **case["kwargs"])
    return model.to(memory_format=torch.channels_last) if channels_last else model


def ics_alone_step(model: MultiExit, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None] | None:
    """The ICs' forward and backward passes (losses summed as in `train_step`) on each IC's input
    cut to its pooled size, so that pooling is free: the cost of the ICs' other operations.
    None where the ICs do not pool maps (ViTs)."""
    sizes = [getattr(ic.body[0], "size", None) for ic in model.ics]
    if not sizes or None in sizes:
        return None
    with torch.no_grad():
        maps = model.forward_blocks(x)
    inputs = [
        maps[block - 1][:, :, :size, :size].contiguous(memory_format=torch.channels_last).requires_grad_()
        for block, size in zip(model.placement, sizes)
    ]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss = sum(F.cross_entropy(ic(features), y) for ic, features in zip(model.ics, inputs)) / model.num_exits
        loss.backward()

    return step


def training_overhead(name: str, repeats: int) -> None:
    case = CASES[name]
    models = {
        "plain": build_case(name, []),
        "multi": build_case(name, "every"),
        "plain NCHW": build_case(name, [], channels_last=False),
    }
    costs = exit_costs(models["multi"])
    share = costs.macs[-1] / costs.backbone_macs - 1
    x = torch.randn(case["batch"], *models["multi"].input_shape)
    y = torch.randint(0, 10, (case["batch"],))
    steps = {}
    for label, model in models.items():
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        steps[label] = lambda model=model, optimizer=optimizer: train_step(model, x, y, optimizer)
    ics_alone = ics_alone_step(models["multi"], x, y)
    if ics_alone is not None:
        steps["ICs alone"] = ics_alone
    median = interleaved_medians(steps, repeats, warmup=2)
    ratio = median["multi"] / median["plain"]
    goal = 1 + share + 0.05
    print(f"  {name:<11} batch {case['batch']:>3}, {models['multi'].num_exits:>2} exits: "
          f"plain {median['plain'] * 1e3:7.1f} ms, multi-exit {median['multi'] * 1e3:7.1f} ms, "
          f"ratio {ratio:.3f} (goal <= {goal:.3f}: 1 + ICs' {100 * share:.1f}% of MACs + 5%) "
          f"{'OK' if ratio <= goal else 'OVER'}")
    print(f"  {'':<11} plain backbone in NCHW order {median['plain NCHW'] * 1e3:7.1f} ms: channels-last "
          f"steps take x{median['plain'] / median['plain NCHW']:.2f} (plain), "
          f"x{median['multi'] / median['plain NCHW']:.2f} (multi-exit) of its time")
    if "ICs alone" in median:
        print(f"  {'':<11} the ICs' floor: their forward and backward passes on maps cut to the pooled size take "
              f"{median['ICs alone'] * 1e3:.1f} ms, {100 * median['ICs alone'] / median['plain']:.1f}% of the plain step")


@torch.no_grad()
def early_exit_speedup(name: str, repeats: int, batch: int) -> None:
    model = build_case(name, "every").eval()
    x = torch.randn(batch, *model.input_shape)
    logits = model(x)
    depth = len(model.blocks)
    early = [k for k, block in enumerate(model.placement) if block <= depth // 2]
    best_early = torch.stack([logits[k].softmax(-1).amax(-1) for k in early]).amax(0)
    threshold = float(best_early.median())
    result = model.early_exit(x, threshold)
    costs = exit_costs(model)
    counts = torch.bincount(result.exit_index, minlength=model.num_exits)
    mean_macs = sum(int(n) * m for n, m in zip(counts, costs.macs)) / batch

    keeps = {}  # after block b: which of the samples still there go on, where any leave
    remaining = result.exit_index
    for k, block in enumerate(model.placement):
        keep = remaining > k
        if not keep.all():
            keeps[block] = keep
            remaining = remaining[keep]

    def backbone(drop: bool = False) -> None:
        h = model.stem(x)
        for index, block in enumerate(model.blocks, 1):
            h = block(h)
            if drop and index in keeps:
                h = select_samples(h, keeps[index])
        model.final_head(h)

    median = interleaved_medians(
        {"all exits": lambda: model(x), "backbone": backbone, "early exit": lambda: model.early_exit(x, threshold),
         "dropped": lambda: backbone(drop=True)},
        repeats, warmup=1,
    )
    left_early = float((result.exit_index <= max(early)).float().mean())
    print(f"  {name:<11} batch {batch}, threshold {threshold:.4f}: {100 * left_early:.0f}% leave by block "
          f"{depth // 2} of {depth}; mean cost {100 * mean_macs / costs.backbone_macs:.0f}% of the backbone's MACs")
    full, plain, early_ms = median["all exits"], median["backbone"], median["early exit"]
    predicted = costs.backbone_macs / mean_macs
    print(f"    all exits {full * 1e3:7.1f} ms, backbone only {plain * 1e3:7.1f} ms,"
          f" early exit {early_ms * 1e3:7.1f} ms"
          f" -> speed-up x{full / early_ms:.2f} over all exits, x{plain / early_ms:.2f} over the backbone"
          f" (MACs predict x{predicted:.2f}: {100 * plain / early_ms / predicted:.0f}% of it)")
    print(f"    the backbone alone, the same samples dropped at the same blocks: {median['dropped'] * 1e3:7.1f} ms,"
          f" x{plain / median['dropped']:.2f} (what the blocks' times predict; the ICs and exit decisions take"
          f" {100 * (early_ms / median['dropped'] - 1):.0f}% more)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions of each step")
    parser.add_argument("--batch", type=int, default=256, help="batch of the early-exit measurement")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; random weights and inputs")
    print("(a) training step, multi-exit (an IC after every block) over the plain backbone:")
    for name in CASES:
        training_overhead(name, args.repeats)
    print("  MACs leave out element-wise work: a pooled IC max- and average-pools its block's whole output map.")
    print("(b) early-exit inference; randomly initialised models: the threshold, not accuracy,"
          " sets where samples leave:")
    for name in CASES:
        early_exit_speedup(name, args.repeats, args.batch)


if __name__ == "__main__":
    main()
