"""Architectures as functions of stacked parameters [K, ...], and the losses on their outputs.

``architecture`` (the interface every trainer and tool calls, dispatched on the spec: ``forward``,
``param_shapes``, ``init_member``, ... and ``build_spec`` from a config), ``mlp`` (fully connected
networks with optional batch norm and residual connections, batched matrix products), ``module``
(any ``torch.nn.Module``: vmap over functional_call), ``cnn`` and ``resnet`` (the built-in modules),
``losses``, ``activations``, ``batchnorm`` (batch moments, pooled moments, running statistics),
``fused`` (the hand-written forward and backward pass of plain MLP populations: the trainer's fused step).
"""

from surfacekit.models.activations import ACTIVATION_NAMES, ACTIVATIONS, MAXOUT, activation_derivative
from surfacekit.models.architecture import (
    Spec, activation_size, buffer_shapes, build_spec, forward, init_member, init_statistics, num_params, param_shapes,
    update_statistics,
)
from surfacekit.models.batchnorm import BN_EPS, BN_MOMENTUM, batch_moments, normalize, pooled_moments, update_running
from surfacekit.models.cnn import CNN
from surfacekit.models.losses import LOSSES, example_losses, member_errors, member_losses
from surfacekit.models.mlp import (
    INITS, MLPSpec, Statistics, affine, init_weight, layer, layer_param_names, param_name, preactivation_width,
    spec_from_config,
)
from surfacekit.models.module import ModuleSpec
from surfacekit.models.resnet import ResNet

__all__ = [
    "ACTIVATION_NAMES", "ACTIVATIONS", "BN_EPS", "BN_MOMENTUM", "CNN", "INITS", "LOSSES", "MAXOUT", "MLPSpec",
    "ModuleSpec", "ResNet", "Spec", "Statistics", "activation_derivative", "activation_size", "affine",
    "batch_moments", "buffer_shapes", "build_spec", "example_losses", "forward", "init_member", "init_statistics",
    "init_weight", "layer", "layer_param_names", "member_errors", "member_losses", "normalize", "num_params",
    "param_name", "param_shapes", "pooled_moments", "preactivation_width", "spec_from_config", "update_running",
    "update_statistics",
]
