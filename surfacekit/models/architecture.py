"""The architecture interface: one function per operation, dispatched on the spec's type.

``MLPSpec`` (:mod:`surfacekit.models.mlp`: batched matrix products) and ``ModuleSpec``
(:mod:`surfacekit.models.module`: any ``torch.nn.Module`` through ``vmap`` over ``functional_call``)
provide the same operations on stacked parameters [K, ...]; trainers, the population helpers, the
objective and the analysis tasks call these and work on either. :func:`build_spec` turns a ``model``
config into a spec: a config with ``_target_`` (``model=cnn``, ``resnet``, ``module``) names a module
class, any other is the MLP.
"""

from __future__ import annotations

from functools import singledispatch
from typing import Any, Mapping

import torch

from surfacekit.models import mlp, module
from surfacekit.models.batchnorm import update_running
from surfacekit.models.mlp import MLPSpec, param_name
from surfacekit.models.module import ModuleSpec

Spec = MLPSpec | ModuleSpec
# Keys of a ``_target_`` model config that are not constructor arguments.
RESERVED_KEYS = ("_target_", "loss", "args")

forward = singledispatch(mlp.forward)
forward.register(ModuleSpec, module.forward)
param_shapes = singledispatch(mlp.param_shapes)
param_shapes.register(ModuleSpec, module.param_shapes)
buffer_shapes = singledispatch(mlp.buffer_shapes)
buffer_shapes.register(ModuleSpec, module.buffer_shapes)
num_params = singledispatch(mlp.num_params)
num_params.register(ModuleSpec, module.num_params)
init_member = singledispatch(mlp.init_member)
init_member.register(ModuleSpec, module.init_member)
init_statistics = singledispatch(mlp.init_statistics)
init_statistics.register(ModuleSpec, module.init_statistics)


@singledispatch
def update_statistics(spec: MLPSpec, running: dict[str, torch.Tensor], moments: Mapping[str, torch.Tensor],
                      batch_size: int) -> None:
    """In place, torch's running-statistics update of every batch-norm layer from one batch's moments
    [K, width] (``forward(..., return_statistics=True)``); nothing without batch norm.

    Raises:
        ValueError: fewer than 2 values per channel (the unbiased variance is undefined).
    """
    for i in range(len(spec.widths) if spec.batch_norm else 0):
        mean, var = param_name(i, "bn_mean"), param_name(i, "bn_var")
        update_running(running[mean], running[var], moments[mean], moments[var], batch_size)


update_statistics.register(ModuleSpec, module.update_statistics)


@singledispatch
def activation_size(spec: MLPSpec) -> int:
    """Values of the activations of one example through one member (hidden and output layers); the unit
    of memory estimates."""
    return sum(spec.dims[1:])


@activation_size.register
def _(spec: ModuleSpec) -> int:
    return spec.activation_size


def build_spec(cfg: Mapping[str, Any], data) -> Spec:
    """The spec of a ``model`` config for ``data`` (a :class:`surfacekit.data.Dataset`).

    Without ``_target_``: the MLP (``mlp.spec_from_config``) on flat inputs. With ``_target_``: the
    class at that import path, built with the config's other keys (except ``loss`` and ``args``)
    and the entries of ``args`` as keyword arguments, plus ``in_shape`` (one example's input shape,
    ``data.input_shape``) and ``num_outputs`` when its constructor takes them and they are not given.

    Raises:
        ValueError: the class cannot be imported, built or run on the data's inputs, or its outputs do
            not match the data's number of outputs.
    """
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if "_target_" not in cfg:
        return mlp.spec_from_config(cfg, data.in_dim, data.num_outputs)
    kwargs = {k: v for k, v in cfg.items() if k not in RESERVED_KEYS}
    kwargs.update(cfg.get("args") or {})
    return module.module_spec(cfg["_target_"], kwargs, data.input_shape, data.num_outputs)
