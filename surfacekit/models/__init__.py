"""Architectures as functions of stacked parameters [K, ...], and the losses on their outputs.

``mlp`` (fully connected networks with optional batch norm and residual connections), ``losses``
(per-example and per-member losses and errors), ``activations`` (activations and their
derivatives), ``batchnorm`` (batch moments, pooled moments, running statistics).
"""

from surfacekit.models.activations import ACTIVATION_NAMES, ACTIVATIONS, MAXOUT, activation_derivative
from surfacekit.models.batchnorm import BN_EPS, BN_MOMENTUM, batch_moments, normalize, pooled_moments, update_running
from surfacekit.models.losses import LOSSES, example_losses, member_errors, member_losses
from surfacekit.models.mlp import (
    INITS, MLPSpec, Statistics, affine, buffer_shapes, forward, init_member, init_statistics, init_weight, layer,
    layer_param_names, num_params, param_name, param_shapes, preactivation_width, spec_from_config,
)

__all__ = [
    "ACTIVATION_NAMES", "ACTIVATIONS", "BN_EPS", "MAXOUT", "BN_MOMENTUM", "INITS", "LOSSES", "MLPSpec", "Statistics", "activation_derivative",
    "affine", "batch_moments", "buffer_shapes", "example_losses", "forward", "init_member", "init_statistics",
    "init_weight", "layer", "layer_param_names", "member_errors", "member_losses", "normalize", "num_params",
    "param_name", "param_shapes", "pooled_moments", "preactivation_width", "spec_from_config", "update_running",
]
