"""What a backbone is cut into: a stem, an ordered list of blocks and a final head, and what the
blocks output. Built by the backbone families (:mod:`mexit.models.backbones`) and by the generic
split (:mod:`mexit.models.generic`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

FeatureKind = Literal["map", "tokens", "multiscale"]


@dataclass
class BackboneParts:
    """A backbone cut into `stem`, `blocks` and `final_head`.

    `features` says what a block outputs: "map" (N, C, H, W; or (N, H, W, C) where `layout` is
    "nhwc"), "tokens" (N, L, D) or "multiscale" (MSDNet's scales packed into (N, values); its blocks'
    `out_shapes` give each scale's (C, H, W)). For tokens, `token_pool` says how an internal
    classifier summarises them ("token": the class token, "avg": the mean of the patch tokens) and
    `num_prefix_tokens` counts class/register tokens.
    """

    stem: nn.Module
    blocks: list[nn.Module]
    final_head: nn.Module
    features: FeatureKind
    token_pool: str = "token"
    num_prefix_tokens: int = 0
    layout: str = "nchw"
