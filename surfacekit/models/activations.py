"""Element-wise activations and their derivatives, written as functions of the activation's output.

``maxout`` (the maximum over groups of pre-activations, :mod:`surfacekit.models.mlp`) is a model
activation too but not element-wise: it is named in ``ACTIVATION_NAMES``, not in ``ACTIVATIONS``.
"""

from __future__ import annotations

import torch

ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda h: h,
}
MAXOUT = "maxout"
ACTIVATION_NAMES = (*ACTIVATIONS, MAXOUT)
# In-place versions for forward passes over fresh pre-activations (nothing else holds them).
ACTIVATIONS_INPLACE = {
    "relu": torch.relu_,
    "tanh": torch.tanh_,
    "sigmoid": torch.sigmoid_,
    "linear": lambda h: h,
}


def activation_derivative(activation: str, output: torch.Tensor) -> torch.Tensor:
    """phi'(z) from the activation's output y = phi(z), element-wise, same shape as ``output``.

    tanh: 1 - y^2; sigmoid: y (1 - y); relu: 1 where y > 0, else 0 (the subgradient 0 at z = 0, as
    autograd uses); linear: 1. Written in terms of y so that callers need not keep z.

    Raises:
        KeyError: an unknown activation name, or maxout (not element-wise).
    """
    if activation == "tanh":
        return 1.0 - output * output
    if activation == "sigmoid":
        return output * (1.0 - output)
    if activation == "relu":
        return (output > 0).to(output.dtype)
    if activation == "linear":
        return torch.ones_like(output)
    if activation == MAXOUT:
        raise KeyError("maxout is not element-wise: its derivative selects the winning piece of each unit")
    raise KeyError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
