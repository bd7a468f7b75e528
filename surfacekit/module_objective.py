"""Your own ``torch.nn.Module`` and data as ``loss_fn(theta)``: the analysis tools on any model.

``objective_from_module(model, loss, data)`` returns a :class:`ModuleObjective`: callable as
``loss_fn(theta)`` on a flat vector of the selected parameters, with ``theta`` (their current values,
float64 by default), so every curvature routine (``surfacekit.curvature``), critical-point finder
and landscape helper takes it. The value is the mean loss over every example the data yield,

    L(theta) = (1 / N) sum_b n_b L_b(theta),    N = sum_b n_b,

L_b the mean loss of batch b and n_b its size (an uneven last batch counts exactly), computed a batch
at a time. Parameters that are not selected are held at their values.

The user's module is never modified: the objective runs a private copy (:func:`surfacekit.models.module.prepare`:
evaluation mode, so dropout is off; batch-norm layers replaced by layers that take their statistics
from the caller) through ``torch.func.functional_call`` with its own float64 tensors. Parameters,
buffers, running statistics, ``requires_grad`` flags, training flags, dtype and device of the
module stay as they were. Batch norm (``bn_mode``, as for a trained job, see ``surfacekit.objective``):

* ``"eval"`` (default): the module's running statistics, fixed: the network as it predicts;
* ``"batch"``: the statistics of the whole data set as a differentiable function of theta, exact
  under batching (norm layer by norm layer, each layer's moments pooled over every batch with the
  earlier layers normalized by their full-set statistics; Chan, Golub and LeVeque 1979).

``layer_spectra`` loops over parameter groups (layers, blocks, or your own selections) and returns a
table of per-group extreme eigenvalues, trace and index.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from torch.func import functional_call

from surfacekit.curvature.errors import require_finite
from surfacekit.curvature.hvp import Backend, HessianOperator, as_float64
from surfacekit.models.architecture import param_shapes
from surfacekit.models.batchnorm import pooled_moments
from surfacekit.models.losses import LOSSES, example_losses
from surfacekit.models.module import Norm, NormCall, _Stop, norm_call, prepare, trace

BN_MODES = ("eval", "batch")
HVP_MODES = ("batches", "graph")
Selection = str | Sequence[str] | Callable[[str, torch.Tensor], bool] | None
Selector = int | str | Callable[[Any], Any]


def move(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A batch (tensor, tuple, list or dict, nested) on ``device``, floating tensors in ``dtype``: the one
    place where the objective moves data."""
    if torch.is_tensor(batch):
        return batch.to(device, dtype) if batch.is_floating_point() else batch.to(device)
    if isinstance(batch, Mapping):
        return {k: move(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(move(v, device, dtype) for v in batch)
    return batch


def _pick(batch: Any, selector: Selector, what: str) -> Any:
    if callable(selector):
        return selector(batch)
    if isinstance(selector, str) and not isinstance(batch, Mapping):
        raise ValueError(f"{what}={selector!r} names a key, but the batches are {type(batch).__name__}s, not dicts")
    if isinstance(selector, int) and isinstance(batch, Mapping):
        raise ValueError(f"the batches are dicts: pass {what}='KEY' (or a callable) to say where the {what} are")
    try:
        return batch[selector]
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"{what}={selector!r} does not select anything from a batch of type {type(batch).__name__} "
                         f"({type(exc).__name__}: {exc})") from None


def _first_tensor(value: Any) -> torch.Tensor | None:
    if torch.is_tensor(value):
        return value
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (tuple, list)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def select_parameters(names: Iterable[str], params: Selection, tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The selected parameter names, in the module's order.

    ``params``: None (all), a name or module prefix (``"layer1"`` selects ``layer1.*``), a list of
    names or prefixes, or a predicate ``(name, tensor) -> bool`` shown ``tensors[name]`` (the module's
    own parameter: ``lambda name, p: p.requires_grad`` selects the trainable ones).

    Raises:
        ValueError: a name or prefix that matches nothing, or an empty selection.
    """
    names = list(names)
    if params is None:
        chosen = names
    elif callable(params):
        chosen = [n for n in names if params(n, tensors[n])]
    else:
        wanted = [params] if isinstance(params, str) else list(params)
        match = lambda n, w: n == w or n.startswith(w + ".")  # noqa: E731
        unknown = [w for w in wanted if not any(match(n, w) for n in names)]
        if unknown:
            raise ValueError(f"params={unknown} match no parameter of the module; its parameters are {names}")
        chosen = [n for n in names if any(match(n, w) for w in wanted)]
    if not chosen:
        raise ValueError(f"params={params!r} selects no parameter of the module")
    return chosen


@dataclass
class Problem:
    """A module, its data and loss, prepared once; :class:`ModuleObjective` selects parameters of it.

    template: the prepared private copy (on ``device``, ``dtype``); values: every parameter and buffer
    as float64 (``dtype``) tensors by name; statistics: the running statistics as ``{norm}.bn_mean`` /
    ``bn_var`` (eval mode); norms: norm layers in forward order; num_examples / num_batches: what one
    pass over the data gives; parameters: the module's own parameters by name (never written: what a
    ``params`` predicate is shown, with their ``requires_grad`` flags).
    """

    template: nn.Module
    values: dict[str, torch.Tensor]
    parameter_names: list[str]
    statistics: dict[str, torch.Tensor]
    norms: tuple[Norm, ...]
    data: Any
    loss: Any
    inputs: Selector
    targets: Selector
    bn_mode: str
    device: torch.device
    dtype: torch.dtype
    num_examples: int = 0
    num_batches: int = 0
    tensors_chunk: int | None = None
    hvp: str = "batches"
    parameters: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def separable(self) -> bool:
        """Whether L is a sum over batches (no batch norm in batch mode couples them)."""
        return self.bn_mode == "eval" or not self.norms

    def batches(self) -> Iterator[Any]:
        """The data's batches on the device, floats in the objective's dtype."""
        if self.tensors_chunk is not None:
            n = len(self.data[0])
            for start in range(0, n, self.tensors_chunk):
                yield move(tuple(t[start:start + self.tensors_chunk] for t in self.data), self.device, self.dtype)
            return
        for batch in self.data:
            yield move(batch, self.device, self.dtype)

    def run(self, values: Mapping[str, torch.Tensor], batch: Any, call: NormCall) -> Any:
        """The model's output on one batch with the tensors ``values``, norm layers following ``call``."""
        inputs = _pick(batch, self.inputs, "inputs")
        with norm_call(self.template, call):
            if isinstance(inputs, Mapping):
                return functional_call(self.template, values, (), dict(inputs))
            args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
            return functional_call(self.template, values, args)

    def batch_size(self, batch: Any) -> int:
        first = _first_tensor(_pick(batch, self.inputs, "inputs"))
        if first is None or first.dim() == 0:
            raise ValueError("the model's inputs hold no tensor with a batch axis; pass inputs= to select them")
        return int(first.shape[0])

    def batch_total(self, output: Any, batch: Any, size: int) -> torch.Tensor:
        """n_b L_b: the sum of the batch's example losses."""
        loss = self.loss
        if isinstance(loss, str):
            if not torch.is_tensor(output) or output.dim() != 2:
                got = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
                raise ValueError(f"loss={loss!r} needs outputs [batch, classes], the model gives {got}; pass a "
                                 "callable loss(output, batch)")
            return example_losses(output.unsqueeze(0), _pick(batch, self.targets, "targets"), loss).sum()
        if isinstance(loss, nn.Module):
            return loss(output, _pick(batch, self.targets, "targets")) * size
        value = loss(output, batch)
        if not torch.is_tensor(value) or value.dim() > 1 or (value.dim() == 1 and len(value) != size):
            got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"a loss callable must return the batch's mean loss (0-d) or one loss per example "
                             f"[{size}], got {got}")
        return value * size if value.dim() == 0 else value.sum()

    def full_statistics(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batch mode: every norm layer's mean and biased variance over the whole data set, as a
        differentiable function of ``values``. Cost: one pass over the data per norm layer, each
        stopping at its layer."""
        stats: dict[str, torch.Tensor] = {}
        for norm in self.norms:
            counts, means, sums_sq = [], [], []
            for batch in self.batches():
                call = NormCall(dict(stats), stop_after=norm.name)
                try:
                    self.run(values, batch, call)
                except _Stop:
                    pass
                mean, var = call.moments[f"{norm.name}.bn_mean"], call.moments[f"{norm.name}.bn_var"]
                counts.append(call.counts[norm.name])
                means.append(mean)
                sums_sq.append(var * call.counts[norm.name])
            stats[f"{norm.name}.bn_mean"], stats[f"{norm.name}.bn_var"] = pooled_moments(counts, means, sums_sq)
        return stats

    def value(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """L at ``values``: the size-weighted mean of the batch losses (see the module docstring).

        Raises:
            RuntimeError: the data yield a different number of examples than at construction (a
                loader that drops a random last batch, or data that changed).
        """
        stats = self.statistics if self.bn_mode == "eval" else self.full_statistics(values)
        total, count = None, 0
        for batch in self.batches():
            size = self.batch_size(batch)
            part = self.batch_total(self.run(values, batch, NormCall(stats)), batch, size)
            total = part if total is None else total + part
            count += size
        if count != self.num_examples:
            raise RuntimeError(f"the data gave {count} examples in this pass and {self.num_examples} before: the "
                               "objective needs the same examples in every pass (no random drop_last)")
        return total / count


@dataclass
class ModuleObjective:
    """The loss of a module over its data as a function of a flat vector of selected parameters.

    Call it: ``objective(theta) -> L`` (0-d), theta [P] in ``names`` order (each tensor flattened
    row-major). Attributes: ``theta`` [P] (the module's current values, ``dtype``, ``device``),
    ``names`` and ``shapes`` of the selected parameters, ``info`` (what the numbers describe:
    bn_mode, dtype, device, num_examples, num_batches, loss, num_params). Cost per call: one pass
    over the data (batch mode with batch norm: plus one partial pass per norm layer).
    """

    problem: Problem
    names: list[str]
    theta: torch.Tensor
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return self.problem.value({**self.problem.values, **self.unflatten(theta)})

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The selected parameters as tensors of their shapes, from theta [P].

        Raises:
            ValueError: theta is not a vector of P entries.
        """
        size = sum(math.prod(s) for s in self.shapes.values())
        if theta.dim() != 1 or theta.numel() != size:
            raise ValueError(f"theta must be a vector of the {size} selected parameters, got shape {tuple(theta.shape)}")
        out, start = {}, 0
        for name, shape in self.shapes.items():
            stop = start + math.prod(shape)
            out[name] = theta[start:stop].reshape(shape)
            start = stop
        return out

    def select(self, params: Selection) -> "ModuleObjective":
        """The same problem with another parameter selection (nothing is copied or re-read)."""
        return _selection(self.problem, params, self.info)

    def hessian_operator(self, theta: torch.Tensor, backend: Backend = "graph") -> HessianOperator:
        """The Hessian at theta [P] as the curvature tools use it (``curvature.hessian_operator`` asks for it).

        ``hvp="batches"`` (and a separable objective): :class:`BatchHessianOperator`, products a batch
        at a time; otherwise (``hvp="graph"``, or batch norm in batch mode, which couples the batches)
        the generic operator over the whole objective with ``backend``.

        Raises:
            ValueError: the objective computes in another dtype than float64 (``objective_from_module(dtype=...)``).
        """
        if self.problem.dtype != torch.float64:
            raise ValueError(f"the objective computes in {str(self.problem.dtype).replace('torch.', '')} "
                             "(objective_from_module(dtype=...)); curvature needs dtype=torch.float64")
        if self.problem.hvp == "batches" and self.problem.separable:
            return BatchHessianOperator(self, theta)
        return HessianOperator(self, theta, backend)


class BatchHessianOperator(HessianOperator):
    """H(theta) v = (1 / N) sum_b H_b(theta) v, H_b the Hessian of batch b's summed loss n_b L_b, computed
    one batch at a time: a forward pass, a gradient with ``create_graph=True`` and one more backward
    pass per batch (the dataloader product of PyHessian and curvlinops, weighted by batch size).

    Memory: one batch's double-backward graph, whatever the data size. Cost per product: about three
    gradients of the full-data loss; a block of m vectors ([m, P]) shares the forward and first
    backward pass of every batch (``is_grads_batched``). Construction costs one gradient (the loss and
    gradient norm at theta, also a batch at a time). The interface, float64 policy and checks are those of
    :class:`surfacekit.curvature.HessianOperator` (``point``, ``loss``, ``grad_norm``, ``num_hvps``).

    Raises:
        ValueError: the objective does not compute in float64 (see ``curvature.hvp.as_float64``).
        NonFiniteError: the loss or gradient at theta, or a product, is not finite.
    """

    def __init__(self, objective: "ModuleObjective", theta: torch.Tensor):
        theta = as_float64(theta)
        self.backend = "batches"
        self.size, self.dtype, self.device = theta.numel(), theta.dtype, theta.device
        self.num_hvps = 0
        self.point = theta
        self._batched_ok = True  # a block shares each batch's forward and first backward pass
        self._objective = objective
        loss, grad = self._loss_and_gradient()
        if loss.dtype != torch.float64:
            raise ValueError(f"the objective computes in {loss.dtype}; curvature needs dtype=torch.float64")
        self.loss, self.grad_norm = float(loss), float(grad.norm())
        require_finite(loss.reshape(1), "the loss at theta")
        require_finite(grad, f"the gradient at theta (loss {self.loss:.6g})")

    def _loss_and_gradient(self) -> tuple[torch.Tensor, torch.Tensor]:
        """L and its gradient at the point, a batch at a time (memory of one batch)."""
        problem, objective = self._objective.problem, self._objective
        loss, grad, count = 0.0, torch.zeros_like(self.point), 0
        for batch in problem.batches():
            point = self.point.clone().requires_grad_(True)
            size = problem.batch_size(batch)
            with torch.enable_grad():
                values = {**problem.values, **objective.unflatten(point)}
                part = problem.batch_total(problem.run(values, batch, NormCall(problem.statistics)), batch, size)
                (g,) = torch.autograd.grad(part, point, allow_unused=True)
            loss = loss + part.detach()
            grad = grad if g is None else grad + g
            count += size
        return loss / count, grad / count

    def _single(self, v: torch.Tensor) -> torch.Tensor:
        return self._batch_products(v.unsqueeze(0))[0]

    def _batched(self, v: torch.Tensor) -> torch.Tensor:
        return self._batch_products(v)

    def _batch_products(self, vectors: torch.Tensor) -> torch.Tensor:
        problem, objective = self._objective.problem, self._objective
        total = torch.zeros_like(vectors)
        count = 0
        for batch in problem.batches():
            point = self.point.clone().requires_grad_(True)
            values = {**problem.values, **objective.unflatten(point)}
            size = problem.batch_size(batch)
            count += size
            with torch.enable_grad():
                part = problem.batch_total(problem.run(values, batch, NormCall(problem.statistics)), batch, size)
                (grad,) = torch.autograd.grad(part, point, create_graph=True, allow_unused=True)
                if grad is None or not grad.requires_grad:  # the loss is at most linear in theta here: H_b = 0
                    continue
                if len(vectors) == 1:
                    (hv,) = torch.autograd.grad(grad, point, vectors[0], allow_unused=True)
                    hv = None if hv is None else hv.unsqueeze(0)
                else:
                    (hv,) = torch.autograd.grad(grad, point, vectors, is_grads_batched=True, allow_unused=True)
            if hv is not None:
                total += hv.detach()
        return total / count


@param_shapes.register
def _(objective: ModuleObjective) -> dict[str, tuple[int, ...]]:
    """A module objective's selected parameter shapes: the landscape's direction helpers (filter
    normalization) take the objective where they take a spec."""
    return dict(objective.shapes)


def _selection(problem: Problem, params: Selection, info: Mapping[str, Any]) -> ModuleObjective:
    values = problem.values
    names = select_parameters(problem.parameter_names, params, problem.parameters or values)
    theta = torch.cat([values[n].reshape(-1) for n in names]).clone()
    shapes = {n: tuple(values[n].shape) for n in names}
    return ModuleObjective(problem, names, theta, shapes, {**info, "num_params": int(theta.numel())})


def _check_connected(objective: ModuleObjective, batch: Any) -> None:
    """Raise ValueError when the loss of one batch does not depend on the selected parameters; warn
    for selected tensors it does not reach."""
    problem = objective.problem
    theta = objective.theta.detach().clone().requires_grad_(True)
    values = {**problem.values, **objective.unflatten(theta)}
    with torch.enable_grad():
        stats = problem.statistics if problem.bn_mode == "eval" else None
        call = NormCall(stats or {})
        value = problem.batch_total(problem.run(values, batch, call), batch, problem.batch_size(batch))
        if not torch.is_tensor(value) or not value.requires_grad:
            raise ValueError(f"the loss does not depend on the selected parameters {objective.names}: is it computed "
                             "from the model's output (not detached, not under torch.no_grad)?")
        pieces = [values[n] for n in objective.names]
        grads = torch.autograd.grad(value, pieces, allow_unused=True)
    unused = [n for n, g in zip(objective.names, grads) if g is None]
    if len(unused) == len(objective.names):
        raise ValueError(f"the loss does not depend on the selected parameters {objective.names}: select parameters "
                         "the model's output uses (params=...)")
    if unused:
        warnings.warn(f"the loss does not depend on the selected parameter(s) {unused}: their Hessian rows are zero; "
                      "leave them out with params=...", stacklevel=3)


def _data_form(data: Any, chunk_size: int | None) -> int | None:
    """The chunk size when ``data`` is a tuple of tensors (one data set), else None (batches).

    Raises:
        TypeError: a one-shot iterator (it cannot be read on every call).
        ValueError: tensors of different lengths.
    """
    if isinstance(data, (tuple, list)) and data and all(torch.is_tensor(t) for t in data):
        lengths = {len(t) for t in data}
        if len(lengths) != 1:
            raise ValueError(f"data tensors have different lengths {sorted(lengths)}")
        if not len(data[0]):
            raise ValueError("data hold no examples")
        return int(chunk_size or len(data[0]))
    if iter(data) is data:
        raise TypeError("data is a one-shot iterator: pass a DataLoader, a list of batches or a tuple of tensors, "
                        "which can be read on every call")
    sampler = getattr(data, "sampler", None)
    if isinstance(sampler, torch.utils.data.RandomSampler) and getattr(data, "drop_last", False):
        raise ValueError("the DataLoader shuffles and drops its last batch, so every pass sees other examples; use "
                         "shuffle=False (or drop_last=False) for a full-data objective")
    return None


def objective_from_module(
    model: nn.Module,
    loss: str | nn.Module | Callable[[Any, Any], torch.Tensor],
    data: Any,
    *,
    params: Selection = None,
    bn_mode: str = "eval",
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
    inputs: Selector = 0,
    targets: Selector = 1,
    chunk_size: int | None = None,
    hvp: str = "batches",
) -> ModuleObjective:
    """A module's full-data loss as ``loss_fn(theta)`` over the selected parameters (see the module docstring).

    Args:
        model: any ``torch.nn.Module``; never modified.
        loss: ``"cross_entropy"``, ``"mse"`` or ``"hinge"`` (``surfacekit.models.losses``; outputs [B, C]);
            a torch loss module with ``reduction="mean"``, called as ``loss(output, targets)``; or a
            callable ``loss(output, batch)`` returning the batch's mean loss (0-d) or one loss per
            example [B].
        data: a ``DataLoader`` or any re-iterable of batches (tuples, lists or dicts of tensors), or a
            tuple of tensors ``(x, y, ...)`` read ``chunk_size`` examples at a time.
        params: which parameters theta holds: None (all), a name or module prefix, a list of them, or a
            predicate ``(name, tensor) -> bool``; the others are held fixed.
        bn_mode: ``"eval"`` (running statistics) or ``"batch"`` (full-data statistics of theta).
        dtype, device: where and in what precision the objective computes (default: float64 on the
            module's device); batches are moved there one at a time.
        inputs, targets: where a batch holds the model's inputs and the loss's targets: an index, a
            key (dict batches) or a callable ``batch -> value``; a tuple or dict of inputs is passed as
            positional or keyword arguments.
        hvp: how the curvature tools form Hessian-vector products: ``"batches"`` (default; one batch
            at a time, memory of one batch: :class:`BatchHessianOperator`) or ``"graph"`` (the full
            objective's gradient graph kept in memory, each product one backward pass through it:
            faster per product when the data fit; used anyway for batch norm in batch mode).

    Raises:
        ValueError: an unknown loss or bn_mode; a selection that matches nothing; eval mode with a norm
            layer that keeps no running statistics; a loss that does not depend on the selected
            parameters (a clear message, found on the first batch); empty data.
        TypeError: one-shot iterators.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode={bn_mode!r} is invalid: expected one of {list(BN_MODES)}")
    if hvp not in HVP_MODES:
        raise ValueError(f"hvp={hvp!r} is invalid: expected one of {list(HVP_MODES)}")
    if isinstance(loss, str) and loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is invalid: expected one of {list(LOSSES)}, a torch loss module or a callable")
    if isinstance(loss, nn.Module) and getattr(loss, "reduction", "mean") != "mean":
        raise ValueError(f"loss={loss}: a torch loss module needs reduction='mean' (the batch's mean loss)")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    template = prepare(model).to(device, dtype)
    original = dict(model.named_parameters())
    kept = {name for name, _ in [*template.named_parameters(), *template.named_buffers()]}
    values = {name: t.detach().to(device, dtype if t.is_floating_point() else t.dtype).clone()
              for name, t in [*original.items(), *model.named_buffers()] if name in kept}
    chunk = _data_form(data, chunk_size)
    problem = Problem(template, values, list(original), {}, (), data, loss, inputs, targets, bn_mode, device, dtype,
                      tensors_chunk=chunk, hvp=hvp, parameters=original)
    first_batch, count, batches = None, 0, 0
    for batch in problem.batches():
        first_batch = batch if first_batch is None else first_batch
        count += problem.batch_size(batch)
        batches += 1
    if first_batch is None:
        raise ValueError("data yield no batches")
    problem.num_examples, problem.num_batches = count, batches
    problem.norms = trace(template, lambda call: problem.run(values, first_batch, call), 1)[0]
    if bn_mode == "eval":
        problem.statistics = _running_statistics(model, problem.norms, device, dtype)
    info = {"bn_mode": bn_mode, "batch_norm": bool(problem.norms), "hvp": hvp if problem.separable else "graph",
            "dtype": str(dtype).replace("torch.", ""),
            "device": str(device), "num_examples": count, "num_batches": batches,
            "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)}
    objective = _selection(problem, params, info)
    _check_connected(objective, first_batch)
    return objective


def _running_statistics(model: nn.Module, norms: tuple[Norm, ...], device, dtype) -> dict[str, torch.Tensor]:
    stats = {}
    for norm in norms:
        layer = model.get_submodule(norm.name)
        if layer.running_mean is None:
            raise ValueError(f"bn_mode='eval' needs running statistics, and batch-norm layer {norm.name} keeps none "
                             "(track_running_stats=False): use bn_mode='batch'")
        stats[f"{norm.name}.bn_mean"] = layer.running_mean.detach().to(device, dtype).clone()
        stats[f"{norm.name}.bn_var"] = layer.running_var.detach().to(device, dtype).clone()
    return stats


# ----------------------------------------------------------------------------------- per-group spectra

QUANTITIES = ("lambda_max", "lambda_min", "trace", "index")
GROUPINGS = ("layers", "blocks", "parameters")


def parameter_groups(model: nn.Module, groups: str | Mapping[str, Selection] | Sequence[str] = "layers"
                     ) -> dict[str, Selection]:
    """Named parameter selections of ``model``.

    ``"layers"``: one group per module that holds parameters itself (a convolution, a norm layer, a
    linear layer: weight and bias together); ``"blocks"``: one per top-level child module (and one per
    parameter held by the model itself); ``"parameters"``: one per parameter tensor; a mapping
    name -> selection (as ``params`` of :func:`objective_from_module`); a list of module prefixes.

    Raises:
        ValueError: an unknown grouping name.
    """
    if isinstance(groups, Mapping):
        return dict(groups)
    if not isinstance(groups, str):
        return {prefix: prefix for prefix in groups}
    if groups not in GROUPINGS:
        raise ValueError(f"groups={groups!r} is invalid: expected one of {list(GROUPINGS)}, a mapping or a list of prefixes")
    if groups == "parameters":
        return {name: name for name, _ in model.named_parameters()}
    if groups == "layers":
        out: dict[str, Selection] = {}
        for name, module in model.named_modules():
            own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
            if own:
                out[name or "(model)"] = own
        return out
    out = {name: name for name, child in model.named_children() if next(child.parameters(), None) is not None}
    out.update({name: name for name, _ in model.named_parameters(recurse=False)})
    return out


def layer_spectra(
    model: nn.Module,
    loss: str | nn.Module | Callable[[Any, Any], torch.Tensor],
    data: Any,
    *,
    groups: str | Mapping[str, Selection] | Sequence[str] = "layers",
    quantities: Sequence[str] = QUANTITIES,
    trace_probes: int = 100,
    tol: float = 1e-8,
    max_steps: int = 1000,
    index_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    **objective_options: Any,
) -> pd.DataFrame:
    """Per-group Hessian quantities of a module: the Hessian of the loss in each group's parameters
    with every other parameter held fixed (a diagonal block of the full Hessian).

    One row per group of :func:`parameter_groups`: ``group``, ``num_params`` and the requested
    ``quantities``: ``lambda_max`` / ``lambda_min`` (thick-restart Lanczos, ``curvature.extreme_eigenvalues``
    with ``tol`` and ``max_steps``; ``*_residual`` and ``*_converged`` beside them), ``trace`` with
    ``trace_stderr`` (Hutchinson, ``trace_probes`` Rademacher probes), ``index`` (``index_count``,
    ``index_fraction``, ``index_method``, ``index_threshold``, ``index_at_least``: the exact count of
    ``curvature.index`` with ``index_options``), and ``hvps`` (Hessian-vector products used). The
    table's ``attrs`` record what the numbers describe (bn_mode, dtype, device, data size, loss).

    Cost: per group, one graph build per routine plus the HVPs counted in ``hvps``. ``objective_options``
    go to :func:`objective_from_module` (bn_mode, dtype, device, inputs, targets, chunk_size); the
    data and model are prepared once.

    Raises:
        ValueError: an unknown quantity or grouping, and whatever :func:`objective_from_module` raises.
    """
    from surfacekit import curvature

    unknown = sorted(set(quantities) - set(QUANTITIES))
    if unknown:
        raise ValueError(f"quantities={unknown} are unknown: expected some of {list(QUANTITIES)}")
    selections = parameter_groups(model, groups)
    base = objective_from_module(model, loss, data, **objective_options)
    rows = []
    for name, selection in selections.items():
        objective = base.select(selection)
        theta = objective.theta
        row: dict[str, Any] = {"group": name, "num_params": int(theta.numel())}
        hvps = 0
        for quantity, which in (("lambda_max", "largest"), ("lambda_min", "smallest")):
            if quantity in quantities:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", curvature.ConvergenceWarning)
                    res = curvature.extreme_eigenvalues(objective, theta, 1, which, tol=tol, max_steps=max_steps,
                                                        on_fail="warn", seed=seed)
                row.update({quantity: float(res.eigenvalues[0]), f"{quantity}_residual": float(res.residuals[0]),
                            f"{quantity}_converged": bool(res.converged)})
                hvps += res.num_hvps
        if "trace" in quantities:
            tr = curvature.hutchinson_trace(objective, theta, num_probes=trace_probes, seed=seed)
            row.update({"trace": tr.estimate, "trace_stderr": tr.stderr})
            hvps += tr.num_hvps
        if "index" in quantities:
            idx = curvature.index(objective, theta, **{"seed": seed, **dict(index_options or {})})
            row.update({"index_count": idx.count, "index_fraction": idx.fraction, "index_method": idx.method,
                        "index_threshold": idx.threshold, "index_at_least": idx.at_least})
            hvps += idx.num_hvps
        row["hvps"] = hvps
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs.update({k: v for k, v in base.info.items() if k != "num_params"})
    return table
