"""Internal classifier (IC) heads: a body that turns block features into a vector, then one Linear.

Heads for feature maps (CNN blocks, N x C x H x W):
- "pooled": the SDN head (Kaya et al., ICML 2019): a learnable scalar mix a*maxpool + (1-a)*avgpool
  down to `pool_size` x `pool_size` (adaptive, so maps smaller than that work too), flatten, Linear.
- "conv": `num_layers` (1-5) 3x3 conv + BatchNorm + ReLU layers, then the pooled head. Channel
  halvings and strides per depth follow the authors' IC-size ablation; padding 1 keeps small maps
  valid.

Heads for MSDNet's multi-scale blocks (scales packed into N x values), reading the coarsest scale:
- "msdnet": MSDNet's own classifier (Huang et al., ICLR 2018): two 3x3 stride-2 conv + BatchNorm +
  ReLU layers of `width` channels, global average pooling, Linear. The default head of MSDNets.
- "pooled" and "conv" also fit, applied to the coarsest scale's maps.

Heads for tokens (ViT blocks, N x L x D), reading the class token (or the mean of the patch tokens
for a ViT without one) of the residual stream, i.e. before the backbone's final LayerNorm:
- "linear": the paper's "1L" head, one plain Linear on the token, as in the authors' code;
  `norm=True` puts a LayerNorm before it (ours: the backbone's own classifier reads a normalised
  token, and the residual stream's scale grows with depth).
- "mlp": LayerNorm, then `layers` - 1 Linear + GELU layers of width `hidden`, then a Linear.
  The LayerNorm is ours (as for `linear`); `norm=False` drops it, as in the authors' code.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mexit.models.parts import FeatureKind
from mexit.models.msdnet import CoarsestScale, ScaleShape, classifier_body


DEFAULT_HEADS: dict[FeatureKind, str] = {"map": "pooled", "tokens": "linear", "multiscale": "msdnet"}
_READS = {"map": "feature maps", "tokens": "ViT tokens", "multiscale": "MSDNet's multi-scale features"}


def fits(head: str, features: FeatureKind) -> bool:
    """Whether `head` reads what a backbone with `features` outputs (map heads read MSDNet's coarsest scale)."""
    spec = HEADS[head].features
    return spec == features or (spec == "map" and features == "multiscale")

# (channel divisor, stride) of each conv layer, by number of layers.
CONV_LAYOUTS: dict[int, tuple[tuple[int, int], ...]] = {
    1: ((2, 2),),
    2: ((1, 2), (2, 1)),
    3: ((1, 2), (1, 1), (2, 1)),
    4: ((2, 1), (1, 1), (1, 2), (2, 1)),
    5: ((2, 1), (1, 1), (1, 1), (1, 1), (1, 1)),
}


def check_head(
    name: str, features: FeatureKind, backbone: str, head_kwargs: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Validates head `name` and its keyword arguments for a backbone; returns the full kwargs."""
    if name not in HEADS:
        raise ValueError(f"unknown head={name!r}; supported: {', '.join(HEADS)}")
    spec = HEADS[name]
    if not fits(name, features):
        fitting = [other for other in HEADS if fits(other, features)]
        raise ValueError(
            f"head={name!r} reads {_READS[spec.features]} and does not "
            f"fit backbone={backbone!r}; heads for this backbone: {', '.join(fitting)}"
        )
    kwargs = dict(head_kwargs or {})
    unknown = set(kwargs) - set(spec.defaults)
    if unknown:
        raise ValueError(
            f"head_kwargs {sorted(unknown)} not accepted by head={name!r}; it takes {sorted(spec.defaults)}"
        )
    kwargs = {**spec.defaults, **kwargs}
    ranges = {"width": (1, 4096), "pool_size": (1, 64), "num_layers": (1, max(CONV_LAYOUTS)), "hidden": (1, 1 << 20), "layers": (2, 5)}
    for key, value in kwargs.items():
        if key == "norm":
            if not isinstance(value, bool):
                raise ValueError(f"head_kwargs['norm'] must be True or False, got {value!r}")
            continue
        low, high = ranges[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"head_kwargs[{key!r}] must be an integer in {low}..{high}, got {value!r}")
    return kwargs


class MixedPool(nn.Module):
    """a * adaptive max-pool + (1 - a) * adaptive avg-pool, with a learnable scalar a (starts at 0.5).

    On channels-last maps whose sides are multiples of `size` (how mexit trains CNNs), both are
    reduced over the maps' (N, H, W, C) view (`window_mean`, and `window_max` where no gradient
    reaches the map): equal to the adaptive pools up to rounding, and 2-3x faster on a CPU.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        divisible = height % self.size == 0 and width % self.size == 0
        if divisible and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            pooled_avg = window_mean(x, self.size)
            needs_positions = x.requires_grad and torch.is_grad_enabled()
            pooled_max = F.adaptive_max_pool2d(x, self.size) if needs_positions else window_max(x, self.size)
        else:
            pooled_avg = F.adaptive_avg_pool2d(x, self.size)
            pooled_max = F.adaptive_max_pool2d(x, self.size)
        return self.alpha * pooled_max + (1 - self.alpha) * pooled_avg


def _windows(x: Tensor, size: int) -> tuple[Tensor, int, int]:
    """N x C x H x W channels-last maps as (N, size, H / size, size, W / size * C) windows of their
    (N, H, W, C) view, with the windows' W / size and C."""
    n, channels, height, width = x.shape
    rows, cols = height // size, width // size
    return x.permute(0, 2, 3, 1).reshape(n, size, rows, size, cols * channels), cols, channels


def window_mean(x: Tensor, size: int) -> Tensor:
    """The mean of each of `size` x `size` equal windows of N x C x H x W maps whose sides are
    multiples of `size`, summed along H, then W, of the maps' (N, H, W, C) view."""
    windows, cols, channels = _windows(x, size)
    sums = windows.sum(2).reshape(len(x), size, size, cols, channels).sum(3)
    return (sums / (windows.shape[2] * cols)).permute(0, 3, 1, 2)


def window_max(x: Tensor, size: int) -> Tensor:
    """The maximum of each of `size` x `size` equal windows, as `window_mean` reduces them: the
    values of `adaptive_max_pool2d`, without its positions (so no gradient for `x` like its own:
    amax splits a tie's gradient, max-pooling gives it to the first maximum)."""
    windows, cols, channels = _windows(x, size)
    return windows.amax(2).reshape(len(x), size, size, cols, channels).amax(3).permute(0, 3, 1, 2)


class TokenSummary(nn.Module):
    """The class token (`pool="token"`) or the mean of the patch tokens (`pool="avg"`)."""

    def __init__(self, pool: str, num_prefix_tokens: int) -> None:
        super().__init__()
        self.pool = pool
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0] if self.pool == "token" else x[:, self.num_prefix_tokens:].mean(1)


class ChannelsFirst(nn.Module):
    """(N, H, W, C) maps as (N, C, H, W) (a view; the channels-last memory order is kept)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2)


class Head(nn.Module):
    """An IC: `body` maps block features to `body_features` values, then one Linear.

    With `extra_features` > 0 the Linear also reads a vector passed as `extra` (ZTW's cascade).
    """

    def __init__(self, body: nn.Module, body_features: int, out_features: int, extra_features: int = 0) -> None:
        super().__init__()
        self.body = body
        self.fc = nn.Linear(body_features + extra_features, out_features)

    def forward(self, x: Tensor, extra: Tensor | None = None) -> Tensor:
        x = self.body(x)
        if extra is not None:
            x = torch.cat([x, extra], dim=-1)
        return self.fc(x)


@dataclass(frozen=True)
class BodyInput:
    """What a head's body reads: ``in_dim`` channels (maps) or embedding width (tokens); for a
    ViT, how its tokens are summarised; for an MSDNet, the (C, H, W) of its coarsest scale; the
    layout of maps."""

    in_dim: int
    token_pool: str = "token"
    num_prefix_tokens: int = 1
    scale_shape: ScaleShape | None = None
    layout: str = "nchw"
    """Feature maps' layout: "nchw", or "nhwc" (channels last, as Swin's blocks give them)."""


BodyBuilder = Callable[[BodyInput, Mapping[str, Any]], tuple[nn.Module, int]]
"""``build(input, kwargs)``: a head's body and the width of the vector it gives."""


def _pooled_body(source: BodyInput, kwargs: Mapping[str, Any], conv_layers: int = 0) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = [CoarsestScale(source.scale_shape)] if source.scale_shape is not None else []
    if source.layout == "nhwc":
        layers.append(ChannelsFirst())
    channels = source.in_dim
    for divisor, stride in CONV_LAYOUTS[conv_layers] if conv_layers else ():
        out = max(1, channels // divisor)
        layers += [
            nn.Conv2d(channels, out, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    size = kwargs["pool_size"]
    return nn.Sequential(*layers, MixedPool(size), nn.Flatten(1)), channels * size * size


def _conv_body(source: BodyInput, kwargs: Mapping[str, Any]) -> tuple[nn.Module, int]:
    return _pooled_body(source, kwargs, conv_layers=kwargs["num_layers"])


def _token_body(source: BodyInput, kwargs: Mapping[str, Any]) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = [CoarsestScale(source.scale_shape)] if source.scale_shape is not None else []
    layers += [TokenSummary(source.token_pool, source.num_prefix_tokens)]
    layers += [nn.LayerNorm(source.in_dim) if kwargs["norm"] else nn.Identity()]
    width = source.in_dim
    for _ in range(kwargs.get("layers", 1) - 1):
        layers += [nn.Linear(width, kwargs["hidden"]), nn.GELU()]
        width = kwargs["hidden"]
    return nn.Sequential(*layers), width


def _msdnet_body(source: BodyInput, kwargs: Mapping[str, Any]) -> tuple[nn.Module, int]:
    if source.scale_shape is None:
        raise ValueError("head='msdnet' needs the coarsest scale's scale_shape (C, H, W)")
    return classifier_body(source.scale_shape, kwargs["width"]), kwargs["width"]


@dataclass(frozen=True)
class HeadSpec:
    """A head in the registry: what it reads, its keyword arguments with their defaults, and the
    builder of its body."""

    features: FeatureKind
    defaults: Mapping[str, Any]
    body: BodyBuilder


HEADS: dict[str, HeadSpec] = {
    "pooled": HeadSpec("map", {"pool_size": 4}, _pooled_body),
    "conv": HeadSpec("map", {"num_layers": 1, "pool_size": 4}, _conv_body),
    "linear": HeadSpec("tokens", {"norm": False}, _token_body),
    "mlp": HeadSpec("tokens", {"hidden": 1024, "layers": 2, "norm": True}, _token_body),
    "msdnet": HeadSpec("multiscale", {"width": 128}, _msdnet_body),
}
"""The IC heads by name (the module docstring says what each is)."""


def make_head(name: str, source: BodyInput, out_features: int, *, extra_features: int = 0, **kwargs: Any) -> Head:
    """Builds head ``name`` (from :data:`HEADS`) on blocks ``source`` describes. ``kwargs`` are the
    head's keyword arguments as returned by :func:`check_head`."""
    body, width = HEADS[name].body(source, kwargs)
    return Head(body, width, out_features, extra_features)
