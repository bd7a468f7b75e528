"""Architecture spec -> functional forward pass over a population of parameter sets.

Parameters are a ``dict[str, Tensor]`` whose entries carry a leading population axis K:
``layers.{i}.weight`` [K, out, in], ``layers.{i}.bias`` [K, out] and, with batch norm,
``layers.{i}.bn_scale`` / ``layers.{i}.bn_shift`` [K, out] for every hidden layer i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda h: h,
}
# In-place versions for the forward pass: pre-activations are fresh tensors that no backward needs.
_ACTIVATIONS_INPLACE = {
    "relu": torch.relu_,
    "tanh": torch.tanh_,
    "sigmoid": torch.sigmoid_,
    "linear": lambda h: h,
}
INITS = ("kaiming", "xavier", "lecun", "orthogonal", "normal")
LOSSES = ("cross_entropy", "mse", "hinge")


@dataclass(frozen=True)
class MLPSpec:
    """A fully connected network: in_dim -> widths[0] -> ... -> widths[-1] -> out_dim.

    ``residual`` adds the input of every hidden layer whose input and output widths agree;
    ``batch_norm`` normalizes hidden pre-activations with the statistics of the batch seen.
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

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation={self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
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
    )


def param_shapes(spec: MLPSpec) -> dict[str, tuple[int, ...]]:
    """Per-member parameter shapes, in the canonical (flattening) order."""
    shapes: dict[str, tuple[int, ...]] = {}
    dims = spec.dims
    for i in range(spec.num_layers):
        shapes[f"layers.{i}.weight"] = (dims[i + 1], dims[i])
        if spec.bias:
            shapes[f"layers.{i}.bias"] = (dims[i + 1],)
        if spec.batch_norm and i < spec.num_layers - 1:
            shapes[f"layers.{i}.bn_scale"] = (dims[i + 1],)
            shapes[f"layers.{i}.bn_shift"] = (dims[i + 1],)
    return shapes


def num_params(spec: MLPSpec) -> int:
    """P, the number of parameters of one member."""
    return sum(math.prod(s) for s in param_shapes(spec).values())


def _init_weight(spec: MLPSpec, fan_out: int, fan_in: int, gen: torch.Generator, dtype) -> torch.Tensor:
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
    """One member's parameters (no population axis), drawn from ``torch.Generator(seed)``; biases zero."""
    gen = torch.Generator().manual_seed(int(seed))
    params = {}
    for name, shape in param_shapes(spec).items():
        if name.endswith("weight"):
            params[name] = _init_weight(spec, shape[0], shape[1], gen, dtype)
        elif name.endswith("bn_scale"):
            params[name] = torch.ones(shape, dtype=dtype)
        else:
            params[name] = torch.zeros(shape, dtype=dtype)
    return params


def forward(spec: MLPSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Outputs [K, B, out_dim] for inputs shared by all members [B, in_dim] or per member [K, B, in_dim]."""
    act = _ACTIVATIONS_INPLACE[spec.activation]
    h = x
    last = spec.num_layers - 1
    for i in range(spec.num_layers):
        weight_t = params[f"layers.{i}.weight"].transpose(1, 2)
        if spec.bias and h.dim() == 3:
            z = torch.baddbmm(params[f"layers.{i}.bias"].unsqueeze(1), h, weight_t)  # fused bias add
        else:
            z = torch.matmul(h, weight_t)
            if spec.bias:
                z = z + params[f"layers.{i}.bias"].unsqueeze(1)
        if i == last:
            return z
        if spec.batch_norm:
            mean = z.mean(dim=1, keepdim=True)
            var = z.var(dim=1, unbiased=False, keepdim=True)
            z = (z - mean) / torch.sqrt(var + 1e-5)
            z = z * params[f"layers.{i}.bn_scale"].unsqueeze(1) + params[f"layers.{i}.bn_shift"].unsqueeze(1)
        z = act(z)
        h = h + z if spec.residual and z.shape[-1] == h.shape[-1] else z
    raise AssertionError("unreachable")


def member_losses(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean loss over the batch per member [K].

    outputs [K, B, C]; targets [B] or [K, B] class labels, or [B, C] / [K, B, C] regression targets.
    ``cross_entropy``: softmax NLL. ``mse``: squared error summed over outputs (labels one-hot).
    ``hinge``: multi-class hinge, sum over wrong classes of max(0, 1 - o_y + o_j) divided by C.
    """
    num_classes = outputs.shape[-1]
    labels = targets.dtype in (torch.int64, torch.int32)
    if labels:
        targets = targets.expand(outputs.shape[:-1])
    if loss == "cross_entropy":
        if not labels:
            raise ValueError("loss=cross_entropy needs class labels; use loss=mse for regression targets")
        logp = torch.log_softmax(outputs, dim=-1)
        return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).mean(dim=-1)
    if loss == "mse":
        goal = torch.nn.functional.one_hot(targets, num_classes).to(outputs.dtype) if labels else targets
        return (outputs - goal).pow(2).sum(dim=-1).mean(dim=-1)
    if loss == "hinge":
        if not labels:
            raise ValueError("loss=hinge needs class labels")
        true = outputs.gather(-1, targets.unsqueeze(-1))
        margins = torch.clamp(1.0 - true + outputs, min=0.0)
        margins = margins.scatter(-1, targets.unsqueeze(-1), 0.0)
        return margins.sum(dim=-1).mean(dim=-1) / num_classes
    raise ValueError(f"model.loss={loss!r}; choose one of {list(LOSSES)}")


def member_errors(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Classification error fraction per member [K]; NaN for regression targets."""
    if targets.dtype not in (torch.int64, torch.int32):
        return torch.full(outputs.shape[:1], float("nan"), dtype=outputs.dtype, device=outputs.device)
    return (outputs.argmax(dim=-1) != targets).to(outputs.dtype).mean(dim=-1)
