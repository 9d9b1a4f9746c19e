"""Multi-exit models: backbones split into blocks, internal classifiers (ICs), exit methods.

Build a model, get every exit's logits in one pass, or exit early::

    import torch
    from mexit.models import build

    model = build("resnet20", num_classes=10, in_chans=1, img_size=32, placement="every")
    logits = model(torch.randn(8, 1, 32, 32))      # list of 9 tensors (8, 10); last = backbone's head
    model.eval()
    out = model.early_exit(torch.randn(8, 1, 32, 32), threshold=0.9)   # out.preds, out.exit_index

    vit = build("timm/vit_tiny_patch16_224", 100, img_size=32, patch_size=4, head="linear")
    r50 = build("resnet50", 200, img_size=64, placement="resnet50-paper", head="conv",
                head_kwargs={"num_layers": 2}, method="ztw")
    msd = build("msdnet", 100, placement="every", num_blocks=5)   # MSDNet's classifiers as ICs

Backbones (`BACKBONES`): small-image ResNets `resnet20/32/56/18/34/50` (3x3 stride-1 stem, no
max-pool), MSDNets `msdnet` (CIFAR) and `msdnet-imagenet`, `tv/<name>` for torchvision's
classification models and `timm/<name>` for timm's, split generically and verified
(`mexit.models.generic`; a timm or torchvision ViT by its own split, verified as well). Randomly
initialised; `pretrained=True` takes the published weights from this machine, `checkpoint=` loads a
local state dict. Heads (`HEADS`): "pooled" and "conv" for CNNs (and MSDNets' coarsest scale),
"linear" and "mlp" for ViTs, "msdnet" (MSDNet's classifier) for MSDNets; `head=None` takes the
backbone's default (`DEFAULT_HEADS`: "pooled", "linear", "msdnet"), so an MSDNet's ICs are MSDNet's
own classifiers unless another head is named. Placements: see `resolve_placement`. Methods
(`METHODS`): "sdn", "pbee", "gpf", "ztw", "l2w". Per-exit costs: `mexit.flops.exit_costs(model)`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mexit.models.backbones import BACKBONES, VERIFIED, backbone_features, create_backbone, pretrained_tag
from mexit.models.exit_rules import EXIT_RULES
from mexit.models.heads import DEFAULT_HEADS, HEADS, BodyInput, check_head, make_head
from mexit.models.methods import METHODS, make_method
from mexit.models.multiexit import EarlyExit, MultiExit
from mexit.models.parts import BackboneParts
from mexit.models.placement import check_placement, resolve_placement

if TYPE_CHECKING:
    from mexit.config import RunConfig

__all__ = [
    "BACKBONES", "DEFAULT_HEADS", "EXIT_RULES", "HEADS", "METHODS", "VERIFIED",
    "EarlyExit", "MultiExit", "build", "build_model", "resolve_placement", "validate",
]


def validate(
    backbone: str,
    *,
    placement: str | Sequence[int] = "every",
    head: str | None = None,
    head_kwargs: Mapping[str, Any] | None = None,
    method: str = "sdn",
    method_kwargs: Mapping[str, Any] | None = None,
    pretrained: bool = False,
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Check names and options without building anything (indices vs depth are checked by `build`;
    a network of your own is split on the meta device to learn what its blocks output);
    with `pretrained`, that the backbone has published weights (`pretrained_tag`; whether they are on
    this machine is checked where a page is planned with its data, and by `build`)."""
    features = backbone_features(backbone, backbone_kwargs)
    if pretrained:
        pretrained_tag(backbone)
    check_head(head or DEFAULT_HEADS[features], features, backbone, head_kwargs)
    make_method(method, method_kwargs)
    check_placement(placement)


def build(
    backbone: str,
    num_classes: int,
    *,
    in_chans: int = 3,
    img_size: int = 32,
    placement: str | Sequence[int] = "every",
    head: str | None = None,
    head_kwargs: Mapping[str, Any] | None = None,
    method: str = "sdn",
    method_kwargs: Mapping[str, Any] | None = None,
    checkpoint: str | None = None,
    pretrained: bool = False,
    **backbone_kwargs: Any,
) -> MultiExit:
    """A multi-exit model: `backbone` with one `head` IC after each block of `placement`.

    Args:
        backbone: a name from `BACKBONES`: "tv/<name>" or "timm/<name>" for a torchvision or timm model,
            "py/<module>:<function>" for a network of your own (`mexit.models.custom`).
        num_classes: classes of every exit.
        in_chans, img_size: input images are (in_chans, img_size, img_size).
        placement: 1-based block indices, or a scheme ("every", "every<k>", "resnet50-paper").
        head: an IC head from `HEADS`, fitting the backbone (feature maps, ViT tokens or MSDNet's
            scales); None: the backbone's default from `DEFAULT_HEADS`.
        head_kwargs: the head's options (e.g. {"num_layers": 3} for "conv").
        method: an exit method from `METHODS`; method_kwargs: its options ({"state_dim"} for gpf).
        checkpoint: a local file with the backbone's own state dict (timm/torchvision format).
        pretrained: start from timm's or torchvision's published weights (from this machine).
        backbone_kwargs: passed to the timm or torchvision constructor (e.g. patch_size=4), or to
            your own network's function.

    Every argument is checked before any module is built, except that placement indices are
    checked against the depth once the backbone exists.
    """
    for key, value in {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size}.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    features = backbone_features(backbone, backbone_kwargs)
    head_name = head
    head = head_name or DEFAULT_HEADS[features]
    kwargs = check_head(head, features, backbone, head_kwargs)
    exit_method = make_method(method, method_kwargs)
    check_placement(placement)
    parts = create_backbone(
        backbone, num_classes, in_chans=in_chans, img_size=img_size, checkpoint=checkpoint, pretrained=pretrained,
        **backbone_kwargs,
    )
    if parts.features != features:  # the name's guess (from a meta build) missed: what the split found decides the ICs
        features = parts.features
        kwargs = check_head(head_name or DEFAULT_HEADS[features], features, backbone, head_kwargs)
        head = head_name or DEFAULT_HEADS[features]
    indices = resolve_placement(placement, len(parts.blocks))
    input_shape = (in_chans, img_size, img_size)
    if features == "multiscale":
        scale_shapes = [parts.blocks[i - 1].out_shapes[-1] for i in indices]
        widths = [shape[0] for shape in scale_shapes]
    else:
        scale_shapes = [None] * len(indices)
        widths = _block_widths(parts, input_shape, indices)

    def make(k: int, out_features: int, extra_features: int) -> nn.Module:
        source = BodyInput(widths[k], parts.token_pool, parts.num_prefix_tokens, scale_shapes[k], parts.layout)
        return make_head(head, source, out_features, extra_features=extra_features, **kwargs)

    ics = exit_method.build_ics(make, len(indices), num_classes)
    return MultiExit(parts.stem, parts.blocks, parts.final_head, ics, indices, exit_method, num_classes, input_shape)


@torch.no_grad()
def _block_widths(parts: BackboneParts, input_shape: tuple[int, int, int], indices: Sequence[int]) -> list[int]:
    """Channels (maps) or embedding width (tokens) of the blocks at `indices`, from one eval pass."""
    modules = [parts.stem, *parts.blocks[: max(indices, default=0)]]
    for module in modules:
        module.eval()
    x = torch.zeros(1, *input_shape)
    widths = {}
    for index, module in enumerate(modules):
        x = module(x)
        widths[index] = x.shape[1] if parts.features == "map" and parts.layout == "nchw" else x.shape[-1]
    for module in modules:
        module.train()
    return [widths[i] for i in indices]


def build_model(config: RunConfig, input_shape: tuple[int, int, int], num_classes: int) -> MultiExit:
    """A run config's multi-exit model, in channels-last memory order if ``train.channels_last``.
    :func:`build` creates the backbone before the ICs, so after the same seed the backbone's
    initial weights do not depend on the ICs."""
    m = config.model
    model = build(
        m.backbone,
        num_classes,
        in_chans=input_shape[0],
        img_size=input_shape[1],
        placement=m.placement,
        head=m.head,
        head_kwargs=m.head_kwargs,
        method=m.method,
        method_kwargs=m.method_kwargs,
        checkpoint=m.checkpoint,
        pretrained=m.pretrained,
        **m.backbone_kwargs,
    )
    return model.to(memory_format=torch.channels_last) if config.train.channels_last else model
