"""MSDNet (Huang et al., "Multi-Scale Dense Networks for Resource Efficient Image Classification",
ICLR 2018), written from the paper's description, as a stem, a list of blocks and a final head.

The network keeps feature maps at several scales (each coarser one at half the resolution). A layer
adds new features at every scale it keeps: at the finest kept scale from a 3x3 conv of that scale's
features; at each coarser scale half from a strided 3x3 conv of the next finer scale and half from
a 3x3 conv of its own scale (each conv after an optional 1x1 bottleneck), concatenated densely to
the features it had. Deeper layers drop the finest scales (the layers are split into as many equal
parts as there are scales; part i keeps the coarsest S - i + 1), and after a layer that drops one,
a 1x1 transition compresses each kept scale by `reduction`. Block 1 has `base` layers, every later
block `step`; each block feeds a classifier: two strided 3x3 convs on the coarsest scale, global
average pooling and a Linear (the last block's classifier is `final_head`).

Names (`MSDNETS`):
- `msdnet`: the paper's CIFAR configuration: 3 scales, 3x3 stride-1 stem, 7 blocks, step 2,
  base 4, 16 channels, growth rate 6, growth and bottleneck factors 1-2-4.
- `msdnet-imagenet`: the ImageNet configuration: 4 scales, 7x7 stride-2 conv and max-pool stem,
  5 blocks, step 4, base 4, 32 channels, growth rate 16, factors 1-2-4-4.
Any of `num_blocks`, `step`, `base`, `channels`, `growth_rate`, `growth_factors` (one per scale;
their number sets the scales), `bottleneck_factors` and `reduction` can be overridden.

A block's output is its scales (finest first) packed into one (N, sum of C*H*W) tensor, so that
everything that handles block outputs (early exit's batch masks, gradient equilibrium, the
representation analyses) treats MSDNet like any other backbone; `unpack` gives the maps back, and
`CoarsestScale` cuts out the one the classifiers read. Packing fixes the input size at
construction (`img_size`).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from mexit.models.block_net import BlockNet

ScaleShape = tuple[int, int, int]
"""(channels, height, width) of one scale."""


@dataclass(frozen=True)
class MSDNetConfig:
    """The hyperparameters of an MSDNet; `stem` is "cifar" (3x3 stride 1) or "imagenet" (7x7/2 + max-pool)."""

    num_blocks: int
    step: int
    base: int
    channels: int
    growth_rate: int
    growth_factors: tuple[int, ...]
    bottleneck_factors: tuple[int, ...]
    reduction: float
    stem: str

    @property
    def num_scales(self) -> int:
        return len(self.growth_factors)

    @property
    def num_layers(self) -> int:
        return self.base + self.step * (self.num_blocks - 1)


MSDNETS: dict[str, MSDNetConfig] = {
    "msdnet": MSDNetConfig(7, 2, 4, 16, 6, (1, 2, 4), (1, 2, 4), 0.5, "cifar"),
    "msdnet-imagenet": MSDNetConfig(5, 4, 4, 32, 16, (1, 2, 4, 4), (1, 2, 4, 4), 0.5, "imagenet"),
}
OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(MSDNetConfig) if f.name != "stem")


def msdnet_config(name: str, options: Mapping[str, Any]) -> MSDNetConfig:
    """The configuration of `name` with `options` (backbone keyword arguments) applied and checked."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"backbone={name!r} does not take {sorted(unknown)}; it takes {', '.join(OPTIONS)}")
    values = dict(options)
    for key in ("growth_factors", "bottleneck_factors"):
        if key in values:
            factors = values[key]
            if isinstance(factors, str) or not isinstance(factors, Sequence) or not factors or not all(
                isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in factors
            ):
                raise ValueError(f"{key} must be a non-empty list of positive integers (one per scale), got {factors!r}")
            values[key] = tuple(factors)
    for key in ("num_blocks", "step", "base", "channels", "growth_rate"):
        value = values.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    reduction = values.get("reduction", 1.0)
    if isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or not 0 < reduction <= 1:
        raise ValueError(f"reduction must be a number in (0, 1], got {reduction!r}")
    config = replace(MSDNETS[name], **values)
    if len(config.bottleneck_factors) != config.num_scales:
        raise ValueError(
            f"bottleneck_factors {list(config.bottleneck_factors)} must have one factor per scale, like "
            f"growth_factors {list(config.growth_factors)} ({config.num_scales} scales)"
        )
    return config


def pack(scales: Sequence[Tensor]) -> Tensor:
    """Feature maps of several scales as one (N, sum of C*H*W) tensor."""
    return torch.cat([s.flatten(1) for s in scales], dim=1)


def unpack(x: Tensor, shapes: Sequence[ScaleShape]) -> list[Tensor]:
    """The feature maps of `shapes` back from a tensor made by `pack`."""
    sizes = [math.prod(shape) for shape in shapes]
    if x.shape[1] != sum(sizes):
        raise ValueError(f"expected packed scales {list(shapes)} ({sum(sizes)} values a sample), got {tuple(x.shape)}"
                         " (an MSDNet takes images of the size it was built for)")
    return [part.reshape(-1, *shape) for part, shape in zip(x.split(sizes, dim=1), shapes)]


class CoarsestScale(nn.Module):
    """The coarsest scale's maps, `shape` (C, H, W), out of packed multi-scale features."""

    def __init__(self, shape: ScaleShape) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"

    def forward(self, x: Tensor) -> Tensor:
        return x[:, x.shape[1] - math.prod(self.shape):].reshape(-1, *self.shape)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def halve(size: int) -> int:
    """Resolution after a stride-2 conv or pool with 'same' padding."""
    return (size + 1) // 2


def branch(in_channels: int, out_channels: int, bottleneck_factor: int, stride: int) -> nn.Sequential:
    """1x1 bottleneck (width min(in, factor * out)) then a 3x3 conv of `stride`."""
    width = min(in_channels, bottleneck_factor * out_channels)
    return nn.Sequential(conv_bn_relu(in_channels, width, 1), conv_bn_relu(width, out_channels, 3, stride))


def classifier_body(shape: ScaleShape, width: int) -> nn.Sequential:
    """MSDNet's classifier up to its Linear: two strided 3x3 convs of `width` channels on the
    coarsest scale (`shape`), global average pooling; outputs `width` values a sample."""
    return nn.Sequential(
        CoarsestScale(shape),
        conv_bn_relu(shape[0], width, 3, stride=2),
        conv_bn_relu(width, width, 3, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
    )


class MSDStem(nn.Module):
    """The first layer: the finest scale from the image, each coarser one by a strided 3x3 conv."""

    def __init__(self, config: MSDNetConfig, in_chans: int, img_size: int) -> None:
        super().__init__()
        widths = [config.channels * f for f in config.growth_factors]
        if config.stem == "cifar":
            first = conv_bn_relu(in_chans, widths[0], 3)
            size = img_size
        else:
            first = nn.Sequential(conv_bn_relu(in_chans, widths[0], 7, stride=2), nn.MaxPool2d(3, 2, padding=1))
            size = halve(halve(img_size))
        self.scales = nn.ModuleList([first] + [
            conv_bn_relu(widths[s - 1], widths[s], 3, stride=2) for s in range(1, config.num_scales)
        ])
        self.out_shapes: list[ScaleShape] = []
        for width in widths:
            self.out_shapes.append((width, size, size))
            size = halve(size)

    def forward(self, x: Tensor) -> Tensor:
        scales = []
        for conv in self.scales:
            x = conv(x)
            scales.append(x)
        return pack(scales)


class MSDLayer(nn.Module):
    """One dense multi-scale layer: new features at the coarsest `num_out` of its input scales.

    `scale_ids` are the input scales' indices (0 = finest of the network) and `shapes` their sizes.
    """

    def __init__(self, config: MSDNetConfig, scale_ids: Sequence[int], shapes: Sequence[ScaleShape], num_out: int) -> None:
        super().__init__()
        self.keep = len(scale_ids) - num_out
        self.regular = nn.ModuleList()
        self.strided = nn.ModuleList()
        self.out_shapes: list[ScaleShape] = []
        for j in range(self.keep, len(scale_ids)):
            scale = scale_ids[j]
            new = config.growth_rate * config.growth_factors[scale]
            channels, height, width = shapes[j]
            if j == 0:
                self.strided.append(nn.Identity())
                own = new
            else:
                down = new // 2
                self.strided.append(branch(shapes[j - 1][0], down, config.bottleneck_factors[scale - 1], stride=2))
                own = new - down
            self.regular.append(branch(channels, own, config.bottleneck_factors[scale], stride=1))
            self.out_shapes.append((channels + new, height, width))

    def forward(self, scales: list[Tensor]) -> list[Tensor]:
        out = []
        for k, (regular, strided) in enumerate(zip(self.regular, self.strided)):
            j = self.keep + k
            parts = [scales[j]] if j == 0 else [scales[j], strided(scales[j - 1])]
            out.append(torch.cat([*parts, regular(scales[j])], dim=1))
        return out


class Transition(nn.Module):
    """1x1 conv + BatchNorm + ReLU per scale, to `reduction` of its channels."""

    def __init__(self, shapes: Sequence[ScaleShape], reduction: float) -> None:
        super().__init__()
        widths = [max(1, math.floor(c * reduction)) for c, _, _ in shapes]
        self.convs = nn.ModuleList([conv_bn_relu(c, w, 1) for (c, _, _), w in zip(shapes, widths)])
        self.out_shapes: list[ScaleShape] = [(w, h, v) for (_, h, v), w in zip(shapes, widths)]

    def forward(self, scales: list[Tensor]) -> list[Tensor]:
        return [conv(s) for conv, s in zip(self.convs, scales)]


class MSDBlock(nn.Module):
    """Consecutive MSDNet layers (and transitions) from packed scales `in_shapes` to packed `out_shapes`."""

    def __init__(self, layers: Sequence[nn.Module], in_shapes: Sequence[ScaleShape]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.in_shapes = list(in_shapes)
        self.out_shapes: list[ScaleShape] = list(layers[-1].out_shapes)

    @property
    def coarsest_values(self) -> int:
        """Values a sample of its output's coarsest scale: the last ones of the packed output."""
        return math.prod(self.out_shapes[-1])

    def forward(self, x: Tensor) -> Tensor:
        scales = unpack(x, self.in_shapes)
        for layer in self.layers:
            scales = layer(scales)
        return pack(scales)


class MSDNet(BlockNet):
    """An MSDNet as `stem`, `blocks` (one per classifier) and `final_head` (the last block's classifier).

    `classifier_width` is the channel count of the classifiers' two convs (128 in the paper).
    """

    def __init__(
        self, config: MSDNetConfig, num_classes: int, in_chans: int = 3, img_size: int = 32, classifier_width: int = 128
    ) -> None:
        super().__init__()
        self.stem = MSDStem(config, in_chans, img_size)
        shapes = self.stem.out_shapes
        scale_ids = list(range(config.num_scales))
        blocks: list[nn.Module] = []
        layer = 0
        for b in range(config.num_blocks):
            in_shapes, layers = shapes, []
            for _ in range(config.base if b == 0 else config.step):
                num_out = config.num_scales - (config.num_scales * layer) // config.num_layers
                dropped = num_out < len(scale_ids)
                layers.append(MSDLayer(config, scale_ids, shapes, num_out))
                shapes, scale_ids = layers[-1].out_shapes, scale_ids[len(scale_ids) - num_out:]
                if dropped and config.reduction < 1:
                    layers.append(Transition(shapes, config.reduction))
                    shapes = layers[-1].out_shapes
                layer += 1
            blocks.append(MSDBlock(layers, in_shapes))
        self.blocks = nn.ModuleList(blocks)
        self.final_head = nn.Sequential(OrderedDict(
            body=classifier_body(shapes[-1], classifier_width), fc=nn.Linear(classifier_width, num_classes)
        ))
        self.init_convs()
