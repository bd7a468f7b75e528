"""Loss-landscape geometry: linear interpolation between parameter vectors and random-direction slices.

Everything here evaluates networks at many points of an affine family ``theta = origin + coords @ basis``
(coords [G, B], basis [B, P]). The G points are evaluated as a *population* of size G with the
batched ``forward`` (``population.evaluate``), a chunk of points at a time, never a Python loop over
points.

* Linear interpolation (Goodfellow, Vinyals & Saxe 2015): theta(a) = (1 - a) theta0 + a theta1,
  a in [-0.5, 1.5] (401 points by default), from an initialization to its solution or between two
  solutions. ``barrier_height`` (the default definition) is

      B = max_{a in [0, 1]} L(theta(a)) - max(L(theta0), L(theta1))        (>= 0),

  the rise of the path above its higher endpoint. ``barrier_height(..., reference="linear")`` gives
  max_{a in [0, 1]} [L(theta(a)) - ((1 - a) L(theta0) + a L(theta1))], the rise above the chord.
* Random-direction slices (Li et al. 2018): L(theta* + x d1) on a 1D grid and L(theta* + x d1 + y d2)
  on a 2D grid (51 points per axis on [-1, 1] by default). ``random_direction`` draws a seeded
  Gaussian direction and normalizes it:

  - ``filter``: each row of every weight matrix (one output neuron's incoming weights, a "filter")
    is rescaled to the norm of the same row of theta*;
  - ``layer``: each parameter tensor is rescaled to the norm of the same tensor of theta*;
  - ``none``: the raw N(0, I) direction.

  Bias and batch-norm directions are zero by default (``bias_bn="zero"``). With ``bias_bn="include"``
  biases are random too and, under ``filter``, join their neuron's row (the norm of [W_i, b_i] is
  matched); batch-norm scale/shift vectors, one number per neuron, are matched tensor-wise.

Shapes: theta [P] float64 flat vectors in the canonical order of ``models.param_shapes``.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch

from surfacekit.models import MLPSpec, param_shapes
from surfacekit.population import evaluate, unflatten

NORMALIZATIONS = ("filter", "layer", "none")
BIAS_BN = ("zero", "include")
# Bytes of parameters and activations per chunk of grid points. On CPU small chunks stay in cache
# (on digits, P = 2410, chunks of 8-32 points ran a 51x51 slice about 1.5-2x faster than 256);
# on a GPU larger chunks keep the device busy.
MEMORY_BUDGET_BYTES = {"cpu": 2**25, "cuda": 2**30}


# ----------------------------------------------------------------------------- evaluation

def points_per_batch(spec: MLPSpec, num_examples: int, chunk_size: int | None = None,
                     budget_bytes: int | None = None, device: str | torch.device = "cpu") -> int:
    """How many parameter vectors to evaluate at once so parameters and activations fit ``budget_bytes``
    (default ``MEMORY_BUDGET_BYTES`` of the device type)."""
    from surfacekit.models import num_params

    if budget_bytes is None:
        budget_bytes = MEMORY_BUDGET_BYTES.get(torch.device(device).type, MEMORY_BUDGET_BYTES["cpu"])
    n = num_examples if (chunk_size is None or spec.batch_norm) else min(num_examples, int(chunk_size))
    per_point = 8 * (2 * num_params(spec) + 3 * n * sum(spec.dims[1:]))
    return max(1, int(budget_bytes // per_point))


@torch.no_grad()
def evaluate_affine(
    spec: MLPSpec, origin: torch.Tensor | None, basis: torch.Tensor, coords: torch.Tensor,
    x: torch.Tensor, y: torch.Tensor, loss: str, chunk_size: int | None = None, batch_points: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and error [G] at the points ``origin + coords @ basis``.

    origin [P] or None (zero), basis [B, P], coords [G, B]. Points are formed and evaluated as a
    population ``batch_points`` at a time (default: ``points_per_batch``); data in ``chunk_size`` chunks.
    """
    basis = basis.to(x.dtype)
    coords = coords.to(x.dtype)
    g = coords.shape[0]
    size = batch_points or points_per_batch(spec, x.shape[0], chunk_size, device=x.device)
    losses, errors = [], []
    for start in range(0, g, size):
        pts = coords[start : start + size] @ basis
        if origin is not None:
            pts = pts + origin.to(x.dtype)
        l, e = evaluate(spec, unflatten(pts, spec), x, y, loss, chunk_size)
        losses.append(l)
        errors.append(e)
    return torch.cat(losses), torch.cat(errors)


@torch.no_grad()
def evaluate_points(spec: MLPSpec, thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss: str,
                    chunk_size: int | None = None, batch_points: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and error [G] of the networks ``thetas`` [G, P], a chunk of points at a time."""
    size = batch_points or points_per_batch(spec, x.shape[0], chunk_size, device=x.device)
    out = [evaluate(spec, unflatten(thetas[s : s + size], spec), x, y, loss, chunk_size) for s in range(0, len(thetas), size)]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def _splits(data, splits: Iterable[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for split in splits:
        if split not in ("train", "test"):
            raise ValueError(f"split {split!r} is unknown; choose train or test")
        out[split] = (getattr(data, f"x_{split}"), getattr(data, f"y_{split}"))
    return out


# ---------------------------------------------------------------------------- interpolation

def interpolation_alphas(num: int = 401, lo: float = -0.5, hi: float = 1.5) -> torch.Tensor:
    """``num`` equally spaced alphas on [lo, hi], float64; grid points within 1e-9 steps of 0 and 1 are
    snapped to exactly 0 and 1 (the default grid holds both), so the endpoints are theta0 and theta1 bit for bit."""
    if num < 2 or not hi > lo:
        raise ValueError(f"interpolation grid needs num >= 2 and hi > lo, got num={num}, lo={lo}, hi={hi}")
    alphas = torch.linspace(lo, hi, int(num), dtype=torch.float64)
    tol = 1e-9 * (hi - lo) / (num - 1)
    for end in (0.0, 1.0):
        alphas[(alphas - end).abs() < tol] = end
    return alphas


def barrier_height(alphas: torch.Tensor, losses: torch.Tensor, loss0: float, loss1: float,
                   reference: str = "max") -> float:
    """Height of the loss barrier on a ∈ [0, 1] along an interpolation path (see the module docstring).

    reference ``max``: max_{a in [0,1]} L(a) - max(L0, L1). ``linear``: max_{a in [0,1]} L(a) - ((1-a) L0 + a L1).
    Both are >= 0: the endpoints themselves belong to [0, 1]. Non-finite losses give inf.
    """
    alphas, losses = torch.as_tensor(alphas, dtype=torch.float64), torch.as_tensor(losses, dtype=torch.float64)
    inside = (alphas >= 0) & (alphas <= 1)
    a, l = alphas[inside], losses[inside]
    if reference == "max":
        rise = l - max(loss0, loss1)
    elif reference == "linear":
        rise = l - ((1 - a) * loss0 + a * loss1)
    else:
        raise ValueError(f"reference={reference!r}; choose max or linear")
    if not torch.isfinite(rise).all():
        return math.inf
    return max(0.0, float(rise.max()) if len(rise) else 0.0)


def is_monotone(alphas: torch.Tensor, losses: torch.Tensor, rtol: float = 1e-9) -> bool:
    """Whether L(a) is non-increasing on a ∈ [0, 1] (init -> solution, up to ``rtol`` * max|L|)."""
    inside = (alphas >= 0) & (alphas <= 1)
    l = losses[inside]
    return bool((l.diff() <= rtol * l.abs().max()).all())


def interpolate(
    spec: MLPSpec, theta0: torch.Tensor, theta1: torch.Tensor, data, loss: str,
    alphas: torch.Tensor | None = None, splits: Sequence[str] = ("train", "test"),
    chunk_size: int | None = None, batch_points: int | None = None,
) -> dict[str, torch.Tensor]:
    """Loss and error along theta(a) = (1 - a) theta0 + a theta1 for every a of ``alphas`` [A].

    Returns ``alpha`` [A], ``{split}_loss`` / ``{split}_error`` [A], the endpoint values
    ``{split}_loss0`` / ``{split}_loss1`` (evaluated at theta0, theta1 themselves) and the barriers
    ``{split}_barrier`` (reference max) and ``{split}_barrier_linear`` (reference chord), as 0-d tensors.
    """
    alphas = interpolation_alphas() if alphas is None else torch.as_tensor(alphas, dtype=torch.float64)
    basis = torch.stack([theta0, theta1])
    coords = torch.stack([1 - alphas, alphas], dim=1)
    out: dict[str, torch.Tensor] = {"alpha": alphas}
    for split, (x, y) in _splits(data, splits).items():
        l, e = evaluate_affine(spec, None, basis, coords, x, y, loss, chunk_size, batch_points)
        ends, _ = evaluate_points(spec, basis.to(x.dtype), x, y, loss, chunk_size)
        l0, l1 = float(ends[0]), float(ends[1])
        out[f"{split}_loss"], out[f"{split}_error"] = l, e
        out[f"{split}_loss0"], out[f"{split}_loss1"] = ends[0], ends[1]
        out[f"{split}_barrier"] = torch.tensor(barrier_height(alphas, l, l0, l1, "max"), dtype=torch.float64)
        out[f"{split}_barrier_linear"] = torch.tensor(barrier_height(alphas, l, l0, l1, "linear"), dtype=torch.float64)
    return out


# ------------------------------------------------------------------------------- directions

def _layer_names(spec: MLPSpec, i: int) -> tuple[str, str | None]:
    return f"layers.{i}.weight", (f"layers.{i}.bias" if spec.bias else None)


def normalize_direction(spec: MLPSpec, direction: torch.Tensor, theta: torch.Tensor,
                        normalization: str = "filter", bias_bn: str = "zero", eps: float = 1e-300) -> torch.Tensor:
    """Rescale a raw direction [P] against theta [P] (``filter``, ``layer`` or ``none``; see the module docstring)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r}; choose one of {list(NORMALIZATIONS)}")
    if bias_bn not in BIAS_BN:
        raise ValueError(f"bias_bn={bias_bn!r}; choose one of {list(BIAS_BN)}")
    d = {k: v[0].clone() for k, v in unflatten(direction, spec).items()}
    t = {k: v[0] for k, v in unflatten(theta.to(direction.dtype), spec).items()}
    include = bias_bn == "include"
    for name in d:
        if not name.endswith("weight") and not include:
            d[name].zero_()
    if normalization == "layer":
        for name in d:
            if include or name.endswith("weight"):
                d[name] *= t[name].norm() / d[name].norm().clamp_min(eps)
    elif normalization == "filter":
        for i in range(spec.num_layers):
            wname, bname = _layer_names(spec, i)
            rows_d, rows_t = d[wname], t[wname]
            if include and bname is not None:
                rows_d = torch.cat([rows_d, d[bname].unsqueeze(1)], dim=1)
                rows_t = torch.cat([rows_t, t[bname].unsqueeze(1)], dim=1)
            scale = rows_t.norm(dim=1) / rows_d.norm(dim=1).clamp_min(eps)
            d[wname] *= scale.unsqueeze(1)
            if include and bname is not None:
                d[bname] *= scale
        if include:  # batch-norm vectors: one number per neuron, matched tensor-wise
            for name in d:
                if name.endswith(("bn_scale", "bn_shift")):
                    d[name] *= t[name].norm() / d[name].norm().clamp_min(eps)
    return torch.cat([d[name].reshape(-1) for name in param_shapes(spec)])


def random_direction(spec: MLPSpec, theta: torch.Tensor, seed: int | None = None, generator: torch.Generator | None = None,
                     normalization: str = "filter", bias_bn: str = "zero") -> torch.Tensor:
    """A seeded Gaussian direction [P] (float64), normalized against theta [P]."""
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    raw = torch.randn(theta.numel(), generator=generator, dtype=torch.float64)
    return normalize_direction(spec, raw, theta.detach().cpu().to(torch.float64), normalization, bias_bn).to(theta.device)


def random_directions(spec: MLPSpec, theta: torch.Tensor, count: int, seed: int = 0, normalization: str = "filter",
                      bias_bn: str = "zero", orthogonalize: bool = False) -> torch.Tensor:
    """``count`` directions [count, P] from one seeded generator.

    ``orthogonalize`` makes the second direction orthogonal to the first (Gram-Schmidt on the raw
    directions' normalized versions, then renormalized); off by default as in Li et al.
    """
    gen = torch.Generator().manual_seed(int(seed))
    dirs = [random_direction(spec, theta, generator=gen, normalization=normalization, bias_bn=bias_bn) for _ in range(count)]
    if orthogonalize:
        for i in range(1, count):
            v = dirs[i]
            for u in dirs[:i]:
                v = v - (v @ u) / (u @ u) * u
            dirs[i] = normalize_direction(spec, v, theta, normalization, bias_bn)
    return torch.stack(dirs)


# ----------------------------------------------------------------------------------- slices

def slice_grid(num: int = 51, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """``num`` equally spaced coordinates on [lo, hi], float64; a point within 1e-9 steps of 0 is snapped
    to exactly 0 (an odd ``num`` on a symmetric range holds the solution itself)."""
    if num < 1 or not hi >= lo:
        raise ValueError(f"slice grid needs num >= 1 and hi >= lo, got num={num}, lo={lo}, hi={hi}")
    xs = torch.linspace(lo, hi, int(num), dtype=torch.float64)
    xs[xs.abs() < 1e-9 * (hi - lo) / max(num - 1, 1)] = 0.0
    return xs


def slice_1d(spec: MLPSpec, theta: torch.Tensor, direction: torch.Tensor, data, loss: str,
             xs: torch.Tensor | None = None, splits: Sequence[str] = ("train", "test"),
             chunk_size: int | None = None, batch_points: int | None = None) -> dict[str, torch.Tensor]:
    """L(theta + x d) for x in ``xs`` [X]: ``x`` and ``{split}_loss`` / ``{split}_error`` [X]."""
    xs = slice_grid() if xs is None else torch.as_tensor(xs, dtype=torch.float64)
    out = {"x": xs}
    for split, (xx, yy) in _splits(data, splits).items():
        l, e = evaluate_affine(spec, theta, direction.unsqueeze(0), xs.unsqueeze(1), xx, yy, loss, chunk_size, batch_points)
        out[f"{split}_loss"], out[f"{split}_error"] = l, e
    return out


def slice_2d(spec: MLPSpec, theta: torch.Tensor, directions: torch.Tensor, data, loss: str,
             xs: torch.Tensor | None = None, ys: torch.Tensor | None = None, splits: Sequence[str] = ("train", "test"),
             chunk_size: int | None = None, batch_points: int | None = None) -> dict[str, torch.Tensor]:
    """L(theta + x d1 + y d2) on the grid ``xs`` [X] x ``ys`` [Y]: ``x``, ``y`` and ``{split}_loss`` / ``_error`` [X, Y]."""
    xs = slice_grid() if xs is None else torch.as_tensor(xs, dtype=torch.float64)
    ys = xs if ys is None else torch.as_tensor(ys, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    coords = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    out = {"x": xs, "y": ys}
    for split, (xx, yy) in _splits(data, splits).items():
        l, e = evaluate_affine(spec, theta, directions[:2], coords, xx, yy, loss, chunk_size, batch_points)
        out[f"{split}_loss"], out[f"{split}_error"] = l.reshape(len(xs), len(ys)), e.reshape(len(xs), len(ys))
    return out


def as_numpy(result: Mapping[str, torch.Tensor]) -> dict:
    """A result dict with numpy arrays (for ``store.add_groups``)."""
    return {k: v.detach().cpu().numpy() for k, v in result.items()}
