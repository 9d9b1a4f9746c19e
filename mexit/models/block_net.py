"""The base of the networks mexit writes itself: a `stem`, a list of `blocks` and a `final_head`."""
from __future__ import annotations

from torch import Tensor, nn


class BlockNet(nn.Module):
    """A network that runs `stem`, then every module of `blocks`, then `final_head`.

    Subclasses build the three attributes, then call `init_convs`.
    """

    stem: nn.Module
    blocks: nn.ModuleList
    final_head: nn.Module

    def init_convs(self) -> None:
        """He (fan-out) initialisation of every convolution, as torchvision's ResNets."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.final_head(x)
