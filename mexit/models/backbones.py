"""Backbones by name, split into a stem, an ordered list of blocks and a final head.

Names:
- small-image ResNets: `resnet20`, `resnet32`, `resnet56`, `resnet18`, `resnet34`, `resnet50`;
- MSDNet (`mexit.models.msdnet`): `msdnet` (CIFAR configuration) and `msdnet-imagenet`; options such
  as `num_blocks`, `step`, `base`, `channels`, `growth_rate` as keywords. Its blocks output several
  scales, packed ("multiscale" features); its classifiers read the coarsest;
- torchvision: `tv/<name>` for a torchvision classification model (`tv/resnet18`, `tv/convnext_tiny`,
  `tv/efficientnet_b0`, `tv/mobilenet_v3_small`, `tv/regnet_x_400mf`, `tv/swin_t`, ...), split by
  `mexit.models.generic`, its ViTs (`tv/vit_b_16`, ...; the image size from `build(img_size=...)`
  where the weights are random) by their own split (`split_torchvision_vit`, verified as the
  generic one is);
- your own network: `py/<module>:<function>`, a function building an `nn.Module`
  (`mexit.models.custom`), split by `mexit.models.generic` and keyed by its module's source;
- timm: `timm/<name>` for any timm model: a `VisionTransformer` (ViT, DeiT, ...; pass `patch_size` as
  a keyword; the image size comes from `build(img_size=...)`) by its own split (`split_timm_vit`, verified), any
  other by `mexit.models.generic` (ResNet, ConvNeXt, EfficientNet, MobileNetV3, RegNet, Swin, MLP-Mixer,
  MetaFormer, CoAtNet, ...; models of a fixed input size get `img_size`).

Every generic split is verified when it is built (the composed parts reproduce the model's output)
and a model that fails is refused with what failed (`VERIFIED` lists the families the tests verify).
Weights: randomly initialised; `pretrained=True` takes timm's or torchvision's published ImageNet
weights from this machine's cache (downloaded first where the machine is online), and `checkpoint`
loads a local file holding the native model's state dict (timm, torchvision, or `SmallImageResNet`);
a classifier of another class count is replaced by a fresh one.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
import torchvision
from torch import Tensor, nn

from mexit.models import custom
from mexit.models.generic import SplitError, nonzero_parameters, reference_output, split_model, verify_split
from mexit.models.parts import BackboneParts, FeatureKind
from mexit.models.msdnet import MSDNETS, MSDNet, msdnet_config
from mexit.models.small_resnet import SMALL_RESNETS, SmallImageResNet

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

TIMM_PREFIX = "timm/"
TV_PREFIX = "tv/"
TV_MODELS: tuple[str, ...] = tuple(torchvision.models.list_models(module=torchvision.models))
"""torchvision's classification models (``tv/<name>``)."""
BACKBONES: tuple[str, ...] = (
    *SMALL_RESNETS,
    *MSDNETS,
    TV_PREFIX + "<a torchvision classification model>",
    TIMM_PREFIX + "<a timm model>",
    custom.PREFIX + "<module>:<function>",
)
VERIFIED: dict[str, tuple[str, ...]] = {
    "timm": ("resnet", "convnext", "efficientnet", "mobilenetv3", "regnet", "swin", "mixer", "poolformer",
             "coatnet", "ghostnet", "edgenext", "vit"),
    "torchvision": ("resnet", "convnext", "efficientnet", "efficientnet_v2", "mobilenet_v3", "regnet", "swin", "swin_v2", "vit"),
}
"""The families whose generic split (ViT: its own) the tests verify, built small with random weights."""


def _timm() -> ModuleType:
    """timm, imported where a timm model is first named: half a second that a process building none
    (a notebook reading stored ResNet runs, a CLI call) does not pay."""
    import timm

    return timm


def _timm_arch(name: str) -> str:
    arch = name.removeprefix(TIMM_PREFIX).split(".")[0]
    if not _timm().is_model(arch):
        raise ValueError(f"backbone={name!r}: timm has no model {arch!r} (timm.list_models() lists them)")
    return arch


@lru_cache(maxsize=None)
def _timm_class(arch: str) -> type[nn.Module]:
    """The class timm builds ``arch`` as, found by building it on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        return type(_timm().create_model(arch, pretrained=False))


def _is_timm_vit(arch: str) -> bool:
    vit = _timm().models.vision_transformer.VisionTransformer
    cls = _timm_class(arch)
    return issubclass(cls, vit) and cls.forward_head is vit.forward_head


@lru_cache(maxsize=None)
def _timm_features(name: str) -> FeatureKind:
    """What a timm model's blocks output: tokens for a ViT, else what its features are at its
    default input size, found on the meta device (3-D: tokens; else maps)."""
    arch = _timm_arch(name)
    if _is_timm_vit(arch):
        return "tokens"
    cfg = _timm().models.get_pretrained_cfg(arch)
    size = tuple(cfg.input_size) if cfg is not None else (3, 224, 224)
    try:
        with torch.device("meta"):
            features = _timm().create_model(arch, pretrained=False).forward_features(torch.zeros(1, *size))
    except Exception:  # a model the meta device cannot run: its split decides at build time
        return "map"
    return "tokens" if features.dim() == 3 else "map"


def _tv_features(name: str) -> FeatureKind:
    arch = name.removeprefix(TV_PREFIX)
    if arch not in TV_MODELS:
        raise ValueError(f"backbone={name!r}: torchvision has no classification model {arch!r}; "
                         f"it has {', '.join(TV_MODELS[:8])}, ... (torchvision.models.list_models(module=torchvision.models))")
    return "tokens" if arch.startswith("vit_") else "map"


def _small_resnet(name: str, num_classes: int, in_chans: int, img_size: int, weights: Weights, kwargs: dict[str, Any]) -> BackboneParts:
    if kwargs:
        raise ValueError(f"backbone={name!r} takes no backbone keyword arguments, got {sorted(kwargs)}")
    small = SmallImageResNet(SMALL_RESNETS[name], num_classes, in_chans)
    _maybe_load(small, weights.checkpoint, classifier="final_head.fc")
    return BackboneParts(small.stem, list(small.blocks), small.final_head, "map")


def _msdnet(name: str, num_classes: int, in_chans: int, img_size: int, weights: Weights, kwargs: dict[str, Any]) -> BackboneParts:
    msd = MSDNet(msdnet_config(name, kwargs), num_classes, in_chans, img_size)
    _maybe_load(msd, weights.checkpoint, classifier="final_head.fc")
    return BackboneParts(msd.stem, list(msd.blocks), msd.final_head, "multiscale")


def _torchvision_model(name: str, num_classes: int, in_chans: int, img_size: int, weights: Weights, kwargs: dict[str, Any]) -> BackboneParts:
    arch = name.removeprefix(TV_PREFIX)
    if arch.startswith("vit_") and not weights.pretrained:  # published weights fix their own image size
        kwargs = {"image_size": img_size, **kwargs}
        patch = int(arch.rsplit("_", 1)[1])  # vit_b_16: patches of 16 pixels
        if kwargs["image_size"] % patch:
            raise ValueError(f"backbone={name!r}: its patch size {patch} does not divide the image size {kwargs['image_size']}; "
                             "choose data.image_size as a multiple of it")
    if weights.pretrained:
        tv = _construct(name, torchvision.models.get_model, arch, weights="DEFAULT", **kwargs)
        _fresh_classifier(tv, num_classes, name)
    else:
        tv = _construct(name, torchvision.models.get_model, arch, weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        _adapt_first_conv(tv, in_chans, keep_weights=weights.pretrained)
    _maybe_load(tv, weights.checkpoint, classifier=_classifier_name(tv))
    if isinstance(tv, torchvision.models.VisionTransformer):
        if tv.image_size != img_size:
            raise ValueError(f"backbone={name!r}: its published weights fix the image size at {tv.image_size}; "
                             f"set data.image_size={tv.image_size}, got {img_size}")
        return split_torchvision_vit(tv, (in_chans, img_size, img_size), name)
    return _generic_parts(tv, in_chans, img_size, name)


def _timm_model(name: str, num_classes: int, in_chans: int, img_size: int, weights: Weights, kwargs: dict[str, Any]) -> BackboneParts:
    arch = name.removeprefix(TIMM_PREFIX)
    cfg = _timm().models.get_pretrained_cfg(_timm_arch(name))
    is_vit = _is_timm_vit(_timm_arch(name))
    if is_vit or (cfg is not None and cfg.fixed_input_size):
        kwargs = {"img_size": img_size, **kwargs}
    model = _construct(name, _timm().create_model, arch, pretrained=weights.pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if is_vit:
        image, patch = tuple(model.patch_embed.img_size), tuple(model.patch_embed.patch_size)
        if any(i % p for i, p in zip(image, patch)):
            raise ValueError(
                f"backbone={name!r}: patch_size {patch[0]} does not divide the image size {image[0]}; "
                "choose data.image_size (or img_size) as a multiple of model.backbone_kwargs.patch_size"
            )
        _maybe_load(model, weights.checkpoint, classifier="head")
        return split_timm_vit(model, (in_chans, *image), name)
    _maybe_load(model, weights.checkpoint, classifier=_classifier_name(model))
    return _generic_parts(model, in_chans, img_size, name)


def _custom_features(name: str, kwargs: Mapping[str, Any]) -> FeatureKind:
    """What the blocks of ``py/<module>:<function>``'s network output, from its split on the meta
    device at 224 x 224 with the run's keyword arguments ("map" where that cannot run: the split of
    the real build decides, :func:`mexit.models.build`). Imports the module: a name that does not
    import is refused here, before anything is built."""
    custom.factory(name)
    return _custom_features_of(name, custom.source_identity(name), json.dumps(dict(kwargs), sort_keys=True, default=str))


@lru_cache(maxsize=None)
def _custom_features_of(name: str, identity: str, kwargs: str) -> FeatureKind:
    """:func:`_custom_features`, cached by the module's code (``identity``) and the keyword arguments."""
    try:
        with torch.device("meta"):
            return split_model(custom.create(name, 10, 3, 224, json.loads(kwargs)), (3, 224, 224), name).features
    except ValueError:
        return "map"


def _custom_model(name: str, num_classes: int, in_chans: int, img_size: int, weights: Weights, kwargs: dict[str, Any]) -> BackboneParts:
    model = custom.create(name, num_classes, in_chans, img_size, kwargs)
    _maybe_load(model, weights.checkpoint, classifier=_classifier_name(model))
    return _generic_parts(model, in_chans, img_size, name)


def _generic_parts(model: nn.Module, in_chans: int, img_size: int, name: str) -> BackboneParts:
    try:
        return split_model(model, (in_chans, img_size, img_size), name)
    except SplitError as error:
        raise ValueError(
            f"{error}. Verified families: timm {', '.join(VERIFIED['timm'])}; torchvision {', '.join(VERIFIED['torchvision'])}"
        ) from None


def _classifier_name(model: nn.Module) -> str:
    """The name of the model's last ``Linear`` (its classifier), whose weights a checkpoint of
    another class count does not fit."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else ""


def _fresh_classifier(model: nn.Module, num_classes: int, backbone: str) -> None:
    """Replace the model's last ``Linear`` by a fresh one with ``num_classes`` outputs; ValueError
    naming ``backbone`` for a model whose classifier is not a ``Linear`` (SqueezeNet's convolution)."""
    name = _classifier_name(model)
    if not name:
        raise ValueError(f"backbone={backbone!r}: its classifier is not a torch.nn.Linear, so its published weights "
                         "cannot be given a classifier for this dataset's classes; train it from random weights")
    old = model.get_submodule(name)
    if old.out_features == num_classes:
        return
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def _adapt_first_conv(model: nn.Module, in_chans: int, keep_weights: bool = False) -> None:
    """Replace the model's first convolution by one reading ``in_chans`` channels: He-initialised,
    or, with ``keep_weights`` (published weights), its RGB filters carried over as timm carries them
    (``timm.models.adapt_input_conv``: summed over the colours for one channel; else repeated across
    the channels and scaled by 3 / ``in_chans``), so that a grey-scale input starts from the
    pretrained stem rather than a random one."""
    name, old = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation, old.groups, old.bias is not None)
    if keep_weights:
        with torch.no_grad():
            new.weight.copy_(_timm().models.adapt_input_conv(in_chans, old.weight.detach()))
            if old.bias is not None:
                new.bias.copy_(old.bias.detach())
    else:
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    setattr(parent, leaf, new)


@dataclass(frozen=True)
class Weights:
    """Where a backbone's initial weights come from: ``pretrained`` (the library's published ones)
    or a local ``checkpoint`` file; neither: random."""

    pretrained: bool = False
    checkpoint: str | Path | None = None


@dataclass(frozen=True)
class BackboneFamily:
    """Backbones built alike: which names belong (``matches``), what their blocks output
    (``features``), how one is built and split (``create``), and whether published weights exist
    (``pretrainable``)."""

    name: str
    matches: Callable[[str], bool]
    features: Callable[[str, Mapping[str, Any]], FeatureKind]
    create: Callable[[str, int, int, int, Weights, dict[str, Any]], BackboneParts]
    pretrainable: bool = False


BACKBONE_FAMILIES: tuple[BackboneFamily, ...] = (
    BackboneFamily("small-image ResNet", lambda name: name in SMALL_RESNETS, lambda name, kwargs: "map", _small_resnet),
    BackboneFamily("MSDNet", lambda name: name in MSDNETS, lambda name, kwargs: "multiscale", _msdnet),
    BackboneFamily("torchvision", lambda name: name.startswith(TV_PREFIX), lambda name, kwargs: _tv_features(name), _torchvision_model, True),
    BackboneFamily("timm", lambda name: name.startswith(TIMM_PREFIX), lambda name, kwargs: _timm_features(name), _timm_model, True),
    BackboneFamily("your own", custom.is_custom, _custom_features, _custom_model),
)
"""The backbone registry: a name belongs to the first family that matches it."""


def backbone_family(name: str) -> BackboneFamily:
    """The family of backbone ``name``; raises ValueError for an unknown name."""
    for family in BACKBONE_FAMILIES:
        if family.matches(name):
            return family
    raise ValueError(
        f"unknown backbone={name!r}; supported: {', '.join(BACKBONES[:-3])}, "
        f"'{TV_PREFIX}<name>' for a torchvision classification model, '{TIMM_PREFIX}<name>' for a timm model, "
        f"or '{custom.PREFIX}<module>:<function>' for a network of your own"
    )


def backbone_features(name: str, kwargs: Mapping[str, Any] | None = None) -> FeatureKind:
    """What the blocks of backbone ``name`` output (built with the keyword arguments ``kwargs``, where
    that matters: a network of the user's own); raises ValueError for an unknown name."""
    return backbone_family(name).features(name, kwargs or {})


def pretrained_tag(name: str) -> str:
    """The published weights ``pretrained=True`` names for backbone ``name`` (timm's
    ``architecture.tag``, or torchvision's weights enum), what a run's key holds; whether they are on
    this machine is :func:`pretrained_weights`' check. Raises ValueError naming ``model.pretrained``
    for a backbone without published weights."""
    return _published(name)[0]


def pretrained_weights(name: str) -> str:
    """:func:`pretrained_tag`, checked to be on this machine: in the cache, or downloaded when
    building where downloads are allowed. Raises ValueError naming ``model.pretrained`` and the
    local-file option otherwise: what a page checks before it trains and a build before it starts."""
    tag, found = _published(name)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    if not found and offline:
        raise ValueError(
            f"model.pretrained: the weights {tag} of backbone={name!r} are not on this machine and it is offline "
            "(HF_HUB_OFFLINE=1): download them once where there is a network, or save the model's state dict to a "
            "file and pass it as model.checkpoint (with model.pretrained false)"
        )
    return tag


def _published(name: str) -> tuple[str, bool]:
    """The published weights' tag for backbone ``name`` and whether they are in this machine's cache."""
    family = backbone_family(name)
    if not family.pretrainable:
        raise ValueError(f"model.pretrained: backbone={name!r} ({family.name}) has no published weights; "
                         "pretrained weights exist for tv/<name> and timm/<name> backbones (a network of your own "
                         "loads its weights in its function, or from model.checkpoint)")
    family.features(name, {})
    if family.name == "timm":
        cfg = _timm().models.get_pretrained_cfg(name.removeprefix(TIMM_PREFIX))
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise ValueError(f"model.pretrained: timm publishes no weights for {name!r}")
        tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else str(cfg.architecture)
        return tag, _timm_cached(cfg)
    enum = torchvision.models.get_model_weights(name.removeprefix(TV_PREFIX)).DEFAULT
    return f"{type(enum).__name__}.{enum.name}", (Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name).is_file()


def _timm_cached(cfg: Any) -> bool:
    if cfg.file:
        return Path(cfg.file).is_file()
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        return any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, f), str)
                   for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name).is_file()


def create_backbone(
    name: str,
    num_classes: int,
    *,
    in_chans: int = 3,
    img_size: int = 32,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> BackboneParts:
    """Creates backbone ``name`` (randomly initialised, from its published weights where
    ``pretrained``, or from a local ``checkpoint``) and splits it."""
    family = backbone_family(name)
    family.features(name, {})  # an unknown or unsplittable name fails here, before anything is built
    downloads = {"pretrained", "weights", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path"} & set(kwargs)
    if downloads:
        raise ValueError(f"backbone keyword arguments {sorted(downloads)} are not accepted: "
                         "use model.pretrained for published weights, model.checkpoint for a local file")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ValueError(f"checkpoint={str(checkpoint)!r} is not a file")
    if pretrained and checkpoint is not None:
        raise ValueError("model.pretrained and model.checkpoint both name initial weights; set one")
    if pretrained:
        pretrained_weights(name)
    return family.create(name, num_classes, in_chans, img_size, Weights(pretrained, checkpoint), kwargs)


def _construct(name: str, factory: Any, arch: str, **kwargs: Any) -> nn.Module:
    try:
        return factory(arch, **kwargs)
    except Exception as error:  # timm asserts, e.g. a width the heads do not divide; or fails on a list too short
        raise ValueError(f"backbone={name!r} rejected its keyword arguments {sorted(kwargs)}: {error}") from None


def _maybe_load(model: nn.Module, checkpoint: str | Path | None, classifier: str) -> None:
    """Loads a local state dict strictly, except a classifier whose shape differs (kept fresh)."""
    if checkpoint is None:
        return
    state = _timm().models.load_state_dict(str(checkpoint), weights_only=True)  # timm's reader of torch and safetensors files
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


def split_timm_vit(model: VisionTransformer, input_shape: tuple[int, int, int], name: str) -> BackboneParts:
    """Splits a timm ViT into embedding, encoder blocks and head (final norm, pooling, classifier);
    verified (:func:`mexit.models.generic.verify_split`) against the output the whole model gave
    before the embedding took its blocks and head out of it, all-zero parameters filled meanwhile
    (:func:`mexit.models.generic.nonzero_parameters`)."""
    with nonzero_parameters(model):  # the parameters are taken before the cut, and zeroed again after it
        expected = reference_output(model, input_shape)
        head = ViTClassifier(model)
        blocks = list(model.blocks)
        token_pool = "token" if model.cls_token is not None else "avg"
        parts = BackboneParts(ViTEmbedding(model), blocks, head, "tokens", token_pool, model.num_prefix_tokens)
        return verify_split(model, parts, input_shape, name, expected=expected)  # a SplitError is a ValueError naming the model


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
        self.pool_tokens = _timm().layers.global_pool_nlc

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        if self.attn_pool is not None:
            x = self.attn_pool(x if self.pool_include_prefix else x[:, self.num_prefix_tokens:])
        else:
            x = self.pool_tokens(x, self.global_pool, self.num_prefix_tokens, self.pool_include_prefix)
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


def split_torchvision_vit(model: torchvision.models.VisionTransformer, input_shape: tuple[int, int, int], name: str) -> BackboneParts:
    """Splits a torchvision ViT into embedding (what its encoder does before its layers: patches,
    class token, position embedding, dropout), the encoder's layers and head (the encoder's final
    LayerNorm, the class token, the classifier); verified (:func:`mexit.models.generic.verify_split`)
    with its zero-initialised classifier and class token filled meanwhile, else the check would
    compare zeros (:func:`mexit.models.generic.nonzero_parameters`)."""
    parts = BackboneParts(TorchvisionViTEmbedding(model), list(model.encoder.layers), TorchvisionViTClassifier(model), "tokens", "token", 1)
    with nonzero_parameters(model):
        return verify_split(model, parts, input_shape, name)  # a SplitError is a ValueError naming the model


class TorchvisionViTEmbedding(nn.Module):
    """The start of a torchvision ViT: patch projection, class token, position embedding and dropout."""

    def __init__(self, vit: torchvision.models.VisionTransformer) -> None:
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout

    def forward(self, x: Tensor) -> Tensor:
        patches = self.conv_proj(x).flatten(2).transpose(1, 2)  # (N, D, h, w) -> (N, h * w, D)
        tokens = torch.cat([self.class_token.expand(len(x), -1, -1), patches], dim=1)
        return self.dropout(tokens + self.pos_embedding)


class TorchvisionViTClassifier(nn.Module):
    """The end of a torchvision ViT: the encoder's final LayerNorm, the class token and the heads."""

    def __init__(self, vit: torchvision.models.VisionTransformer) -> None:
        super().__init__()
        self.ln = vit.encoder.ln
        self.heads = vit.heads

    def forward(self, x: Tensor) -> Tensor:
        return self.heads(self.ln(x)[:, 0])
