"""Fully connected networks as functions of stacked parameters: spec, names, initialization, layers.

Parameters are a ``dict[str, Tensor]`` whose entries carry a leading population axis K:
``layers.{i}.weight`` [K, out, in], ``layers.{i}.bias`` [K, out] and, with batch norm,
``layers.{i}.bn_scale`` / ``layers.{i}.bn_shift`` [K, out] for every hidden layer i. Batch-norm
statistics (not parameters) are ``layers.{i}.bn_mean`` / ``layers.{i}.bn_var`` [K, out]; a dict of
them is what ``statistics=`` takes. All names are built by :func:`param_name`.

Layer i maps h [K, B, in] (or [B, in], shared by all members) to
z = h W^T + b, then on hidden layers batch norm (optional), the activation, and the residual h + .
(optional, where widths agree); the last layer is affine.

Maxout (``activation="maxout"``, Goodfellow et al. 2013): a hidden unit is the maximum of
``maxout_pieces`` = k affine pieces, so hidden layer i has k * width pre-activations: weight
[K, k * width, in], bias (and batch-norm scale, shift and statistics) [K, k * width], the pieces of
unit j in rows j k .. j k + k - 1 (:func:`preactivation_width`). Everything else is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from surfacekit.models.activations import ACTIVATION_NAMES, ACTIVATIONS_INPLACE, MAXOUT
from surfacekit.models.batchnorm import batch_moments, normalize

INITS = ("kaiming", "xavier", "lecun", "orthogonal", "normal")
Statistics = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class MLPSpec:
    """A fully connected network: in_dim -> widths[0] -> ... -> widths[-1] -> out_dim.

    ``residual`` adds the input of every hidden layer whose input and output widths agree;
    ``batch_norm`` normalizes hidden pre-activations (see :mod:`surfacekit.models.batchnorm`);
    ``maxout_pieces`` is k of ``activation="maxout"`` (ignored otherwise).

    Raises:
        ValueError: an unknown activation or init, a non-positive width, or maxout with fewer than 2 pieces.
    """

    in_dim: int
    widths: tuple[int, ...]
    out_dim: int
    activation: str = "relu"
    bias: bool = True
    init: str = "kaiming"
    init_std: float = 0.05
    batch_norm: bool = False
    residual: bool = False
    maxout_pieces: int = 2

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATION_NAMES:
            raise ValueError(f"model.activation={self.activation!r}; choose one of {sorted(ACTIVATION_NAMES)}")
        if self.activation == MAXOUT and self.maxout_pieces < 2:
            raise ValueError(f"model.maxout_pieces={self.maxout_pieces}; maxout needs at least 2 pieces")
        if self.init not in INITS:
            raise ValueError(f"model.init={self.init!r}; choose one of {list(INITS)}")
        if any(w < 1 for w in self.widths) or self.in_dim < 1 or self.out_dim < 1:
            raise ValueError(f"model widths must be positive, got {self.widths}")

    @property
    def dims(self) -> tuple[int, ...]:
        return (self.in_dim, *self.widths, self.out_dim)

    @property
    def num_layers(self) -> int:
        return len(self.widths) + 1


def spec_from_config(cfg: Mapping[str, Any], in_dim: int, out_dim: int) -> MLPSpec:
    """Build a spec from a ``model`` config: ``width`` and ``depth``, or an explicit ``widths`` list."""
    widths = cfg.get("widths")
    if widths is None:
        widths = [int(cfg["width"])] * int(cfg.get("depth", 1))
    return MLPSpec(
        in_dim=in_dim,
        widths=tuple(int(w) for w in widths),
        out_dim=out_dim,
        activation=cfg.get("activation", "relu"),
        bias=bool(cfg.get("bias", True)),
        init=cfg.get("init", "kaiming"),
        init_std=float(cfg.get("init_std", 0.05)),
        batch_norm=bool(cfg.get("batch_norm", False)),
        residual=bool(cfg.get("residual", False)),
        maxout_pieces=int(cfg.get("maxout_pieces", 2)),
    )


def param_name(layer: int, kind: str, prefix: str = "layers") -> str:
    """The one spelling of a tensor's name: ``{prefix}.{layer}.{kind}``, e.g. ``layers.0.weight``."""
    return f"{prefix}.{layer}.{kind}"


def preactivation_width(spec: MLPSpec, i: int) -> int:
    """Pre-activations of layer i: k * width for a hidden maxout layer, else the layer's width."""
    hidden_maxout = spec.activation == MAXOUT and i < spec.num_layers - 1
    return spec.dims[i + 1] * (spec.maxout_pieces if hidden_maxout else 1)


def layer_param_names(spec: MLPSpec, i: int) -> list[str]:
    """The parameters of ``layers.{i}`` in canonical order: weight, bias, bn_scale, bn_shift (those present)."""
    kinds = ["weight"] + (["bias"] if spec.bias else [])
    if spec.batch_norm and i < spec.num_layers - 1:
        kinds += ["bn_scale", "bn_shift"]
    return [param_name(i, kind) for kind in kinds]


def param_shapes(spec: MLPSpec) -> dict[str, tuple[int, ...]]:
    """Per-member parameter shapes, in the canonical (flattening) order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(spec.num_layers):
        rows = preactivation_width(spec, i)
        for name in layer_param_names(spec, i):
            shapes[name] = (rows, spec.dims[i]) if name.endswith(".weight") else (rows,)
    return shapes


def buffer_shapes(spec: MLPSpec) -> dict[str, tuple[int, ...]]:
    """Per-member batch-norm statistics shapes: ``layers.{i}.bn_mean`` and ``bn_var`` [pre-activations of
    layer i] (:func:`preactivation_width`: the width, k * width with maxout) (empty without BN)."""
    if not spec.batch_norm:
        return {}
    return {param_name(i, kind): (preactivation_width(spec, i),) for i in range(len(spec.widths))
            for kind in ("bn_mean", "bn_var")}


def num_params(spec: MLPSpec) -> int:
    """P, the number of parameters of one member."""
    return sum(math.prod(s) for s in param_shapes(spec).values())


def init_weight(spec: MLPSpec, fan_out: int, fan_in: int, gen: torch.Generator, dtype) -> torch.Tensor:
    """A [fan_out, fan_in] weight matrix drawn from ``gen`` with the spec's init scheme.

    kaiming: N(0, 2/fan_in); lecun: N(0, 1/fan_in); xavier: N(0, 2/(fan_in + fan_out)); normal:
    N(0, init_std^2); orthogonal: ``torch.nn.init.orthogonal_``.
    """
    if spec.init == "orthogonal":
        w = torch.empty(fan_out, fan_in, dtype=dtype)
        return torch.nn.init.orthogonal_(w, generator=gen)
    std = {
        "kaiming": math.sqrt(2.0 / fan_in),
        "lecun": math.sqrt(1.0 / fan_in),
        "xavier": math.sqrt(2.0 / (fan_in + fan_out)),
        "normal": spec.init_std,
    }[spec.init]
    return std * torch.randn(fan_out, fan_in, generator=gen, dtype=dtype)


def init_member(spec: MLPSpec, seed: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """One member's parameters (no population axis), drawn from ``torch.Generator(seed)``; biases and
    BN shifts zero, BN scales one."""
    gen = torch.Generator().manual_seed(int(seed))
    params = {}
    for name, shape in param_shapes(spec).items():
        if name.endswith(".weight"):
            params[name] = init_weight(spec, shape[0], shape[1], gen, dtype)
        elif name.endswith(".bn_scale"):
            params[name] = torch.ones(shape, dtype=dtype)
        else:
            params[name] = torch.zeros(shape, dtype=dtype)
    return params


def init_statistics(spec: MLPSpec, k: int, dtype: torch.dtype,
                    device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Initial running statistics [K, width] per hidden layer: means 0, variances 1 (torch's); {} without BN."""
    return {name: (torch.zeros if name.endswith("bn_mean") else torch.ones)((k, *shape), dtype=dtype, device=device)
            for name, shape in buffer_shapes(spec).items()}


def affine(spec: MLPSpec, params: Mapping[str, torch.Tensor], i: int, h: torch.Tensor) -> torch.Tensor:
    """z = h W_i^T + b_i [K, B, out] for h [K, B, in] or [B, in] (a fused batched GEMM when h is [K, B, in])."""
    weight_t = params[param_name(i, "weight")].transpose(1, 2)
    if spec.bias and h.dim() == 3:
        return torch.baddbmm(params[param_name(i, "bias")].unsqueeze(1), h, weight_t)
    z = torch.matmul(h, weight_t)
    return z + params[param_name(i, "bias")].unsqueeze(1) if spec.bias else z


def _layer(spec: MLPSpec, params: Mapping[str, torch.Tensor], i: int, h: torch.Tensor,
           statistics: Statistics | None, perturbation: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Layer i and the batch moments it normalized with (None unless batch norm used the batch's own)."""
    z = affine(spec, params, i, h)
    if perturbation is not None:
        z = z + perturbation
    if i == spec.num_layers - 1:
        return z, None
    moments = None
    if spec.batch_norm:
        if statistics is None:
            mean, var = moments = batch_moments(z)
        else:
            mean, var = statistics[param_name(i, "bn_mean")], statistics[param_name(i, "bn_var")]
        z = normalize(z, mean, var, params[param_name(i, "bn_scale")], params[param_name(i, "bn_shift")])
    if spec.activation == MAXOUT:
        z = z.unflatten(-1, (-1, spec.maxout_pieces)).amax(dim=-1)
    else:
        z = ACTIVATIONS_INPLACE[spec.activation](z)  # z is a fresh tensor here
    out = h + z if spec.residual and z.shape[-1] == h.shape[-1] else z
    return out, moments


def layer(spec: MLPSpec, params: Mapping[str, torch.Tensor], i: int, h: torch.Tensor,
          statistics: Statistics | None = None, perturbation: torch.Tensor | None = None) -> torch.Tensor:
    """Layer i of the network applied to h [K, B, in] or [B, in]: [K, B, out] (see the module docstring).

    With batch norm, ``statistics=None`` normalizes with the moments of this batch (training mode);
    a dict of ``layers.{j}.bn_mean`` / ``bn_var`` [K, width] normalizes with those (evaluation mode).
    ``perturbation`` [K, B, pre-activations] is added to the pre-activations z = h W^T + b: a zero
    tensor that requires grad gets the per-example gradients dL/dz (K-FAC's output-side factors).
    The one layer implementation that every trainer and evaluation uses.
    """
    return _layer(spec, params, i, h, statistics, perturbation)[0]


def forward(spec: MLPSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, statistics: Statistics | None = None,
            return_statistics: bool = False):
    """Outputs [K, B, out_dim] for inputs shared by all members [B, in_dim] or per member [K, B, in_dim].

    ``statistics`` as for :func:`layer`. With ``return_statistics=True`` returns ``(outputs, moments)``,
    moments the batch means and biased variances [K, width] that batch norm used, named like the
    statistics (empty without batch norm or when ``statistics`` was given).
    """
    moments: dict[str, torch.Tensor] = {}
    h = x
    for i in range(spec.num_layers):
        h, used = _layer(spec, params, i, h, statistics)
        if used is not None:
            moments[param_name(i, "bn_mean")], moments[param_name(i, "bn_var")] = used
    return (h, moments) if return_statistics else h
