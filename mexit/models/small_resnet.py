"""ResNets for small images (CIFAR, TinyImageNet, MNIST): 3x3 stride-1 stem, no max-pool.

`resnet20/32/56` are the 3-stage CIFAR ResNets of He et al. (2016), widths 16/32/64;
`resnet18/34/50` keep the ImageNet layouts (widths 64..512) behind the small-image stem, as the
paper and SDN use them on CIFAR and TinyImageNet. Blocks are torchvision's `BasicBlock` and
`Bottleneck`; a block that changes shape gets a 1x1 conv + BatchNorm shortcut.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from mexit.models.block_net import BlockNet


@dataclass(frozen=True)
class ResNetLayout:
    """Block type, blocks per stage and the width of each stage."""

    block: type[BasicBlock] | type[Bottleneck]
    depths: tuple[int, ...]
    widths: tuple[int, ...]


SMALL_RESNETS: dict[str, ResNetLayout] = {
    "resnet20": ResNetLayout(BasicBlock, (3, 3, 3), (16, 32, 64)),
    "resnet32": ResNetLayout(BasicBlock, (5, 5, 5), (16, 32, 64)),
    "resnet56": ResNetLayout(BasicBlock, (9, 9, 9), (16, 32, 64)),
    "resnet18": ResNetLayout(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet34": ResNetLayout(BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet50": ResNetLayout(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512)),
}


class SmallImageResNet(BlockNet):
    """A ResNet as `stem`, a flat list of residual `blocks`, and `final_head` (pool, flatten, fc).

    The first stage keeps the resolution; each later stage halves it.
    """

    def __init__(self, layout: ResNetLayout, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        width = layout.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        channels = width
        for stage, (depth, planes) in enumerate(zip(layout.depths, layout.widths)):
            for index in range(depth):
                stride = 2 if stage > 0 and index == 0 else 1
                out_channels = planes * layout.block.expansion
                shortcut = None
                if stride != 1 or channels != out_channels:
                    shortcut = nn.Sequential(
                        nn.Conv2d(channels, out_channels, kernel_size=1, stride=stride, bias=False),
                        nn.BatchNorm2d(out_channels),
                    )
                blocks.append(layout.block(channels, planes, stride=stride, downsample=shortcut))
                channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.final_head = nn.Sequential(OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            fc=nn.Linear(channels, num_classes),
        ))
        self.init_convs()
