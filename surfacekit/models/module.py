"""Any ``torch.nn.Module`` as a function of stacked parameters: populations of modules.

A :class:`ModuleSpec` holds a *template*: a private copy of an architecture (a class built from the
config, or a user's module) in evaluation mode whose batch-norm layers (``torch.nn.BatchNorm1d/2d/3d``)
are replaced by :class:`ExplicitBatchNorm`, which normalizes with the statistics its caller chooses
and reports the moments it used. The template's own parameter values are never used.

Parameters are a ``dict[str, Tensor]`` named as the module's ``named_parameters()`` (e.g.
``blocks.0.conv.weight``), each with a leading population axis K: the HDF5 layout
``/params/<name>`` [K, ...]. Batch-norm statistics use the names of the MLP
(:mod:`surfacekit.models.mlp`) below the norm layer's module path: ``{norm}.bn_mean`` and
``{norm}.bn_var`` [K, C] (biased variances, divisor = examples x positions per channel).

The population's forward pass is ``torch.func.vmap`` over ``torch.func.functional_call`` of the
template (Horace He et al., functorch; the batching rule of a convolution turns K members into one
grouped convolution), so any module whose operations have batching rules works. Batch norm follows
``torch.nn.BatchNorm2d`` (Ioffe and Szegedy 2015; see :mod:`surfacekit.models.batchnorm`): in batch
mode each member normalizes with the moments of its own batch over every axis but the channel axis,
and running statistics are updated as torch does (unbiased variance, the layer's momentum). Other
layers run in evaluation mode: dropout is off, so the loss is a deterministic function of the
parameters.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.func import functional_call, vmap

from surfacekit.models.batchnorm import update_running

Statistics = Mapping[str, torch.Tensor]


class _Stop(Exception):
    """Raised by a norm layer to end a forward pass early (its moments are all that is needed)."""


@dataclass
class NormCall:
    """What the norm layers of one forward pass do, set by :func:`norm_call`.

    statistics: fixed ``{norm}.bn_mean`` / ``bn_var`` per norm layer; a layer without an entry
    normalizes with its batch's moments and writes them into ``moments`` (with the number of values
    per channel into ``counts``); stop_after: the name of a norm layer after which the pass ends.
    """

    statistics: Statistics
    moments: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    stop_after: str | None = None


class ExplicitBatchNorm(nn.Module):
    """Batch norm over the channel axis 1 whose statistics come from its caller (:class:`NormCall`).

    y = (x - mean) / sqrt(var + eps) * weight + bias with mean and biased var over every axis but 1
    (batch mode) or fixed ones; the same parameters (``weight``, ``bias``) and eps as the torch layer
    it replaces. Raises RuntimeError when called outside :func:`norm_call`, ValueError when called
    twice in one pass in batch mode.
    """

    def __init__(self, source: nn.modules.batchnorm._BatchNorm, name: str):
        super().__init__()
        self.name, self.eps, self.num_features = name, float(source.eps), int(source.num_features)
        self.momentum = source.momentum
        self.weight = source.weight
        self.bias = source.bias
        self.call: NormCall | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call = self.call
        if call is None:
            raise RuntimeError(f"{self.name}: an ExplicitBatchNorm runs inside surfacekit.models.module.norm_call only")
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean_name, var_name = f"{self.name}.bn_mean", f"{self.name}.bn_var"
        fixed = mean_name in call.statistics
        mean = call.statistics[mean_name] if fixed else x.mean(dim=dims)
        centred = x - mean.reshape(shape)
        if fixed:
            var = call.statistics[var_name]
        else:
            if self.name in call.counts:
                raise ValueError(f"batch-norm layer {self.name} is called more than once in a forward pass; give each "
                                 "use its own layer")
            # the two-pass biased variance: stable, and on the CPU several times faster than torch.var_mean
            # over the non-contiguous axes of a vmapped batch
            var = (centred * centred).mean(dim=dims)
            call.moments[mean_name], call.moments[var_name] = mean, var
            call.counts[self.name] = x.numel() // x.shape[1]
        if call.stop_after == self.name:
            raise _Stop
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        if self.bias is None:
            return centred * scale.reshape(shape)
        return torch.addcmul(self.bias.reshape(shape), centred, scale.reshape(shape))


@contextlib.contextmanager
def norm_call(template: nn.Module, call: NormCall) -> Iterator[NormCall]:
    """Let the template's norm layers follow ``call`` for the passes inside the block.

    Attention (``scaled_dot_product_attention``) runs with its math kernel inside the block: the fused
    kernels have no second derivative (PyTorch 2.x raises "derivative for
    aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented" in a Hessian-vector
    product), the math kernel has every derivative.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    norms = [m for m in template.modules() if isinstance(m, ExplicitBatchNorm)]
    for m in norms:
        m.call = call
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield call
    finally:
        for m in norms:
            m.call = None


@dataclass(frozen=True)
class Norm:
    """A batch-norm layer of a template: module path, channels, values per channel of one example
    (1 for [B, C], H x W for [B, C, H, W]) and torch's running-statistics momentum."""

    name: str
    channels: int
    per_example: int
    momentum: float


def prepare(module: nn.Module) -> nn.Module:
    """A template: a deep copy of ``module`` in evaluation mode with every torch batch-norm layer
    replaced by :class:`ExplicitBatchNorm` (same parameter names, same order). ``module`` is untouched.

    Raises:
        ValueError: a batch-norm layer with momentum=None (cumulative averages are not supported).
    """
    template = copy.deepcopy(module).eval()
    for name, sub in list(template.named_modules()):
        for child_name, child in list(sub.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                path = f"{name}.{child_name}" if name else child_name
                if child.momentum is None:
                    raise ValueError(f"{path}: batch norm with momentum=None (a cumulative average) is not supported")
                setattr(sub, child_name, ExplicitBatchNorm(child, path))
    for p in template.parameters():
        p.requires_grad_(False)
    return template


def trace(template: nn.Module, run: Callable[[NormCall], Any], batch: int) -> tuple[tuple[Norm, ...], int, Any]:
    """One forward pass ``run(call)`` of ``template`` in batch mode (its norm layers following ``call``,
    without gradients) on ``batch`` examples: its norm layers in the order they are called, the values
    of every leaf module's output per example (for memory estimates), and the pass's output.

    Raises:
        ValueError: a norm layer called more than once in the pass (its statistics would be ambiguous).
    """
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: sizes.append(out.numel() // batch if torch.is_tensor(out) else 0))
             for m in template.modules() if not list(m.children())]
    try:
        call = NormCall({})
        with torch.no_grad():
            out = run(call)
    finally:
        for h in hooks:
            h.remove()
    modules = dict(template.named_modules())
    norms = tuple(Norm(n, modules[n].num_features, count // batch, float(modules[n].momentum))
                  for n, count in call.counts.items())
    return norms, int(sum(sizes)), out


def import_class(path: str) -> type:
    """The class named by an import path ``package.module.Class``.

    Raises:
        ValueError: the path cannot be imported or does not name a ``torch.nn.Module`` subclass.
    """
    module_name, _, attr = str(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr) if module_name else None
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model._target_={path} cannot be imported ({type(exc).__name__}: {exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"model._target_={path} is not a torch.nn.Module subclass")
    return cls


@dataclass(frozen=True, eq=False)
class ModuleSpec:
    """A population of one module architecture.

    Attributes:
        target: the import path of the class (``surfacekit.models.CNN`` or a user's class).
        kwargs: the keyword arguments it was built with (sorted (key, value) pairs).
        in_shape: one example's input shape, e.g. (1, 8, 8); flat inputs [..., prod(in_shape)] are reshaped.
        out_dim: outputs per example (classes or regression outputs).
        template: the prepared template (:func:`prepare`).
        norms: its batch-norm layers in forward order (:class:`Norm`).
        activation_size: values of every layer's output for one example (for memory estimates).
    """

    target: str
    kwargs: tuple[tuple[str, Any], ...]
    in_shape: tuple[int, ...]
    out_dim: int
    template: nn.Module
    norms: tuple[Norm, ...]
    activation_size: int
    constants: dict = field(default_factory=dict, repr=False)  # the template's buffers by (device, dtype), a cache

    @property
    def batch_norm(self) -> bool:
        return bool(self.norms)

    def build(self) -> nn.Module:
        """A freshly initialized module of the class (torch's own initialization, global RNG)."""
        return import_class(self.target)(**dict(self.kwargs))


def constructor_kwargs(cls: type, kwargs: Mapping[str, Any], in_shape: tuple[int, ...], out_dim: int) -> dict[str, Any]:
    """``kwargs`` plus ``in_shape`` and ``num_outputs`` from the data where the constructor takes them
    and they are not given (the protocol for ``model._target_`` classes)."""
    params = inspect.signature(cls).parameters
    out = dict(kwargs)
    if "in_shape" in params and "in_shape" not in out:
        out["in_shape"] = tuple(in_shape)
    if "num_outputs" in params and "num_outputs" not in out:
        out["num_outputs"] = int(out_dim)
    return out


def _built(cls: type, kwargs: Mapping[str, Any], seed: int) -> nn.Module:
    """``cls(**kwargs)`` under ``torch.manual_seed(seed)`` in a forked RNG (the caller's state is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs)


def _check_population_module(target: str, module: nn.Module, other: nn.Module) -> None:
    """Refuse what a population cannot honour: frozen parameters (every parameter is trained) and buffers
    that depend on the seed (every member runs the one template's buffers). ``module`` and ``other`` are
    the class built under seeds 0 and 1.

    Raises:
        ValueError: naming the parameters or buffers and the fix.
    """
    frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
    if frozen:
        raise ValueError(f"model._target_={target} has parameters with requires_grad=False ({', '.join(frozen)}): a "
                         "population trains every parameter; register fixed tensors as buffers instead")
    theirs = dict(other.named_buffers())
    seeded = [name for name, b in module.named_buffers()
              if name in theirs and b.shape == theirs[name].shape and not torch.equal(b, theirs[name])]
    if seeded:
        raise ValueError(f"model._target_={target} has buffers that depend on the seed ({', '.join(seeded)}): every "
                         "member of a population shares one copy of the buffers, so member k would not be "
                         "torch.manual_seed(seed_k); Class(...); draw them from a fixed generator or make them parameters")


def module_spec(target: str, kwargs: Mapping[str, Any], in_shape: tuple[int, ...], out_dim: int) -> ModuleSpec:
    """Build and check a :class:`ModuleSpec` for class ``target`` on inputs of shape ``in_shape``.

    The class is built under seeds 0 and 1 (in a forked RNG); the seed-0 module is run on two zero
    examples to find its norm layers, their order and its output size.

    Raises:
        ValueError: the class cannot be imported or built with these arguments, has frozen parameters
            or seed-dependent buffers (a population cannot honour them), fails on such inputs, or gives
            outputs other than [B, out_dim].
    """
    cls = import_class(target)
    full = constructor_kwargs(cls, kwargs, in_shape, out_dim)
    try:
        module, other = (_built(cls, full, seed) for seed in (0, 1))
    except Exception as exc:  # noqa: BLE001 - a user's constructor: report it in one line
        raise ValueError(f"model._target_={target} cannot be built with {full} ({type(exc).__name__}: {exc})") from None
    _check_population_module(target, module, other)
    template = prepare(module)
    sample = torch.zeros(2, *in_shape, dtype=next(template.parameters(), torch.zeros(())).dtype)

    def run(call: NormCall) -> Any:
        with norm_call(template, call):
            return template(sample)

    try:
        norms, size, out = trace(template, run, 2)
    except Exception as exc:  # noqa: BLE001 - a user's forward: report it in one line
        raise ValueError(f"model._target_={target} fails on inputs of shape {[2, *in_shape]} "
                         f"({type(exc).__name__}: {exc})") from None
    if not torch.is_tensor(out) or tuple(out.shape) != (2, out_dim):
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"model._target_={target} gives outputs {got} for 2 examples; the data need [2, {out_dim}]")
    return ModuleSpec(target, tuple(sorted(full.items())), tuple(in_shape), int(out_dim), template, norms, size)


def param_shapes(spec: ModuleSpec) -> dict[str, tuple[int, ...]]:
    """Per-member parameter shapes in the module's ``named_parameters()`` order (the flattening order)."""
    return {name: tuple(p.shape) for name, p in spec.template.named_parameters()}


def buffer_shapes(spec: ModuleSpec) -> dict[str, tuple[int, ...]]:
    """Per-member batch-norm statistics shapes: ``{norm}.bn_mean`` and ``bn_var`` [channels] ({} without)."""
    return {f"{n.name}.{kind}": (n.channels,) for n in spec.norms for kind in ("bn_mean", "bn_var")}


def num_params(spec: ModuleSpec) -> int:
    """P, the number of parameters of one member."""
    return sum(math.prod(s) for s in param_shapes(spec).values())


def init_member(spec: ModuleSpec, seed: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """One member's parameters (no population axis): the class's own initialization with torch's global
    RNG seeded by ``seed`` inside ``torch.random.fork_rng`` (the caller's RNG state is untouched), then cast
    to ``dtype``; equal to ``torch.manual_seed(seed); Class(**kwargs).to(dtype)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        module = spec.build()
    return {name: p.detach().to(dtype) for name, p in module.named_parameters()}


def init_statistics(spec: ModuleSpec, k: int, dtype: torch.dtype,
                    device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Initial running statistics [K, channels] per norm layer: means 0, variances 1 (torch's); {} without."""
    return {name: (torch.zeros if name.endswith("bn_mean") else torch.ones)((k, *shape), dtype=dtype, device=device)
            for name, shape in buffer_shapes(spec).items()}


def update_statistics(spec: ModuleSpec, running: dict[str, torch.Tensor], moments: Statistics, batch_size: int) -> None:
    """In place, torch's running-statistics update of every norm layer from one batch's moments [K, C]
    (``forward(..., return_statistics=True)``) of ``batch_size`` examples per member.

    Raises:
        ValueError: fewer than 2 values per channel (torch raises as well).
    """
    for n in spec.norms:
        mean, var = f"{n.name}.bn_mean", f"{n.name}.bn_var"
        update_running(running[mean], running[var], moments[mean], moments[var], batch_size * n.per_example, n.momentum)


def _constants(spec: ModuleSpec, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """The template's buffers (none for the built-in models) on ``like``'s device, floats in its dtype;
    moved once per device and dtype, so forward passes copy nothing between devices."""
    key = (like.device, like.dtype)
    if key not in spec.constants:
        spec.constants[key] = {name: b.to(like.device, like.dtype if b.is_floating_point() else b.dtype)
                               for name, b in spec.template.named_buffers()}
    return spec.constants[key]


def _member(spec: ModuleSpec, params: Statistics, statistics: Statistics, x: torch.Tensor, constants: Statistics,
            stop_after: str | None):
    """One member's outputs and the moments its norm layers used (or, with ``stop_after``, moments only)."""
    call = NormCall(statistics, stop_after=stop_after)
    with norm_call(spec.template, call):
        try:
            out = functional_call(spec.template, {**constants, **params}, (x,))
        except _Stop:
            return call.moments
    return out, call.moments


def _vmapped(spec: ModuleSpec, params: Statistics, x: torch.Tensor, statistics: Statistics | None,
             stop_after: str | None = None):
    x = x.reshape(*x.shape[:-1], *spec.in_shape)
    shared = x.dim() == len(spec.in_shape) + 1
    member = functools.partial(_member, spec, constants=_constants(spec, x), stop_after=stop_after)
    return vmap(member, in_dims=(0, 0, None if shared else 0))(dict(params), dict(statistics or {}), x)


def forward(spec: ModuleSpec, params: Statistics, x: torch.Tensor, statistics: Statistics | None = None,
            return_statistics: bool = False):
    """Outputs [K, B, out_dim] for flat inputs shared by all members [B, D] or per member [K, B, D]
    (D = prod(in_shape); reshaped to [B, *in_shape]).

    ``statistics=None`` normalizes with each batch's moments (training mode); a dict of ``{norm}.bn_mean``
    / ``bn_var`` [K, C] normalizes with those (evaluation mode). With ``return_statistics=True`` returns
    ``(outputs, moments)``: the batch means and biased variances [K, C] batch norm used (empty without
    batch norm or when ``statistics`` was given). Cost: one vmapped forward pass of K members.
    """
    out, moments = _vmapped(spec, params, x, statistics)
    return (out, moments) if return_statistics else out


def norm_moments(spec: ModuleSpec, params: Statistics, x: torch.Tensor, statistics: Statistics, norm: Norm
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance [K, C] of the input of ``norm`` on the batch x [B, D], the norm layers
    before it normalizing with ``statistics``; the pass stops at ``norm``."""
    moments = _vmapped(spec, params, x, statistics, stop_after=norm.name)
    return moments[f"{norm.name}.bn_mean"], moments[f"{norm.name}.bn_var"]
