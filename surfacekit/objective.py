"""A job's objective: the function of the parameters that training minimized, as ``loss_fn(theta)``.

Analyse the objective that was trained. For a member with flat parameters theta [P]:

    objective="trained":  F(theta) = L(theta) + sum_p (c_p / 2) |theta_p|^2
    objective="data":     F(theta) = L(theta)

L is the mean data loss over the full training set; the L2 coefficients c_p per parameter tensor
are those the training method applied (``l2_coefficients``):

* ``backprop``: the optimizer's coupled weight decay (``surfacekit.optim``): c = optimizer.weight_decay
  on *every* parameter (weights, biases, batch-norm scales and shifts), for sgd, momentum,
  nesterov, adagrad, rmsprop, adadelta, adam and adamax (torch adds wd * theta to the gradient);
  c = 0 for rprop (torch's Rprop has no weight decay);
* ``penalty``: trainer.weight_decay on the weight matrices only, not biases (its objective E);
* ``dtp`` (and tp): none; this trainer ignores the optimizer group;
* ``prong``: none (weight decay is refused); ``kfac``: optimizer.weight_decay on every parameter;
  ``hessian_free``, ``scg``: trainer.weight_decay on every parameter.

Batch norm makes L depend on how its statistics are taken (``bn_mode``):

* ``"batch"``: the statistics of the full training set, as a differentiable function of theta
  (``population.dataset_statistics``; exact under chunking). A deterministic function: the default
  for curvature work, and at the end of training equal in value to evaluation mode, whose stored
  statistics are the full-set statistics of the final parameters.
* ``"eval"``: fixed statistics (the stored ``layers.{i}.bn_mean`` / ``bn_var``); L is then the loss
  of the network as it is evaluated on test data. The Hessians of the two modes differ.

Training's gradient norm (the recorded ``grad_norm`` curve and members column) and the
``trainer.grad_tol`` stopping rule use the trained objective in batch mode unless the trainer is
told otherwise (its ``objective`` and ``bn_mode`` arguments).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

import torch

from surfacekit.models import Spec, buffer_shapes
from surfacekit.population import full_loss, unflatten

OBJECTIVES = ("trained", "data")
BN_MODES = ("batch", "eval")
L2 = Mapping[str, float]


def check_choices(objective: str, bn_mode: str) -> None:
    """Raises ValueError unless ``objective`` is in OBJECTIVES and ``bn_mode`` in BN_MODES."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} is invalid: expected one of {list(OBJECTIVES)}")
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode={bn_mode!r} is invalid: expected one of {list(BN_MODES)}")


def l2_coefficients(spec: Spec, method: str, optimizer_cfg: Mapping[str, Any], trainer_cfg: Mapping[str, Any],
                    objective: str = "trained") -> dict[str, float]:
    """The non-zero L2 coefficients c_p of the objective, by parameter name ({} for ``objective="data"``).

    Each training method ``surfacekit.train.<method>`` states what it applied in its own
    ``l2_coefficients(spec, optimizer_cfg, trainer_cfg)`` (see the module docstring).

    Raises:
        ValueError: an invalid objective, or a method without such a statement.
    """
    check_choices(objective, "batch")
    if objective == "data":
        return {}
    try:
        module = importlib.import_module(f"surfacekit.train.{method}")
        stated = module.l2_coefficients
    except (ModuleNotFoundError, AttributeError):
        raise ValueError(f"trainer.method={method!r} does not state its regularizer; use objective=data") from None
    return {name: float(c) for name, c in stated(spec, optimizer_cfg, trainer_cfg).items() if float(c) != 0.0}


def l2_penalty(params: Mapping[str, torch.Tensor], l2: L2) -> torch.Tensor | float:
    """sum_p (c_p / 2) |theta_p|^2 per member [K] (0.0 when ``l2`` is empty)."""
    total = 0.0
    for name, c in l2.items():
        p = params[name]
        total = total + 0.5 * c * p.reshape(p.shape[0], -1).pow(2).sum(dim=1)
    return total


def objective_values(spec: Spec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, loss: str,
                     *, l2: L2 | None = None, statistics: Mapping[str, torch.Tensor] | None = None,
                     chunk_size: int | None = None) -> torch.Tensor:
    """F per member [K] for stacked ``params``: the full-data loss (``population.full_loss``, batch
    mode when ``statistics`` is None, else those fixed statistics) plus ``l2_penalty``.
    Differentiable to any order. Cost: one chunked forward pass over (x, y)."""
    return full_loss(spec, params, x, y, loss, chunk_size, statistics) + l2_penalty(params, l2 or {})


def gradient_norms(spec: Spec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, loss: str,
                   *, l2: L2 | None = None, statistics: Mapping[str, torch.Tensor] | None = None,
                   chunk_size: int | None = None) -> torch.Tensor:
    """Euclidean norm of each member's gradient of F (``objective_values``) [K]. Cost: one gradient."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        total = objective_values(spec, leaves, x, y, loss, l2=l2, statistics=statistics, chunk_size=chunk_size).sum()
        grads = torch.autograd.grad(total, list(leaves.values()))
    return torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in grads))


def mode_statistics(spec: Spec, bn_mode: str, statistics: Mapping[str, torch.Tensor] | None
                    ) -> dict[str, torch.Tensor] | None:
    """The statistics to evaluate with in ``bn_mode``: None for batch mode (or without batch norm), the
    ``layers.{i}.bn_mean`` / ``bn_var`` entries of ``statistics`` for evaluation mode.

    Raises:
        ValueError: an invalid bn_mode, or evaluation mode without the stored statistics.
    """
    check_choices("trained", bn_mode)
    if not spec.batch_norm or bn_mode == "batch":
        return None
    missing = [n for n in buffer_shapes(spec) if statistics is None or n not in statistics]
    if missing:
        raise ValueError(f"bn_mode=eval needs the stored batch-norm statistics; missing {missing}")
    return {n: statistics[n] for n in buffer_shapes(spec)}


def objective_fn(
    spec: Spec,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    *,
    optimizer_cfg: Mapping[str, Any] | None = None,
    trainer_cfg: Mapping[str, Any] | None = None,
    objective: str = "trained",
    bn_mode: str = "batch",
    statistics: Mapping[str, torch.Tensor] | None = None,
    chunk_size: int | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A job's objective for one network: ``loss_fn(theta) -> F(theta)``, a 0-d tensor, theta a flat [P]
    vector in the canonical order of ``models.param_shapes`` (``population.flatten(params)[k]``).

    Args:
        spec, x [N, in], y [N] or [N, C], loss: the network and its training data (pass the data in
            the dtype of theta, float64 for curvature work).
        optimizer_cfg, trainer_cfg: the job's ``optimizer`` and ``trainer`` configs (``trainer_cfg["method"]``
            names the training method); needed for ``objective="trained"`` only.
        objective: ``"trained"`` (L plus the L2 the method applied) or ``"data"`` (L alone).
        bn_mode: ``"batch"`` or ``"eval"`` (ignored without batch norm); see the module docstring.
        statistics: for ``bn_mode="eval"``, this member's ``layers.{i}.bn_mean`` / ``bn_var``, each
            [width] or [1, width] (e.g. ``{n: v[k] for n, v in result.buffers.items()}``).
        chunk_size: examples per chunk; the value of F does not depend on it.

    Cost per call: one chunked forward pass (batch mode with batch norm and c > 1 chunks: plus
    D(D+1)/2 layer passes for the statistics); gradients and Hessian-vector products through autograd.

    Raises:
        ValueError: an invalid objective or bn_mode; ``objective="trained"`` without the configs or for
            a method that does not state its regularizer; ``bn_mode="eval"`` without statistics.
    """
    check_choices(objective, bn_mode)
    if objective == "trained":
        if optimizer_cfg is None or trainer_cfg is None:
            raise ValueError("objective=trained needs the job's optimizer and trainer configs (or use objective=data)")
        l2 = l2_coefficients(spec, trainer_cfg["method"], optimizer_cfg, trainer_cfg)
    else:
        l2 = {}
    stats = mode_statistics(spec, bn_mode, statistics)
    if stats is not None:
        stats = {n: v.reshape(1, -1) for n, v in stats.items()}

    def loss_fn(theta: torch.Tensor) -> torch.Tensor:
        return objective_values(spec, unflatten(theta, spec), x, y, loss, l2=l2, statistics=stats,
                                chunk_size=chunk_size)[0]

    return loss_fn
