"""Any timm or torchvision classification model cut into stem, blocks and head, every cut verified.

A multi-exit model needs a backbone as a stem, an ordered list of blocks and a final head
(:class:`mexit.models.backbones.BackboneParts`). :func:`split_model` finds them in the model itself:

1. **Body and head.** timm models compute ``forward_head(forward_features(x))``: the body is the
   top-level children ``forward_features`` calls, in the order it calls them (recorded with hooks),
   and the head is the model's own ``forward_head`` on a view of the model that holds only the other
   children. A torchvision model's body is the top-level children its ``forward`` calls up to the
   last one that holds blocks; the children called after it are its head, run in order, with the
   flattening that its ``forward`` does between pooling and a linear classifier.
2. **Blocks.** The body is walked down through its *containers*: ``nn.Sequential`` modules whose
   children are all modules of the model's own classes (not ``torch.nn`` layers, nor a ``Sequential``
   of layers), and the modules timm's ``feature_info`` names as stages. A container that holds
   containers (a model's list of stages; a stage that holds its list of blocks beside its
   downsampling layer) is walked into; in a container that holds none, every module that is not a
   layer is a block (ConvNeXt-T: 18; EfficientNet-B0: 16; Swin-T: 12; ResNet-50: 16). A module
   other than a ``Sequential`` is walked into only when running its children in order reproduces
   its output; a stage that cannot be walked into (a CSP stage, a DenseNet block) is one block.
   What is not a block (a stem, a downsampling layer, a norm after the last stage) joins the next
   block, or the stem before the first, or the head after the last.
3. **Verification.** In eval mode, stem, blocks and head composed must reproduce the model's own
   output on a random input to within float rounding (:data:`RTOL`, :data:`ATOL`), every parameter
   that is all zeros filled with noise meanwhile (a zero-initialised term would otherwise pass
   unseen, :func:`nonzero_parameters`); otherwise the
   model is refused with what failed (on the meta device, which holds no values, only the shapes
   are checked: a study builds its models there, and once more on the CPU, before anything trains). What the blocks output is read from their output: feature maps
   (N, C, H, W), maps in channels-last layout (N, H, W, C), as timm's and torchvision's Swin give
   them, told apart by which pair of dimensions (the spatial sides of a square input) is equal in
   every block's output, or tokens (N, L, D), with
   the model's ``num_prefix_tokens`` (0 where it has none).

This split is ours; it follows the ordered-children walk of timm's feature extraction
(``timm.models._features.FeatureListNet``), which relies on the same property of a model.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from mexit.models.parts import BackboneParts

RTOL = 1e-4
"""Relative tolerance of the split's verification."""
ATOL = 1e-5
"""Absolute tolerance of the split's verification, in units of the largest output magnitude (at least 1)."""
ZERO_FILL = 0.02
"""The standard deviation of the noise an all-zero parameter holds while a split is verified
(:func:`nonzero_parameters`; a usual initialisation's scale)."""


class SplitError(ValueError):
    """A model that cannot be split into stem, blocks and head, or whose split does not reproduce it."""


def is_layer(module: nn.Module) -> bool:
    """A layer: a module of ``torch.nn`` (or a subclass of one, as timm's ``LayerNorm2d``), a module
    with no parameters, or a ``Sequential`` of layers (a conv-norm-activation)."""
    if not any(True for _ in module.parameters()):
        return True
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return isinstance(module, nn.Sequential) and all(is_layer(child) for child in module.children())
    return any(cls.__module__.startswith("torch.nn") and cls is not nn.Module for cls in type(module).__mro__)


def _is_container(module: nn.Module, stages: set[int]) -> bool:
    """A module that holds blocks: one timm names a stage, a ``Sequential`` of modules that are not
    layers, or a module with such a ``Sequential`` among its children (a stage and its blocks)."""
    if id(module) in stages:
        return True
    return _is_block_list(module) or any(_is_block_list(child) or id(child) in stages for child in module.children())


def _is_block_list(module: nn.Module) -> bool:
    """A ``Sequential`` of blocks: its children are all modules other than layers, or two or more of
    them are (MobileNetV3's blocks between its first and last conv-norm-activation)."""
    if not isinstance(module, nn.Sequential):
        return False
    children = list(module.children())
    others = sum(not is_layer(child) for child in children)
    return others >= 2 or (others == len(children) > 0)


def _in_order(module: nn.Module, x: Any) -> tuple[list[nn.Module], list[Any]] | None:
    """The module's children and each one's input, when running them in order reproduces ``module(x)``."""
    children = list(module.children())
    if not children:
        return None
    inputs, h = [], x
    try:
        for child in children:
            inputs.append(h)
            h = child(h)
    except Exception:  # a child that does not take its predecessor's output: not run in order
        return None
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        return children, inputs  # runs its children in order by definition
    return (children, inputs) if _same(h, module(x)) else None


def _same(a: Any, b: Any) -> bool:
    """Whether two outputs agree to within float rounding (on the meta device, which holds no
    values: whether their shapes agree)."""
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape:
        return False
    if a.is_meta or b.is_meta:
        return True
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return bool(torch.allclose(a, b, rtol=RTOL, atol=ATOL * scale))


Unit = tuple[nn.Module, bool]
"""A module of the body, and whether it is a block."""


def _walk(module: nn.Module, x: Any, stages: set[int]) -> list[Unit]:
    """The units of a container run on ``x``: blocks and the layers around them, in order."""
    order = _in_order(module, x)
    if order is None:
        return [(module, True)]  # a stage whose children do not run in order: one block
    children, inputs = order
    if any(_is_container(child, stages) for child in children):
        units: list[Unit] = []
        for child, child_input in zip(children, inputs):
            units += _walk(child, child_input, stages) if _is_container(child, stages) else [(child, False)]
        return units
    return [(child, not is_layer(child)) for child in children]


class _Chain(nn.Sequential):
    """Modules run in order (a stem, or a block with the layers before it)."""


class _Flattening(nn.Module):
    """A torchvision model's head: its children after the body, run in order, flattened to
    (N, features) before the first whose first layer is a ``Linear`` or a ``Dropout`` (what the
    models' ``forward`` does with ``torch.flatten``)."""

    def __init__(self, children: Iterable[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(children)

    def forward(self, x: Tensor) -> Tensor:
        for part in self.parts:
            if x.dim() > 2 and isinstance(_first_layer(part), (nn.Linear, nn.Dropout)):
                x = torch.flatten(x, 1)
            x = part(x)
        return x


def _first_layer(module: nn.Module) -> nn.Module:
    children = list(module.children())
    return _first_layer(children[0]) if isinstance(module, nn.Sequential) and children else module


class _TimmHead(nn.Module):
    """A timm model's ``forward_head`` on a view of the model that holds only its head's children."""

    def __init__(self, model: nn.Module, body: Iterable[str]) -> None:
        super().__init__()
        view = copy.copy(model)
        view._modules = {name: child for name, child in model._modules.items() if name not in set(body)}  # type: ignore[assignment]
        self.view = view

    def forward(self, x: Tensor) -> Tensor:
        return self.view.forward_head(x)


def _called_children(model: nn.Module, run: Callable[[], Any]) -> list[str]:
    """The names of ``model``'s top-level children that ``run()`` calls, in the order of their first call."""
    called: list[str] = []
    hooks = [
        child.register_forward_pre_hook(lambda _m, _i, name=name: called.append(name) if name not in called else None)
        for name, child in model.named_children()
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return called


def _stage_ids(model: nn.Module) -> set[int]:
    """The modules timm's ``feature_info`` names (its stages), by id; none for other models."""
    info = getattr(model, "feature_info", None)
    names = [entry["module"] for entry in info] if isinstance(info, list) else []
    modules = dict(model.named_modules())
    return {id(modules[name]) for name in names if name in modules and not is_layer(modules[name])}


@contextmanager
def nonzero_parameters(model: nn.Module) -> Iterator[None]:
    """Every parameter of ``model`` that is all zeros (a zero-initialised classifier, layer-scale gate
    or residual branch) filled with seeded noise while a split is verified, then zeroed again. A term
    whose weights are zero adds nothing to the output, so a split that dropped it would pass the check
    unseen: torchvision's ViT zero-initialises its classifier, so its whole output would be 0. The
    noise comes from a generator of its own, so the global random state is untouched."""
    zeros = [p for p in model.parameters() if not isinstance(p, nn.parameter.UninitializedParameter)
             and p.is_floating_point() and not p.is_meta and p.numel() and not bool(p.detach().any())]
    generator = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            for p in zeros:
                p.copy_(ZERO_FILL * torch.randn(p.shape, generator=generator).to(p.device, p.dtype))
        yield
    finally:
        with torch.no_grad():
            for p in zeros:
                p.zero_()


def split_model(model: nn.Module, input_shape: tuple[int, int, int], name: str) -> BackboneParts:
    """``model`` (a timm or torchvision classifier) cut into stem, blocks and head and verified (an
    IC reads a token model's class token where it has prefix tokens, else the mean of its tokens;
    parameters that are all zeros take part, :func:`nonzero_parameters`); raises
    :class:`SplitError` naming ``name`` and what failed."""
    was_training = model.training
    try:
        with nonzero_parameters(model):
            return _split(model, input_shape, name)
    except SplitError:
        raise
    except Exception as error:  # a part run on what another part gives fails: no usable order of children
        raise SplitError(f"backbone={name!r}: its children, run in the order its forward calls them on a "
                         f"{'x'.join(map(str, input_shape))} input, fail ({type(error).__name__}: {error})") from error
    finally:
        model.train(was_training)


def _split(model: nn.Module, input_shape: tuple[int, int, int], name: str) -> BackboneParts:
    model.eval()
    x = _probe_input(model, input_shape)
    with torch.no_grad():
        expected = model(x)
        _check_logits(expected, name)
        timm_style = hasattr(model, "forward_features") and hasattr(model, "forward_head")
        runner: Callable[[], Any] = (lambda: model.forward_features(x)) if timm_style else (lambda: model(x))
        called = _called_children(model, runner)
        if not called:
            raise SplitError(f"backbone={name!r}: its forward calls none of its children; nothing to split")
        children = dict(model.named_children())
        stages = _stage_ids(model)
        try:
            body = called if timm_style else _torchvision_body(called, children, stages)
        except SplitError as error:
            raise SplitError(f"backbone={name!r}: {error}") from None
        units: list[Unit] = []
        h: Any = x
        has_containers = any(_is_container(children[n], stages) for n in body)
        for child_name in body:
            child = children[child_name]
            if _is_container(child, stages):
                units += _walk(child, h, stages)
            else:
                units.append((child, not has_containers and not is_layer(child)))
            h = child(h)
        if not any(is_block for _, is_block in units):
            raise SplitError(f"backbone={name!r}: no blocks found among its children {list(children)}")
        first = next(i for i, (_, is_block) in enumerate(units) if is_block)
        last = max(i for i, (_, is_block) in enumerate(units) if is_block)
        stem = _Chain(*(module for module, _ in units[:first]))
        blocks: list[nn.Module] = []
        pending: list[nn.Module] = []
        for module, is_block in units[first:last + 1]:
            pending.append(module)
            if is_block:
                blocks.append(pending[0] if len(pending) == 1 else _Chain(*pending))
                pending = []
        tail = [module for module, _ in units[last + 1:]]
        if timm_style:
            final: nn.Module = _TimmHead(model, body)
        else:
            final = _Flattening(children[n] for n in called[len(body):])
        head = _Chain(*tail, final) if tail else final
        outputs = [stem(x)]
        for block in blocks:
            outputs.append(block(outputs[-1]))
        got = head(outputs[-1])
    _check_reproduces(got, expected, len(blocks), name, "its forward does more than run its children in order")
    features, layout = _features_of(outputs[1:], name)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0) if features == "tokens" else 0
    return BackboneParts(stem, blocks, head, features, "token" if prefix else "avg", prefix, layout)


def _check_logits(output: Any, name: str) -> None:
    """A classifier's output: a tensor of logits (N, classes); else :class:`SplitError` saying what
    the forward returns and what to do (a model returning a dict or a tuple, as many libraries' do)."""
    if not isinstance(output, Tensor):
        raise SplitError(f"backbone={name!r}: its forward returns a {type(output).__name__}, not a tensor of logits "
                         "(N, classes): wrap the model in a module whose forward returns its logits")
    if output.dim() != 2:
        raise SplitError(f"backbone={name!r}: its forward returns a tensor of shape {tuple(output.shape)}, not logits "
                         "(N, classes): wrap the model in a module whose forward returns its logits")


def _probe_input(model: nn.Module, input_shape: tuple[int, int, int]) -> Tensor:
    """The two seeded random inputs a split is checked on, on ``model``'s device."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0), device="cpu").to(device)


def _check_reproduces(got: Tensor, expected: Tensor, blocks: int, name: str, why: str) -> None:
    if not _same(got, expected):
        difference = float((got - expected).abs().max()) if got.shape == expected.shape else f"shape {tuple(got.shape)}"
        raise SplitError(
            f"backbone={name!r}: stem, {blocks} blocks and head composed do not reproduce the model's output "
            f"(largest difference {difference}): {why}"
        )


def reference_output(model: nn.Module, input_shape: tuple[int, int, int]) -> Tensor:
    """``model``'s output in eval mode on the seeded input every split is checked on: what
    :func:`verify_split` compares the parts with, taken first where a split cuts the model in place."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(_probe_input(model, input_shape))
    finally:
        model.train(was_training)


def verify_split(
    model: nn.Module, parts: BackboneParts, input_shape: tuple[int, int, int], name: str, expected: Tensor | None = None
) -> BackboneParts:
    """``parts`` of ``model`` cut by hand (a family with its own split), checked as the generic split
    checks its own: in eval mode, stem, blocks and head composed reproduce ``model``'s output on a
    random input of ``input_shape`` (``expected``, its :func:`reference_output` taken before a split
    that cut the model in place), else :class:`SplitError` naming ``name``. Returns ``parts``."""
    if expected is None:
        expected = reference_output(model, input_shape)
    modules = [parts.stem, *parts.blocks, parts.final_head]
    modes = [(m, m.training) for module in modules for m in module.modules()]
    x = _probe_input(model, input_shape)
    try:
        for module in modules:
            module.eval()
        with torch.no_grad():
            h = parts.stem(x)
            for block in parts.blocks:
                h = block(h)
            got = parts.final_head(h)
    finally:
        for m, training in modes:
            m.training = training
    _check_reproduces(got, expected, len(parts.blocks), name, "its own split misses part of its forward")
    return parts


def _torchvision_body(called: list[str], children: dict[str, nn.Module], stages: set[int]) -> list[str]:
    """A torchvision model's body: the children its forward calls, up to the last that holds blocks."""
    containers = [name for name in called if _is_container(children[name], stages)]
    if not containers:
        raise SplitError(f"no blocks found among its children {list(children)}")
    return called[: called.index(containers[-1]) + 1]


def _features_of(outputs: list[Tensor], name: str) -> tuple[str, str]:
    """What the blocks output: ("tokens", "nchw") for (N, L, D); ("map", layout) for 4-D maps of a
    square input, the layout whose two spatial dimensions (2 and 3 in NCHW, 1 and 2 in NHWC) are
    equal in every block's output while the other pair is not in at least one."""
    ranks = {o.dim() for o in outputs}
    if ranks == {3}:
        return "tokens", "nchw"
    if ranks != {4}:
        raise SplitError(f"backbone={name!r}: its blocks output tensors of ranks {sorted(ranks)}; "
                         "supported are feature maps (4-D) and tokens (3-D)")
    shapes = [tuple(o.shape[1:]) for o in outputs]
    nchw = all(a[1] == a[2] for a in shapes) and not all(a[0] == a[1] for a in shapes)
    nhwc = all(a[0] == a[1] for a in shapes) and not all(a[1] == a[2] for a in shapes)
    if nchw == nhwc:
        raise SplitError(f"backbone={name!r}: cannot tell channels from space in its blocks' outputs {sorted(set(shapes))}; "
                         "use a non-square channel count or another image size")
    return "map", "nchw" if nchw else "nhwc"
