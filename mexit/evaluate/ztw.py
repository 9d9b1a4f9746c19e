"""Zero Time Waste ensembling of per-exit outputs (our implementation).

Follows the geometric ensembling of Wołczyk et al., "Zero Time Waste: Recycling Predictions in
Early Exit Neural Networks", NeurIPS 2021: exit i outputs

    p_i(y | x)  ∝  exp(b_i[y]) * prod_{j <= i} p_j(y | x) ** w_ij,    w_ij >= 0,

a weighted geometric mean of its own and all earlier exits' softmax outputs with a per-class bias.
The weights and biases of each exit are fitted by minimising the negative log-likelihood on a
fitting split, always named by the caller (never, by default, the split reported on), each exit
separately; this is our implementation, not the authors' code: a convex problem solved by L-BFGS-B
from the plain output (w_ii = 1, other weights and biases 0), and the plain output is kept wherever
fitting does not lower the fitting NLL.

Which exits are ensembled is ``final`` of :func:`ztw_ensemble` (``ZTW_FINALS``): ``"ensembled"``
(ours) ensembles every exit, the final one included; ``"plain"`` (the authors') ensembles the ICs
only and leaves the final exit its own output, as the authors' ``ZTWEnsembling`` builds no
ensemble on the backbone's head. Their fit differs from ours too: each ensemble is a trainable
layer, mean_j(exp(v_ij) * log p_j) + b_i (weights strictly positive, each starting near 1/k for an
exit with k members, i.e. near the plain average of the members rather than the exit's own
output), trained by gradient steps of the run's optimiser on the mean cross-entropy over all exits
on the training split, the backbone and ICs frozen; we fit the same family of outputs (but that a
weight may be exactly 0) as a convex problem on the split the caller names (validation in
:func:`~mexit.evaluate.budget_table`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import log_softmax

from mexit.evaluate.sweeps import check_labels, to_numpy

MAX_ITER = 500
# which exits are ensembled: every exit ("ensembled", ours) or the ICs only ("plain", the authors')
ZTW_FINALS: tuple[str, ...] = ("ensembled", "plain")


def ztw_ensemble(logits: Any, *, fit_logits: Any, fit_labels: Any, final: str = "ensembled") -> np.ndarray:
    """Ensembled per-exit log-probabilities [E, N, C] of ``logits`` [E, N, C].

    The weights are fitted on ``fit_logits`` [E, M, C] / ``fit_labels`` [M], a split other than the
    one reported on (e.g. validation); in-sample fitting means passing the same arrays explicitly.
    ``final``: ``"ensembled"`` (ours) ensembles every exit; ``"plain"`` (the authors') ensembles the
    ICs only, and the final exit's output is its own log-softmax. Deterministic.
    """
    if final not in ZTW_FINALS:
        raise ValueError(f"final must be one of {ZTW_FINALS}, got {final!r}")
    logits = _check_logits(logits, "logits")
    fit_logits = _check_logits(fit_logits, "fit_logits")
    if fit_logits.shape[0] != logits.shape[0] or fit_logits.shape[2] != logits.shape[2]:
        raise ValueError(
            f"fit_logits must have the exits and classes of logits {logits.shape}, got {fit_logits.shape}"
        )
    fit_labels = check_labels(fit_labels, fit_logits.shape[1], fit_logits.shape[2], name="fit_logits")
    fit_logp = log_softmax(fit_logits.astype(np.float64), axis=-1)
    logp = log_softmax(logits.astype(np.float64), axis=-1)
    out = np.empty(logits.shape, dtype=np.result_type(logits.dtype, np.float32))
    n_ensembled = logits.shape[0] if final == "ensembled" else logits.shape[0] - 1
    for i in range(n_ensembled):
        weights, bias = _fit_exit(fit_logp[: i + 1], fit_labels)
        out[i] = log_softmax(np.tensordot(weights, logp[: i + 1], axes=1) + bias, axis=-1)
    out[n_ensembled:] = logp[n_ensembled:]
    return out


def _check_logits(logits: Any, name: str) -> np.ndarray:
    logits = to_numpy(logits)
    if logits.ndim != 3 or 0 in logits.shape or not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(
            f"{name} must be floating point of shape [E exits, N samples, C classes], got {logits.shape}"
        )
    return logits


def _nll(params: np.ndarray, logp: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean NLL of the ensemble and its gradient; ``params`` = weights [J] then bias [C]."""
    n_members, n, n_classes = logp.shape
    weights, bias = params[:n_members], params[n_members:]
    log_q = log_softmax(np.tensordot(weights, logp, axes=1) + bias, axis=-1)
    rows = np.arange(n)
    grad_z = np.exp(log_q)
    grad_z[rows, labels] -= 1.0
    grad_z /= n
    grad = np.concatenate([np.tensordot(logp, grad_z, axes=([1, 2], [0, 1])), grad_z.sum(axis=0)])
    return float(-log_q[rows, labels].mean()), grad


def _fit_exit(logp: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights [J] and bias [C] of one exit's ensemble over its J members' log-probabilities."""
    n_members, _, n_classes = logp.shape
    start = np.zeros(n_members + n_classes)
    start[n_members - 1] = 1.0  # the plain output of this exit
    bounds = [(0.0, None)] * n_members + [(None, None)] * n_classes
    from scipy.optimize import minimize  # imported where ZTW is fitted: half a second a process otherwise

    result = minimize(
        _nll, start, args=(logp, labels), jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": MAX_ITER}
    )
    best = result.x if _nll(result.x, logp, labels)[0] <= _nll(start, logp, labels)[0] else start
    return best[:n_members], best[n_members:]
