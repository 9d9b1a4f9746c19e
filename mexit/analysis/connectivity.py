"""Mode connectivity: the loss and accuracy of every exit along a path between two runs' weights.

Definitions (ours, following Garipov et al., NeurIPS 2018, and Frankle et al., ICML 2020):

- The linear path is ``theta(alpha) = (1 - alpha) theta_a + alpha theta_b`` for ``alpha`` in [0, 1],
  over every floating-point parameter and buffer (integer buffers are model ``a``'s).
- At every point, BatchNorm running statistics are recomputed before evaluation: reset, then
  accumulated as an exact average (``momentum=None``) over the same ``bn_batches`` seeded batches of
  training data through the evaluation transform (the data's fixed input noise included), with only
  the BatchNorm layers in train mode. The end points
  get the same treatment, so they are not the stored models' exact statistics.
- The barrier of exit ``i`` is ``max_alpha [L_i(alpha) - ((1 - alpha) L_i(0) + alpha L_i(1))]``: how
  far the loss rises above the straight line between the end losses (0 for a convex path). The same
  on the error rate (100 - accuracy, in percentage points) is the error barrier. Frankle et al.'s
  instability measures the highest error from the mean of the end errors instead; the two differ
  by at most half the end errors' gap.
- The loss plane through three models (:func:`loss_plane`) is the plane of Garipov et al.'s Figure 1:
  spanned by their parameters, with BatchNorm statistics recomputed at every point of the grid.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from mexit.data.loading import batch_of, sample_indices
from mexit.evaluate import exit_accuracy
from mexit.evaluate.inference import collect_logits
from mexit.progress import StepProgress
from mexit.regimes import multi_exit_loss


def linear_path(
    model_a: nn.Module,
    model_b: nn.Module,
    train_set: Dataset,
    eval_set: Dataset,
    points: int = 21,
    bn_batches: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    progress_label: str | None = None,
) -> pd.DataFrame:
    """Every exit's loss (mean cross-entropy, nats) and accuracy (%) on ``eval_set`` along the linear path.

    ``train_set`` gives the BatchNorm batches (training samples with eval transforms). Both models
    must have the same architecture; neither is changed. Columns: alpha, exit, loss, accuracy.
    ``progress_label``: a label under which the points evaluated are reported (None: quiet).
    """
    _check_path_arguments(points, bn_batches, batch_size)
    state_a, state_b = _end_states(model_a, model_b)
    return _evaluate_points(
        model_a,
        [{"alpha": float(alpha)} for alpha in np.linspace(0.0, 1.0, points)],
        lambda at: _interpolate(state_a, state_b, at["alpha"]),
        train_set, eval_set, bn_batches, batch_size, seed, progress_label,
    )


CHECK_TS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
"""Where on a Bezier curve its fit measures the training loss to keep the best control point."""


def bezier_path(
    model_a: nn.Module,
    model_b: nn.Module,
    train_set: Dataset,
    eval_set: Dataset,
    steps: int = 200,
    lr: float = 1e-3,
    points: int = 21,
    bn_batches: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    progress_label: str | None = None,
) -> pd.DataFrame:
    """Like :func:`linear_path`, along a quadratic Bezier curve trained to connect the two models.

    The curve is ``(1-t)^2 theta_a + 2t(1-t) theta_c + t^2 theta_b`` (Garipov et al., 2018); its
    control point ``theta_c`` starts at the midpoint (where the curve is the linear path) and takes
    ``steps`` Adam steps on the uniform mean of the exits' cross-entropies, each at a random ``t``
    and on a random batch of ``train_set``, with BatchNorm layers in train mode (batch statistics)
    and everything else in eval mode. ``alpha`` in the table is ``t``.

    The fit minimises the curve's expected training loss, so the curve it returns is the one of
    lowest such loss among those it passed through, the starting line included: every
    ``steps // 10`` steps (and at the end) the loss is measured at ``t`` = 0.1, 0.3, ..., 0.9 on one
    fixed batch of ``train_set``, and the best control point is kept. Adam's first steps move every
    weight by about ``lr`` whatever its scale, so a rate too large for the models makes the curve
    worse than the line; kept this way, a fit that never improves returns the line itself.
    """
    _check_path_arguments(points, bn_batches, batch_size)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    state_a, state_b = _end_states(model_a, model_b)
    control = {name: nn.Parameter((state_a[name] + state_b[name]) / 2) for name, _ in model_a.named_parameters()}

    def on_curve(t: float) -> dict[str, Tensor]:
        return {n: (1 - t) ** 2 * state_a[n] + 2 * t * (1 - t) * c + t**2 * state_b[n] for n, c in control.items()}

    work = copy.deepcopy(model_a)
    _batchnorm_only_training(work)
    device = next(model_a.parameters()).device
    exits = range(work.num_exits)
    uniform = torch.full((work.num_exits,), 1.0 / work.num_exits)
    optimizer = torch.optim.Adam(control.values(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    check_images, check_labels = batch_of(train_set, sample_indices(len(train_set), batch_size, seed + 1).tolist())  # type: ignore[arg-type]

    @torch.no_grad()
    def curve_loss() -> float:
        return sum(
            float(multi_exit_loss(torch.func.functional_call(work, on_curve(t), (check_images.to(device),)), check_labels.to(device), exits, uniform)[0])
            for t in CHECK_TS
        ) / len(CHECK_TS)

    best_loss, best = curve_loss(), {n: c.detach().clone() for n, c in control.items()}
    every = max(1, steps // 10)
    for step in range(1, steps + 1):
        batch = torch.randint(len(train_set), (batch_size,), generator=generator)  # type: ignore[arg-type]
        images, labels = batch_of(train_set, batch.tolist())
        t = float(torch.rand((), generator=generator))
        logits = torch.func.functional_call(work, on_curve(t), (images.to(device),))
        loss, _ = multi_exit_loss(logits, labels.to(device), exits, uniform)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            now = curve_loss()
            if now < best_loss:
                best_loss, best = now, {n: c.detach().clone() for n, c in control.items()}
    with torch.no_grad():
        for name, value in best.items():
            control[name].copy_(value)
    return _evaluate_points(
        model_a,
        [{"alpha": float(t)} for t in np.linspace(0.0, 1.0, points)],
        lambda at: {**_interpolate(state_a, state_b, at["alpha"]), **on_curve(at["alpha"])},
        train_set, eval_set, bn_batches, batch_size, seed, progress_label,
    )


def plane_anchors(models: Sequence[nn.Module]) -> pd.DataFrame:
    """Where three models lie in the plane through their weights (see :func:`loss_plane`).

    Columns: model (0, 1, 2, in the given order), u, v. Model 0 is the origin, model 1 lies on the
    u axis; units are the parameter space's Euclidean distance.
    """
    coordinates = _plane(models)[2]
    return pd.DataFrame([{"model": i, "u": u, "v": v} for i, (u, v) in enumerate(coordinates)])


def loss_plane(
    models: Sequence[nn.Module],
    train_set: Dataset,
    eval_set: Dataset,
    points: int = 21,
    margin: float = 0.25,
    bn_batches: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    progress_label: str | None = None,
) -> pd.DataFrame:
    """Every exit's loss and accuracy on a ``points x points`` grid of the plane through three models.

    The plane (Garipov et al., 2018, Figure 1) is spanned by the parameters ``theta_0``,
    ``theta_1``, ``theta_2`` of the three models (same architecture): ``theta(u, v) = theta_0 + u
    e_1 + v e_2`` with ``e_1`` the unit vector towards ``theta_1`` and ``e_2`` the unit vector of
    ``theta_2 - theta_0`` orthogonal to ``e_1`` (:func:`plane_anchors` gives the three models'
    ``(u, v)``). The grid spans the three models' bounding box widened by ``margin`` times its
    larger side on each side. Buffers are model 0's; at every point BatchNorm statistics are
    recomputed as on a path. Columns: u, v, exit, loss, accuracy.
    """
    _check_path_arguments(points, bn_batches, batch_size)
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    origin, (e1, e2), coordinates = _plane(models)
    us, vs = [c[0] for c in coordinates], [c[1] for c in coordinates]
    side = max(max(us) - min(us), max(vs) - min(vs))
    grid_u = np.linspace(min(us) - margin * side, max(us) + margin * side, points)
    grid_v = np.linspace(min(vs) - margin * side, max(vs) + margin * side, points)
    buffers = {key: value.detach() for key, value in models[0].state_dict().items()}

    def state_at(at: dict[str, float]) -> dict[str, Tensor]:
        return {**buffers, **{n: origin[n] + at["u"] * e1[n] + at["v"] * e2[n] for n in origin}}

    return _evaluate_points(
        models[0],
        [{"u": float(u), "v": float(v)} for v in grid_v for u in grid_u],
        state_at, train_set, eval_set, bn_batches, batch_size, seed, progress_label,
    )


def _plane(
    models: Sequence[nn.Module],
) -> tuple[dict[str, Tensor], tuple[dict[str, Tensor], dict[str, Tensor]], list[tuple[float, float]]]:
    """Model 0's parameters, the plane's orthonormal basis (per parameter name) and the three
    models' coordinates in it."""
    if len(models) != 3:
        raise ValueError(f"models must be three models, got {len(models)}")
    device = next(models[0].parameters()).device
    states = []
    for model in models:
        _end_states(models[0], model)  # same architecture
        states.append({n: p.detach().to(device).double() for n, p in model.named_parameters()})
    names = list(states[0])

    def flat(state: dict[str, Tensor]) -> Tensor:
        return torch.cat([state[n].flatten() for n in names])

    d1, d2 = flat(states[1]) - flat(states[0]), flat(states[2]) - flat(states[0])
    along = float(d1.norm())
    if along == 0:
        raise ValueError("models 0 and 1 have the same weights: they span no plane")
    e1 = d1 / along
    u2 = float(d2 @ e1)
    rest = d2 - u2 * e1
    across = float(rest.norm())
    if across <= 1e-6 * along:  # float32 weights: collinear up to rounding
        raise ValueError("the three models lie on one line: they span no plane")
    e2 = rest / across
    sizes = [states[0][n].numel() for n in names]

    def unflatten(vector: Tensor) -> dict[str, Tensor]:
        parts = vector.split(sizes)
        return {n: part.view_as(states[0][n]).to(states[0][n].device, torch.float32) for n, part in zip(names, parts)}

    origin = {n: t.float() for n, t in states[0].items()}
    return origin, (unflatten(e1), unflatten(e2)), [(0.0, 0.0), (along, 0.0), (u2, across)]


@torch.no_grad()
def _evaluate_points(
    model: nn.Module,
    points: list[dict[str, float]],
    state_at: Callable[[dict[str, float]], dict[str, Tensor]],
    train_set: Dataset,
    eval_set: Dataset,
    bn_batches: int,
    batch_size: int,
    seed: int,
    progress_label: str | None,
) -> pd.DataFrame:
    """:func:`evaluate_exits` at every point of weight space (``state_at(point)``, a full state
    dict), after recomputing BatchNorm statistics there; the point's coordinates become columns."""
    work = copy.deepcopy(model)
    bn_indices = sample_indices(len(train_set), bn_batches * batch_size, seed)  # type: ignore[arg-type]
    bn_loader = DataLoader(Subset(train_set, bn_indices.tolist()), batch_size=batch_size)
    steps = StepProgress(progress_label or "", len(points), enabled=progress_label is not None)
    frames = []
    for point in points:
        work.load_state_dict(state_at(point))
        recompute_batchnorm(work, bn_loader)
        frames.append(evaluate_exits(work, eval_set, batch_size).assign(**point))
        steps.advance()
    steps.close()
    return pd.concat(frames, ignore_index=True)[[*points[0], "exit", "loss", "accuracy"]]


def barrier(path: pd.DataFrame) -> pd.DataFrame:
    """Loss and error barrier of every exit of a path table (columns alpha, exit, loss, accuracy).

    Columns: exit, loss_barrier, loss_barrier_alpha (where the loss rises most above the line),
    error_barrier (percentage points), loss_start, loss_end.
    """
    missing = {"alpha", "exit", "loss", "accuracy"} - set(path.columns)
    if missing:
        raise ValueError(f"path lacks columns {sorted(missing)}; expected alpha, exit, loss, accuracy")
    rows = []
    for exit_index, curve in path.sort_values("alpha").groupby("exit"):
        alpha = curve["alpha"].to_numpy()
        if not (np.isclose(alpha[0], 0.0) and np.isclose(alpha[-1], 1.0)):
            raise ValueError(f"the path of exit {exit_index} must run from alpha=0 to alpha=1")
        loss = curve["loss"].to_numpy()
        error = 100.0 - curve["accuracy"].to_numpy()
        loss_excess = loss - ((1 - alpha) * loss[0] + alpha * loss[-1])
        error_excess = error - ((1 - alpha) * error[0] + alpha * error[-1])
        top = int(np.argmax(loss_excess))
        rows.append(
            {
                "exit": int(exit_index),
                "loss_barrier": float(loss_excess[top]),
                "loss_barrier_alpha": float(alpha[top]),
                "error_barrier": float(error_excess.max()),
                "loss_start": float(loss[0]),
                "loss_end": float(loss[-1]),
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, loader: DataLoader) -> None:
    """Reset every BatchNorm layer's running statistics and re-estimate them as an exact average over ``loader``.

    Only BatchNorm layers run in train mode; the model is left in eval mode. A model without
    BatchNorm is left untouched (apart from eval mode).
    """
    norms = _batchnorm_only_training(model)
    if norms:
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        device = next(model.parameters()).device
        for images, _ in loader:
            model(images.to(device))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    model.eval()


def _batchnorm_only_training(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Put ``model`` in eval mode except its BatchNorm layers, which go to train mode; returns those layers."""
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.train()
    return norms


def evaluate_exits(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> pd.DataFrame:
    """Mean cross-entropy (nats) and accuracy (%) of every exit on ``dataset``, in eval mode.

    Columns: exit, loss, accuracy. The model's mode is left as it was.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("dataset is empty")
    logits, labels = collect_logits(model, dataset, batch_size, next(model.parameters()).device)
    return pd.DataFrame(
        {
            "exit": range(len(logits)),
            "loss": [F.cross_entropy(out, labels).item() for out in logits],
            "accuracy": exit_accuracy(logits, labels).tolist(),
        }
    )


def _interpolate(state_a: dict[str, Tensor], state_b: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    return {
        key: (1 - alpha) * a + alpha * state_b[key] if a.is_floating_point() else a
        for key, a in state_a.items()
    }


def _check_path_arguments(points: int, bn_batches: int, batch_size: int) -> None:
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    if bn_batches < 1:
        raise ValueError(f"bn_batches must be >= 1, got {bn_batches}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _end_states(model_a: nn.Module, model_b: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Both models' state dicts, detached, on model ``a``'s device, after checking they match."""
    state_a = {key: value.detach() for key, value in model_a.state_dict().items()}
    state_b = model_b.state_dict()
    _check_same_architecture(state_a, state_b)
    device = next(model_a.parameters()).device
    return state_a, {key: value.detach().to(device) for key, value in state_b.items()}


def _check_same_architecture(state_a: dict[str, Tensor], state_b: dict[str, Tensor]) -> None:
    if state_a.keys() != state_b.keys():
        differ = sorted(set(state_a) ^ set(state_b))[:5]
        raise ValueError(f"model_b's architecture differs from model_a's: parameters {differ} are not in both")
    shapes = [key for key in state_a if state_a[key].shape != state_b[key].shape]
    if shapes:
        raise ValueError(f"model_b's architecture differs from model_a's: shapes of {shapes[:5]} differ")
