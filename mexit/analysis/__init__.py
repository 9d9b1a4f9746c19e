"""The paper's four analyses of trained multi-exit models, with definitions of our own (see the book).

- :func:`gradient_dominance`, :func:`training_probe`: which exit's loss drives each block's gradient.
- :func:`linear_path`, :func:`bezier_path`, :func:`barrier`: mode connectivity between two runs' weights;
  :func:`loss_plane`, :func:`plane_anchors`: the loss surface of the plane through three runs.
- :func:`numerical_rank`, :func:`block_ranks`: the numerical and effective rank of each block's representation.
- :func:`mutual_information`, :func:`input_information`, :func:`block_mutual_information`: what each
  block's representation tells about the labels and the inputs.

Each takes any :class:`~mexit.models.MultiExit`; block outputs are flattened per sample
(:mod:`mexit.analysis.features`).
"""

from __future__ import annotations

from mexit.dominance import gradient_dominance, training_probe
from mexit.analysis.connectivity import (
    barrier,
    bezier_path,
    evaluate_exits,
    linear_path,
    loss_plane,
    plane_anchors,
    recompute_batchnorm,
)
from mexit.analysis.features import BlockFeatures, Representations, block_representations
from mexit.analysis.mutual_info import block_mutual_information, input_information, mutual_information
from mexit.analysis.rank import RankResult, block_ranks, numerical_rank

__all__ = [
    "BlockFeatures",
    "RankResult",
    "Representations",
    "barrier",
    "bezier_path",
    "block_mutual_information",
    "block_ranks",
    "block_representations",
    "evaluate_exits",
    "gradient_dominance",
    "input_information",
    "linear_path",
    "loss_plane",
    "mutual_information",
    "numerical_rank",
    "plane_anchors",
    "recompute_batchnorm",
    "training_probe",
]
