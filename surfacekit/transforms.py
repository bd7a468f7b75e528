"""Function-preserving maps between fully connected networks of different widths and depths.

Every map takes a spec and stacked parameters [K, ...] (and batch-norm statistics, if any) of the
layout of :mod:`surfacekit.models.mlp` and returns a :class:`Transformed` network that computes the
same function as the original on any input (to float64 rounding; tested below 1e-12 on train and
test data), in batch-norm batch mode and evaluation mode alike.

* :func:`split_unit`: hidden unit ``u`` becomes ``len(fractions)`` copies (incoming weights, bias
  and batch-norm parameters copied), copy j's outgoing weights are ``fractions[j]`` times the
  original's, ``sum(fractions) = 1``. Fukumizu and Amari (2000): a critical point of the data loss
  of the h-unit network maps to a critical point of the (h + c - 1)-unit network, usually a saddle
  with a degenerate Hessian. Its gradient is the narrow gradient mapped linearly (incoming parts
  times the copy's fraction, outgoing parts copied), so it is zero exactly when the narrow one is.
  With an L2 term the split point is *not* critical (the copy's outgoing gradient gains
  ``c (f_j - 1) v``); use :func:`add_zero_units` there.
* :func:`add_zero_units`: new units whose incoming weights, bias and outgoing weights are zero,
  for activations with phi(0) = 0 (tanh, relu, linear). The gradient on the new parameters is
  exactly zero with or without an L2 term (the unit's output is 0 and its outgoing weight is 0), so
  a critical point stays critical with the same gradient norm; its Hessian is block diagonal:
  the narrow Hessian and, per new unit, ``[[c I, A^T], [A, c I]]`` with ``A`` the correlation of the
  next layer's back-propagated error with the unit's input (c the L2 coefficient), whose
  eigenvalues ``c +- sigma_i(A)`` make the point a saddle whenever a singular value of A exceeds c.
* :func:`widen`: Net2WiderNet (Chen, Goodfellow and Shlens 2016): the mapping g sends new unit j to
  old unit g(j) (the identity for the old units, uniform at random for the new ones); incoming
  weights, bias, batch-norm scale, shift and statistics copied through g; outgoing weights divided
  by the replication count ``|{x : g(x) = g(j)}|``. Optional symmetry-breaking ``noise`` keeps the
  function: copy j of a group of c gets outgoing factor ``(1 + e_j) / c`` with the e_j of a group
  drawn N(0, noise^2) and centred to sum 0 (per outgoing weight and member).
* :func:`deepen`: Net2DeeperNet: an identity layer after a hidden layer, exact only for activations
  with phi(phi(x)) = phi(x) (relu, linear); refused for others (tanh changed logits by 2.08,
  REFERENCES.md), for batch norm (the identity would need data statistics) and residual networks.

Cost: copies of the parameters, no forward passes. The returned ``mapping`` and outgoing factors
are what an HDF5 file stores to say what was done (:meth:`Transformed.record`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from surfacekit.models import ACTIVATIONS, MLPSpec, param_name, param_shapes

IDEMPOTENT = ("relu", "linear")  # phi(phi(x)) = phi(x): an identity layer keeps the function
Params = Mapping[str, torch.Tensor]


@dataclass
class Transformed:
    """A transformed network: ``spec``, stacked ``params`` [K, ...], ``statistics`` [K, width] ({} without
    batch norm), and what was done: ``kind`` (split, zero_units, widen, deepen), ``layer`` (the hidden
    layer changed, or the one the identity layer follows), ``mapping`` [new width] (int64: new unit ->
    original unit, -1 for a zero unit; deepen: the identity), ``outgoing_scale`` [K, next width, new
    width] (the factor on each copied outgoing weight; deepen: ones)."""

    spec: MLPSpec
    params: dict[str, torch.Tensor]
    statistics: dict[str, torch.Tensor]
    kind: str
    layer: int
    mapping: torch.Tensor
    outgoing_scale: torch.Tensor

    def record(self) -> dict[str, np.ndarray]:
        """Arrays for an HDF5 group: kind, layer, widths (new), mapping, outgoing_scale."""
        return {"kind": np.array(self.kind), "layer": np.array(self.layer), "widths": np.array(self.spec.widths),
                "mapping": self.mapping.cpu().numpy(), "outgoing_scale": self.outgoing_scale.detach().cpu().numpy()}


def _check_hidden(spec: MLPSpec, layer: int, what: str) -> None:
    if spec.residual:
        raise ValueError(f"{what}: residual networks are not supported (changing a width changes which layers "
                         "have skip connections)")
    if spec.activation == "maxout":
        raise ValueError(f"{what}: maxout networks are not supported (the maps act on units, and a maxout unit has "
                         f"{spec.maxout_pieces} rows of weights)")
    if not 0 <= int(layer) < len(spec.widths):
        raise ValueError(f"{what}: layer={layer} is not a hidden layer; the network has hidden layers "
                         f"0..{len(spec.widths) - 1} (widths {list(spec.widths)})")


def _replicate(spec: MLPSpec, params: Params, statistics: Params | None, layer: int, mapping: torch.Tensor,
               scale: torch.Tensor, kind: str) -> Transformed:
    """Hidden layer ``layer`` rebuilt through ``mapping`` (-1: a zero unit), the next layer's outgoing
    weights multiplied by ``scale`` [K, next, new] (0 for zero units)."""
    out: dict[str, torch.Tensor] = {}
    source = mapping.clamp(min=0)
    zero = mapping < 0
    for name, value in params.items():
        out[name] = value.clone()
    for kind_name in ("weight", "bias", "bn_scale", "bn_shift"):
        name = param_name(layer, kind_name)
        if name not in params:
            continue
        value = params[name][:, source].clone()
        if kind_name == "bn_scale":
            value[:, zero] = 1.0
        else:
            value[:, zero] = 0.0
        out[name] = value
    nxt = param_name(layer + 1, "weight")
    out[nxt] = params[nxt][:, :, source] * scale.to(params[nxt].dtype)
    stats: dict[str, torch.Tensor] = {}
    for name, value in (statistics or {}).items():
        value = value.clone()
        if name in (param_name(layer, "bn_mean"), param_name(layer, "bn_var")):
            value = value[:, source].clone()
            value[:, zero] = 0.0 if name.endswith("bn_mean") else 1.0
        stats[name] = value
    widths = list(spec.widths)
    widths[layer] = int(mapping.numel())
    new_spec = dataclasses.replace(spec, widths=tuple(widths))
    return Transformed(new_spec, out, stats, kind, int(layer), mapping.clone(), scale)


def _population(params: Params) -> tuple[int, torch.dtype, torch.device]:
    first = next(iter(params.values()))
    return first.shape[0], first.dtype, first.device


def split_unit(spec: MLPSpec, params: Params, layer: int, unit: int, fractions: Sequence[float],
               statistics: Params | None = None) -> Transformed:
    """Split hidden unit ``unit`` of hidden layer ``layer`` into ``len(fractions)`` copies (Fukumizu and
    Amari 2000). The original keeps its place with outgoing factor ``fractions[0]``; the other copies
    are appended at the end of the layer. ``params`` [K, ...], ``statistics`` [K, width] or None.

    Raises:
        ValueError: not a hidden layer or unit, fewer than 2 fractions, fractions that do not sum
            to 1 (to 1e-12), or a residual or maxout network.
    """
    _check_hidden(spec, layer, "split_unit")
    width = spec.widths[layer]
    if not 0 <= int(unit) < width:
        raise ValueError(f"split_unit: unit={unit} is not in 0..{width - 1} (layer {layer} has {width} units)")
    frac = [float(f) for f in fractions]
    if len(frac) < 2 or abs(sum(frac) - 1.0) > 1e-12 or not all(np.isfinite(frac)):
        raise ValueError(f"split_unit: fractions={frac} must be at least two finite numbers summing to 1")
    k, dtype, device = _population(params)
    mapping = torch.cat([torch.arange(width), torch.full((len(frac) - 1,), int(unit))]).to(device)
    out_dim = spec.dims[layer + 2]
    scale = torch.ones(k, out_dim, mapping.numel(), dtype=dtype, device=device)
    scale[:, :, unit] = frac[0]
    scale[:, :, width:] = torch.tensor(frac[1:], dtype=dtype, device=device)
    return _replicate(spec, params, statistics, layer, mapping, scale, "split")


def add_zero_units(spec: MLPSpec, params: Params, layer: int, count: int = 1,
                   statistics: Params | None = None) -> Transformed:
    """Append ``count`` units to hidden layer ``layer`` whose incoming weights, bias and outgoing weights
    are zero (batch norm: scale 1, shift 0, statistics 0 and 1). Function preserving and
    critical-point preserving with any L2 term, for activations with phi(0) = 0.

    Raises:
        ValueError: phi(0) != 0 for the spec's activation (e.g. sigmoid), ``count`` < 1, not a
            hidden layer, or a residual or maxout network.
    """
    _check_hidden(spec, layer, "add_zero_units")
    phi0 = float(ACTIVATIONS[spec.activation](torch.zeros(1, dtype=torch.float64)))
    if phi0 != 0.0:
        raise ValueError(f"add_zero_units: model.activation={spec.activation} has phi(0) = {phi0:g}; a zero unit "
                         "would add the constant phi(0) to the next layer (use an activation with phi(0) = 0: "
                         "tanh, relu, linear)")
    if int(count) < 1:
        raise ValueError(f"add_zero_units: count={count} must be >= 1")
    k, dtype, device = _population(params)
    width = spec.widths[layer]
    mapping = torch.cat([torch.arange(width), torch.full((int(count),), -1)]).to(device)
    scale = torch.ones(k, spec.dims[layer + 2], mapping.numel(), dtype=dtype, device=device)
    scale[:, :, width:] = 0.0
    return _replicate(spec, params, statistics, layer, mapping, scale, "zero_units")


def widen(spec: MLPSpec, params: Params, layer: int, new_width: int, *, noise: float = 0.0, seed: int = 0,
          statistics: Params | None = None) -> Transformed:
    """Net2WiderNet (Chen, Goodfellow and Shlens 2016, Algorithm 1): hidden layer ``layer`` widened to
    ``new_width`` units by the random replication mapping g (drawn from ``seed``, shared by the
    population), outgoing weights divided by the replication counts; batch-norm parameters and
    statistics copied through g. ``noise`` > 0: outgoing factors ``(1 + e_j) / c`` with zero-sum
    N(0, noise^2) perturbations e within each group of copies (per member and outgoing weight), so
    the function is still preserved exactly while the copies differ.

    Raises:
        ValueError: ``new_width`` below the current width, negative or non-finite ``noise``, not a
            hidden layer, or a residual or maxout network.
    """
    _check_hidden(spec, layer, "widen")
    width = spec.widths[layer]
    if int(new_width) < width:
        raise ValueError(f"widen: new_width={new_width} is below the current width {width} of layer {layer}")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"widen: noise={noise} must be a finite number >= 0")
    k, dtype, device = _population(params)
    gen = torch.Generator().manual_seed(int(seed))
    extra = torch.randint(0, width, (int(new_width) - width,), generator=gen)
    mapping = torch.cat([torch.arange(width), extra])
    group_sizes = torch.bincount(mapping, minlength=width).to(dtype)
    counts = group_sizes[mapping]
    out_dim = spec.dims[layer + 2]
    factor = torch.ones(k, out_dim, mapping.numel(), dtype=dtype)
    if noise > 0:
        e = noise * torch.randn(k, out_dim, mapping.numel(), generator=gen, dtype=dtype)
        group_mean = torch.zeros(k, out_dim, width, dtype=dtype).index_add_(2, mapping, e) / group_sizes
        factor = factor + e - group_mean[:, :, mapping]
    scale = (factor / counts).to(device)
    return _replicate(spec, params, statistics, layer, mapping.to(device), scale, "widen")


def deepen(spec: MLPSpec, params: Params, after_layer: int, statistics: Params | None = None) -> Transformed:
    """Net2DeeperNet (Chen, Goodfellow and Shlens 2016, Section 2.3): insert an identity layer (weight
    I, bias 0) after hidden layer ``after_layer``; later layers are renumbered. Exact because
    phi(I phi(z) + 0) = phi(z) for relu and linear.

    Raises:
        ValueError: an activation with phi(phi(x)) != phi(x) (tanh, sigmoid: the function would
            change), batch norm, a residual network, or ``after_layer`` not a hidden layer.
    """
    _check_hidden(spec, after_layer, "deepen")
    if spec.activation not in IDEMPOTENT:
        raise ValueError(f"deepen: model.activation={spec.activation} has phi(phi(x)) != phi(x), so an identity layer "
                         f"changes the function; Net2DeeperNet needs one of {list(IDEMPOTENT)}")
    if spec.batch_norm:
        raise ValueError("deepen: batch-norm networks are not supported (the inserted layer's normalization would have "
                         "to be undone with data statistics)")
    k, dtype, device = _population(params)
    at = int(after_layer)
    width = spec.widths[at]
    out: dict[str, torch.Tensor] = {}
    for name, value in params.items():
        _, i, kind = name.split(".")
        i = int(i)
        out[param_name(i + 1 if i > at else i, kind)] = value.clone()
    out[param_name(at + 1, "weight")] = torch.eye(width, dtype=dtype, device=device).expand(k, width, width).clone()
    if spec.bias:
        out[param_name(at + 1, "bias")] = torch.zeros(k, width, dtype=dtype, device=device)
    widths = list(spec.widths)
    widths.insert(at + 1, width)
    new_spec = dataclasses.replace(spec, widths=tuple(widths))
    out = {name: out[name] for name in param_shapes(new_spec)}
    scale = torch.ones(k, width, width, dtype=dtype, device=device)
    return Transformed(new_spec, out, dict(statistics or {}), "deepen", at, torch.arange(width, device=device), scale)
