"""Closed-form linear theory of the paper (§3): Bayes estimator, Gaussian toy, bilevel model.

The experiment built on it (Fig. 2 and the task-count sweep) is
:mod:`reproductions.linear.experiment`.
"""

from __future__ import annotations

from reproductions.linear.bayes import (
    AffineMap,
    bayes_estimate,
    bayes_estimator,
    bayes_mask_block,
    range_kernel_projectors,
    subspace_bases,
)
from reproductions.linear.bilevel import (
    LinearTasks,
    affine_inner_map,
    affine_outer_hessian,
    affine_outer_loss,
    gradient_support,
    inner_fixed_point,
    inner_objective,
    inner_solve,
    inner_trajectory,
    linear_model,
    mask_inner_solution,
    meta_loss,
    supervised_loss,
    unsupervised_loss,
)
from reproductions.linear.gaussian import (
    Placement,
    area_a_placements,
    corner_placement,
    grid_placements,
    hidden_observed_indices,
    mask_operator,
    sample_gaussian,
    sample_placements,
    square_mask,
    squared_exponential_covariance,
    squares_overlap,
    subsample_pool,
)

__all__ = [
    "AffineMap",
    "LinearTasks",
    "Placement",
    "affine_inner_map",
    "affine_outer_hessian",
    "affine_outer_loss",
    "area_a_placements",
    "bayes_estimate",
    "bayes_estimator",
    "bayes_mask_block",
    "corner_placement",
    "gradient_support",
    "grid_placements",
    "hidden_observed_indices",
    "inner_fixed_point",
    "inner_objective",
    "inner_solve",
    "inner_trajectory",
    "linear_model",
    "mask_inner_solution",
    "mask_operator",
    "meta_loss",
    "range_kernel_projectors",
    "sample_gaussian",
    "sample_placements",
    "square_mask",
    "squared_exponential_covariance",
    "squares_overlap",
    "subsample_pool",
    "subspace_bases",
    "supervised_loss",
    "unsupervised_loss",
]
