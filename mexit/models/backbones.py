"""Backbones by name, split into a stem, an ordered list of blocks and a final head.

Names:
- small-image ResNets: `resnet20`, `resnet32`, `resnet56`, `resnet18`, `resnet34`, `resnet50`;
- MSDNet (`mexit.models.msdnet`): `msdnet` (CIFAR configuration) and `msdnet-imagenet`; options such
  as `num_blocks`, `step`, `base`, `channels`, `growth_rate` as keywords. Its blocks output several
  scales, packed ("multiscale" features); its classifiers read the coarsest;
- torchvision ResNets: `tv/<name>` (`tv/resnet18`, `tv/wide_resnet50_2`, ...), ImageNet stem;
- timm: `timm/<name>` for any timm model built as a `ResNet` (ResNet, ResNeXt, SE-ResNet, ...) or a
  `VisionTransformer` (ViT-T/S/B/..., DeiT, ...; any patch and image size: pass `patch_size` as a
  keyword; the image size comes from `build(img_size=...)`), recognised by class (`TIMM_FAMILIES`).

Weights are never downloaded: models are created with `pretrained=False`, and `checkpoint` loads a
local file holding the native model's state dict (timm, torchvision, or `SmallImageResNet`).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import timm
import torch
import torchvision
from timm.layers import global_pool_nlc
from timm.models.resnet import ResNet as TimmResNet
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from mexit.models.msdnet import MSDNETS, MSDNet, msdnet_config
from mexit.models.small_resnet import SMALL_RESNETS, SmallImageResNet

FeatureKind = Literal["map", "tokens", "multiscale"]

TIMM_PREFIX = "timm/"
TV_PREFIX = "tv/"
TIMM_FAMILIES: dict[type[nn.Module], FeatureKind] = {TimmResNet: "map", VisionTransformer: "tokens"}
"""The timm classes mexit can split, by what their blocks output; a timm model is accepted by the
class timm builds it as (ViT, DeiT and others built on `VisionTransformer`; ResNet, ResNeXt,
SE-ResNet and others built on `ResNet`), unless it replaces the class's final head (DeiT's distilled
two-head models do)."""
TV_RESNETS: tuple[str, ...] = tuple(
    name for name in torchvision.models.list_models(module=torchvision.models)
    if name.startswith(("resnet", "resnext", "wide_resnet"))
)
BACKBONES: tuple[str, ...] = (
    *SMALL_RESNETS,
    *MSDNETS,
    *(TV_PREFIX + name for name in TV_RESNETS),
    TIMM_PREFIX + "<any timm ResNet or VisionTransformer model>",
)


@dataclass
class BackboneParts:
    """A backbone cut into `stem`, `blocks` and `final_head`.

    `features` says what a block outputs: "map" (N, C, H, W), "tokens" (N, L, D) or "multiscale"
    (MSDNet's scales packed into (N, values); its blocks' `out_shapes` give each scale's (C, H, W)). For tokens,
    `token_pool` says how an internal classifier summarises them ("token": the class token,
    "avg": the mean of the patch tokens) and `num_prefix_tokens` counts class/register tokens.
    """

    stem: nn.Module
    blocks: list[nn.Module]
    final_head: nn.Module
    features: FeatureKind
    token_pool: str = "token"
    num_prefix_tokens: int = 0


@lru_cache(maxsize=None)
def _timm_class(arch: str) -> type[nn.Module]:
    """The class timm builds ``arch`` as, found by building it on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        return type(timm.create_model(arch, pretrained=False))


def _timm_features(name: str) -> FeatureKind:
    arch = name.removeprefix(TIMM_PREFIX).split(".")[0]
    if not timm.is_model(arch):
        raise ValueError(f"backbone={name!r}: timm has no model {arch!r} (timm.list_models() lists them)")
    cls = _timm_class(arch)
    for family, features in TIMM_FAMILIES.items():
        if issubclass(cls, family) and family.forward_head is cls.forward_head:
            return features
    raise ValueError(
        f"backbone={name!r}: timm builds {arch!r} as a {cls.__name__}; accepted are models of the classes "
        f"{', '.join(sorted(c.__name__ for c in TIMM_FAMILIES))} (or subclasses with their final head), "
        "e.g. any ViT or DeiT, ResNet or ResNeXt"
    )


def _small_resnet(name: str, num_classes: int, in_chans: int, img_size: int, checkpoint: str | Path | None, kwargs: dict[str, Any]) -> BackboneParts:
    if kwargs:
        raise ValueError(f"backbone={name!r} takes no backbone keyword arguments, got {sorted(kwargs)}")
    small = SmallImageResNet(SMALL_RESNETS[name], num_classes, in_chans)
    _maybe_load(small, checkpoint, classifier="final_head.fc")
    return BackboneParts(small.stem, list(small.blocks), small.final_head, "map")


def _msdnet(name: str, num_classes: int, in_chans: int, img_size: int, checkpoint: str | Path | None, kwargs: dict[str, Any]) -> BackboneParts:
    msd = MSDNet(msdnet_config(name, kwargs), num_classes, in_chans, img_size)
    _maybe_load(msd, checkpoint, classifier="final_head.fc")
    return BackboneParts(msd.stem, list(msd.blocks), msd.final_head, "multiscale")


def _torchvision_resnet(name: str, num_classes: int, in_chans: int, img_size: int, checkpoint: str | Path | None, kwargs: dict[str, Any]) -> BackboneParts:
    arch = name.removeprefix(TV_PREFIX)
    tv = _construct(name, torchvision.models.get_model, arch, weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        old = tv.conv1
        tv.conv1 = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        nn.init.kaiming_normal_(tv.conv1.weight, mode="fan_out", nonlinearity="relu")
    _maybe_load(tv, checkpoint, classifier="fc")
    return split_torchvision_resnet(tv)


def _timm_model(name: str, num_classes: int, in_chans: int, img_size: int, checkpoint: str | Path | None, kwargs: dict[str, Any]) -> BackboneParts:
    arch = name.removeprefix(TIMM_PREFIX)
    if _timm_features(name) == "tokens":
        kwargs = {"img_size": img_size, **kwargs}
    model = _construct(name, timm.create_model, arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if isinstance(model, VisionTransformer):
        image, patch = tuple(model.patch_embed.img_size), tuple(model.patch_embed.patch_size)
        if any(i % p for i, p in zip(image, patch)):
            raise ValueError(
                f"backbone={name!r}: patch_size {patch[0]} does not divide the image size {image[0]}; "
                "choose data.image_size (or img_size) as a multiple of model.backbone_kwargs.patch_size"
            )
        _maybe_load(model, checkpoint, classifier="head")
        return split_timm_vit(model)
    if isinstance(model, TimmResNet):
        _maybe_load(model, checkpoint, classifier="fc")
        return split_timm_resnet(model)
    raise ValueError(f"backbone={name!r} built a {type(model).__name__}, not a timm ResNet or VisionTransformer")


@dataclass(frozen=True)
class BackboneFamily:
    """Backbones built alike: which names belong (``matches``), what their blocks output
    (``features``), and how one is built and split (``create``)."""

    name: str
    matches: Callable[[str], bool]
    features: Callable[[str], FeatureKind]
    create: Callable[[str, int, int, int, str | Path | None, dict[str, Any]], BackboneParts]


BACKBONE_FAMILIES: tuple[BackboneFamily, ...] = (
    BackboneFamily("small-image ResNet", lambda name: name in SMALL_RESNETS, lambda name: "map", _small_resnet),
    BackboneFamily("MSDNet", lambda name: name in MSDNETS, lambda name: "multiscale", _msdnet),
    BackboneFamily(
        "torchvision ResNet", lambda name: name.startswith(TV_PREFIX) and name.removeprefix(TV_PREFIX) in TV_RESNETS,
        lambda name: "map", _torchvision_resnet,
    ),
    BackboneFamily("timm", lambda name: name.startswith(TIMM_PREFIX), _timm_features, _timm_model),
)
"""The backbone registry: a name belongs to the first family that matches it."""


def backbone_family(name: str) -> BackboneFamily:
    """The family of backbone ``name``; raises ValueError for an unknown name."""
    for family in BACKBONE_FAMILIES:
        if family.matches(name):
            return family
    raise ValueError(
        f"unknown backbone={name!r}; supported: {', '.join(BACKBONES[:-1])}, or "
        f"'{TIMM_PREFIX}<name>' for any timm ResNet or VisionTransformer model (ViT, DeiT, ResNeXt, ...)"
    )


def backbone_features(name: str) -> FeatureKind:
    """What the blocks of backbone ``name`` output; raises ValueError for an unknown name."""
    return backbone_family(name).features(name)


def create_backbone(
    name: str,
    num_classes: int,
    *,
    in_chans: int = 3,
    img_size: int = 32,
    checkpoint: str | Path | None = None,
    **kwargs: Any,
) -> BackboneParts:
    """Creates backbone ``name`` (randomly initialised or from a local ``checkpoint``) and splits it."""
    family = backbone_family(name)
    family.features(name)  # a timm name of an unsupported class fails here, before anything is built
    downloads = {"pretrained", "weights", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path"} & set(kwargs)
    if downloads:
        raise ValueError(f"backbone keyword arguments {sorted(downloads)} are not accepted: weights are "
                         "never downloaded; pass a local state dict file as checkpoint=")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ValueError(f"checkpoint={str(checkpoint)!r} is not a file")
    return family.create(name, num_classes, in_chans, img_size, checkpoint, kwargs)


def _construct(name: str, factory: Any, arch: str, **kwargs: Any) -> nn.Module:
    try:
        return factory(arch, **kwargs)
    except (TypeError, AssertionError) as error:  # timm asserts, e.g. a width the heads do not divide
        raise ValueError(f"backbone={name!r} rejected its keyword arguments {sorted(kwargs)}: {error}") from None


def _maybe_load(model: nn.Module, checkpoint: str | Path | None, classifier: str) -> None:
    """Loads a local state dict strictly, except a classifier whose shape differs (kept fresh)."""
    if checkpoint is None:
        return
    state = timm.models.load_state_dict(str(checkpoint), weights_only=True)
    own = model.state_dict()
    mismatched = [key for key in state if key in own and state[key].shape != own[key].shape]
    fresh = [key for key in mismatched if key.startswith(classifier + ".")]
    problems = {
        "missing keys": [key for key in own if key not in state],
        "unexpected keys": [key for key in state if key not in own],
        "keys of another shape": [key for key in mismatched if key not in fresh],
    }
    if any(problems.values()):
        found = "; ".join(f"{what} {keys[:5]}" for what, keys in problems.items() if keys)
        raise ValueError(f"checkpoint={str(checkpoint)!r} does not match the backbone: {found}")
    model.load_state_dict({key: value for key, value in state.items() if key not in fresh}, strict=False)


def split_torchvision_resnet(model: torchvision.models.ResNet) -> BackboneParts:
    """Splits a torchvision ResNet (ImageNet stem with max-pool) into stem, blocks and head."""
    stem = nn.Sequential(OrderedDict(conv1=model.conv1, bn1=model.bn1, relu=model.relu, maxpool=model.maxpool))
    blocks = [block for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for block in layer]
    head = nn.Sequential(OrderedDict(pool=model.avgpool, flatten=nn.Flatten(1), fc=model.fc))
    return BackboneParts(stem, blocks, head, "map")


def split_timm_resnet(model: TimmResNet) -> BackboneParts:
    """Splits a timm ResNet into stem, blocks and head (pool, dropout, fc)."""
    stem = nn.Sequential(OrderedDict(conv1=model.conv1, bn1=model.bn1, act1=model.act1, maxpool=model.maxpool))
    blocks = [block for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for block in layer]
    head = nn.Sequential(OrderedDict(
        global_pool=model.global_pool, drop=nn.Dropout(float(model.drop_rate)), fc=model.fc
    ))
    return BackboneParts(stem, blocks, head, "map")


def split_timm_vit(model: VisionTransformer) -> BackboneParts:
    """Splits a timm ViT into embedding, encoder blocks and head (final norm, pooling, classifier)."""
    head = ViTClassifier(model)
    blocks = list(model.blocks)
    token_pool = "token" if model.cls_token is not None else "avg"
    return BackboneParts(ViTEmbedding(model), blocks, head, "tokens", token_pool, model.num_prefix_tokens)


class ViTClassifier(nn.Module):
    """The end of a timm ViT: final LayerNorm, token pooling, fc-norm, dropout and classifier."""

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        self.norm = vit.norm
        self.attn_pool = vit.attn_pool
        self.fc_norm = vit.fc_norm
        self.head_drop = vit.head_drop
        self.head = vit.head
        self.global_pool = vit.global_pool
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.pool_include_prefix = vit.pool_include_prefix

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        if self.attn_pool is not None:
            x = self.attn_pool(x if self.pool_include_prefix else x[:, self.num_prefix_tokens:])
        else:
            x = global_pool_nlc(x, self.global_pool, self.num_prefix_tokens, self.pool_include_prefix)
        return self.head(self.head_drop(self.fc_norm(x)))


class ViTEmbedding(nn.Module):
    """The start of a timm ViT: patch embedding, class/register tokens and position embedding."""

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        vit.blocks = nn.Sequential()
        vit.norm = nn.Identity()
        vit.attn_pool = None
        vit.fc_norm = nn.Identity()
        vit.head_drop = nn.Identity()
        vit.head = nn.Identity()
        self.vit = vit

    def forward(self, x: Tensor) -> Tensor:
        return self.vit.forward_features(x)
