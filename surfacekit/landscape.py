"""Loss-landscape geometry: linear interpolation between parameter vectors and random-direction slices.

Everything here evaluates networks at many points of an affine family ``theta = origin + coords @ basis``
(coords [G, B], basis [B, P]). The G points are evaluated as a *population* of size G with the
batched ``forward`` (``population.evaluate``), a chunk of points at a time, never a Python loop over
points.

Networks of a population spec (``MLPSpec``, ``ModuleSpec``) are evaluated in batches of points;
any other ``loss_fn(theta)`` (a user's model through ``surfacekit.objective_from_module``, whose
parameter shapes the direction helpers also take) point by point with :func:`evaluate_loss_fn`.

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

  A direction drawn without a seed gets a fresh one (``fresh_seed``), returned with
  ``return_seed=True`` so it can be stored; explicit seeds are reproducible. ``orthogonalize=True``
  orthogonalizes block by block *before* normalizing, so the plane's two directions are both
  normalized and exactly orthogonal (``random_directions``).

Long grids report progress through a ``progress(n)`` callback (points evaluated so far, in batches).

Shapes: theta [P] float64 flat vectors in the canonical order of ``models.param_shapes``.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from surfacekit.models import Spec, param_shapes
from surfacekit.population import dataset_statistics, evaluate, unflatten

NORMALIZATIONS = ("filter", "layer", "none")
BIAS_BN = ("zero", "include")
# Bytes of parameters and activations per chunk of grid points. On CPU small chunks stay in cache
# (on digits, P = 2410, chunks of 8-32 points ran a 51x51 slice about 1.5-2x faster than 256);
# on a GPU larger chunks keep the device busy.
MEMORY_BUDGET_BYTES = {"cpu": 2**25, "cuda": 2**30}
# A progress callback: called with the number of grid points just evaluated (e.g. a tqdm bar's ``update``).
Progress = Callable[[int], object]


# ----------------------------------------------------------------------------- evaluation

def points_per_batch(spec: Spec, num_examples: int, chunk_size: int | None = None,
                     budget_bytes: int | None = None, device: str | torch.device = "cpu") -> int:
    """How many parameter vectors to evaluate at once so parameters and activations fit ``budget_bytes``
    (default ``MEMORY_BUDGET_BYTES`` of the device type)."""
    from surfacekit.models import activation_size, num_params

    if budget_bytes is None:
        budget_bytes = MEMORY_BUDGET_BYTES.get(torch.device(device).type, MEMORY_BUDGET_BYTES["cpu"])
    n = num_examples if chunk_size is None else min(num_examples, int(chunk_size))
    per_point = 8 * (2 * num_params(spec) + 3 * n * activation_size(spec))
    return max(1, int(budget_bytes // per_point))


@torch.no_grad()
def evaluate_affine(
    spec: Spec, origin: torch.Tensor | None, basis: torch.Tensor, coords: torch.Tensor,
    x: torch.Tensor, y: torch.Tensor, loss: str, chunk_size: int | None = None, batch_points: int | None = None,
    progress: Progress | None = None, statistics_x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and error [G] at the points ``origin + coords @ basis``.

    Batch norm: every point is evaluated with the full-data statistics of ``statistics_x`` (pass the
    training inputs, so test losses use the training set's statistics at that point, as evaluation
    mode does) or, when None, of ``x`` itself.

    origin [P] or None (zero), basis [B, P], coords [G, B]. Points are formed and evaluated as a
    population ``batch_points`` at a time (default: ``points_per_batch``); data in ``chunk_size`` chunks.
    ``progress(n)``, when given, is called after every batch with the number of points it held (so
    ``progress=tqdm_bar.update`` counts G points). Cost: G forward passes over the data.
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
        l, e = _evaluate(spec, unflatten(pts, spec), x, y, loss, chunk_size, statistics_x)
        losses.append(l)
        errors.append(e)
        if progress is not None:
            progress(len(pts))
    return torch.cat(losses), torch.cat(errors)


@torch.no_grad()
def evaluate_loss_fn(loss_fn: Callable[[torch.Tensor], torch.Tensor], origin: torch.Tensor | None,
                     basis: torch.Tensor, coords: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
    """``loss_fn`` [G] at the points ``origin + coords @ basis``, one call per point: interpolation and
    slices of any ``loss_fn(theta)``, e.g. a user's model through ``surfacekit.objective_from_module``.

    Interpolation from theta0 to theta1: ``origin=theta0``, ``basis=(theta1 - theta0)[None]``,
    ``coords=alphas[:, None]`` (then :func:`barrier_height`); a filter-normalized plane:
    ``basis=random_directions(objective, theta, 2, seed=...)`` (the objective gives its parameter
    shapes) and ``coords`` the grid's (x, y) pairs. origin [P] or None (zero), basis [B, P],
    coords [G, B]. Cost: G calls of ``loss_fn`` (for a module objective, G passes over its data);
    ``progress(1)`` after each.
    """
    basis = basis.to(torch.float64)
    values = []
    for c in coords.to(basis.dtype):
        point = c @ basis if origin is None else origin.to(basis.dtype) + c @ basis
        values.append(loss_fn(point).detach().reshape(()))
        if progress is not None:
            progress(1)
    return torch.stack(values)


def _evaluate(spec: Spec, params, x, y, loss, chunk_size, statistics_x):
    statistics = None
    if spec.batch_norm and statistics_x is not None:
        statistics = dataset_statistics(spec, params, statistics_x.to(x.dtype), chunk_size)
    return evaluate(spec, params, x, y, loss, chunk_size, statistics)


@torch.no_grad()
def evaluate_points(spec: Spec, thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss: str,
                    chunk_size: int | None = None, batch_points: int | None = None,
                    statistics_x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and error [G] of the networks ``thetas`` [G, P], a chunk of points at a time (batch norm
    as in :func:`evaluate_affine`)."""
    size = batch_points or points_per_batch(spec, x.shape[0], chunk_size, device=x.device)
    out = [_evaluate(spec, unflatten(thetas[s : s + size], spec), x, y, loss, chunk_size, statistics_x)
           for s in range(0, len(thetas), size)]
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

    Raises:
        ValueError: no alpha lies in [0, 1], or an unknown ``reference``.
    """
    alphas, losses = torch.as_tensor(alphas, dtype=torch.float64), torch.as_tensor(losses, dtype=torch.float64)
    a, l = _inside(alphas, losses)
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
    """Whether L(a) is non-increasing on a ∈ [0, 1] (init -> solution, up to ``rtol`` * max|L|).

    Raises:
        ValueError: no alpha lies in [0, 1].
    """
    _, l = _inside(torch.as_tensor(alphas, dtype=torch.float64), torch.as_tensor(losses))
    return bool((l.diff() <= rtol * l.abs().max()).all())


def _inside(alphas: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The alphas [n] in [0, 1] and their losses; ValueError when there are none."""
    inside = (alphas >= 0) & (alphas <= 1)
    if not bool(inside.any()):
        raise ValueError(f"no interpolation point in [0, 1] (alphas {alphas.min():.3g} .. {alphas.max():.3g}, "
                         f"{len(alphas)} points): the barrier and monotonicity are measured there; use a finer grid")
    return alphas[inside], losses[inside]


def interpolate(
    spec: Spec, theta0: torch.Tensor, theta1: torch.Tensor, data, loss: str,
    alphas: torch.Tensor | None = None, splits: Sequence[str] = ("train", "test"),
    chunk_size: int | None = None, batch_points: int | None = None, progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """Loss and error along theta(a) = (1 - a) theta0 + a theta1 for every a of ``alphas`` [A].

    ``progress`` counts A points per split (see :func:`evaluate_affine`).

    Returns ``alpha`` [A], ``{split}_loss`` / ``{split}_error`` [A], the endpoint values
    ``{split}_loss0`` / ``{split}_loss1`` (evaluated at theta0, theta1 themselves) and the barriers
    ``{split}_barrier`` (reference max) and ``{split}_barrier_linear`` (reference chord), as 0-d tensors.
    """
    alphas = interpolation_alphas() if alphas is None else torch.as_tensor(alphas, dtype=torch.float64)
    basis = torch.stack([theta0, theta1])
    coords = torch.stack([1 - alphas, alphas], dim=1)
    out: dict[str, torch.Tensor] = {"alpha": alphas}
    for split, (x, y) in _splits(data, splits).items():
        l, e = evaluate_affine(spec, None, basis, coords, x, y, loss, chunk_size, batch_points, progress, data.x_train)
        ends, _ = evaluate_points(spec, basis.to(x.dtype), x, y, loss, chunk_size, statistics_x=data.x_train)
        l0, l1 = float(ends[0]), float(ends[1])
        out[f"{split}_loss"], out[f"{split}_error"] = l, e
        out[f"{split}_loss0"], out[f"{split}_loss1"] = ends[0], ends[1]
        out[f"{split}_barrier"] = torch.tensor(barrier_height(alphas, l, l0, l1, "max"), dtype=torch.float64)
        out[f"{split}_barrier_linear"] = torch.tensor(barrier_height(alphas, l, l0, l1, "linear"), dtype=torch.float64)
    return out


# ------------------------------------------------------------------------------- directions

def fresh_seed() -> int:
    """A seed drawn from OS entropy (``numpy.random.SeedSequence``), in [0, 2**63) so it fits int64."""
    return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def normalization_blocks(spec: Spec, normalization: str = "filter", bias_bn: str = "zero") -> tuple[torch.Tensor, int]:
    """The blocks that ``normalization`` rescales: (block id [P] int64, number of blocks).

    ``filter``: one block per row of every weight matrix and per output channel (filter) of every
    convolution kernel [out, in, ...] (joined by its bias entry when ``bias_bn="include"``), one per
    batch-norm tensor (a module's 1-D ``weight`` of a norm layer counts as one); ``layer``: one block per parameter tensor;
    ``none``: a single block. Entries whose direction is zero (biases and batch-norm vectors under
    ``bias_bn="zero"``) get id -1.

    Raises:
        ValueError: an unknown ``normalization`` or ``bias_bn``.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r}; choose one of {list(NORMALIZATIONS)}")
    if bias_bn not in BIAS_BN:
        raise ValueError(f"bias_bn={bias_bn!r}; choose one of {list(BIAS_BN)}")
    ids, count, row_start = [], 0, {}
    for name, shape in param_shapes(spec).items():
        size = math.prod(shape)
        layer = name.rsplit(".", 1)[0]
        weight = name.endswith("weight") and len(shape) >= 2  # a matrix or convolution kernel, not a norm's scale
        if not weight and bias_bn == "zero":
            ids.append(torch.full((size,), -1, dtype=torch.long))
        elif normalization == "none":
            ids.append(torch.zeros(size, dtype=torch.long))
            count = 1
        elif normalization == "filter" and weight:
            row_start[layer] = count
            ids.append(count + torch.arange(shape[0]).repeat_interleave(math.prod(shape[1:])))
            count += shape[0]
        elif normalization == "filter" and name.endswith("bias") and layer in row_start:
            ids.append(row_start[layer] + torch.arange(size))
        else:
            ids.append(torch.full((size,), count, dtype=torch.long))
            count += 1
    return torch.cat(ids), count


def _block_sums(values: torch.Tensor, ids: torch.Tensor, count: int) -> torch.Tensor:
    """Sums of ``values`` [..., P] over each block: [..., count] (entries with id -1 are left out)."""
    keep = ids >= 0
    out = values.new_zeros(*values.shape[:-1], count)
    return out.index_add_(-1, ids[keep], values[..., keep])


def normalize_direction(spec: Spec, direction: torch.Tensor, theta: torch.Tensor,
                        normalization: str = "filter", bias_bn: str = "zero", eps: float = 1e-300) -> torch.Tensor:
    """Rescale a raw direction [P] against theta [P] (``filter``, ``layer`` or ``none``; see the module docstring).

    Every block of :func:`normalization_blocks` is multiplied by ||theta_block|| / ||d_block|| (``none``:
    by 1); entries outside every block are zeroed. A zero block of theta gives a zero block.

    Raises:
        ValueError: an unknown ``normalization`` or ``bias_bn``.
    """
    ids, count = normalization_blocks(spec, normalization, bias_bn)
    d = torch.where(ids >= 0, direction, torch.zeros((), dtype=direction.dtype))
    if normalization == "none":
        return d
    t = theta.to(direction.dtype)
    scale = _block_sums(t * t, ids, count).sqrt() / _block_sums(d * d, ids, count).sqrt().clamp_min(eps)
    return d * scale[ids.clamp_min(0)]


def orthogonalize_blocks(directions: torch.Tensor, ids: torch.Tensor, count: int) -> torch.Tensor:
    """Gram-Schmidt of ``directions`` [C, P] within every block (twice, for float64 accuracy).

    Direction i is made orthogonal to directions 0..i-1 inside each block, so any later positive
    rescaling of whole blocks (filter or layer normalization) keeps the directions exactly orthogonal.
    """
    out = directions.clone()
    for i in range(1, len(out)):
        for _ in range(2):
            for j in range(i):
                dot = _block_sums(out[i] * out[j], ids, count)
                norm2 = _block_sums(out[j] * out[j], ids, count)
                coef = torch.where(norm2 > 0, dot / norm2.clamp_min(torch.finfo(out.dtype).tiny), torch.zeros_like(dot))
                out[i] = out[i] - torch.where(ids >= 0, coef[ids.clamp_min(0)], torch.zeros_like(out[i])) * out[j]
    return out


def random_direction(spec: Spec, theta: torch.Tensor, seed: int | None = None, generator: torch.Generator | None = None,
                     normalization: str = "filter", bias_bn: str = "zero", return_seed: bool = False):
    """A Gaussian direction [P] (float64), normalized against theta [P].

    ``seed=None`` (and no ``generator``) draws a fresh seed (:func:`fresh_seed`), so two default calls
    give independent directions; ``return_seed=True`` returns ``(direction, seed)`` to record it
    (seed None when a ``generator`` was passed). An explicit seed is reproducible.

    Raises:
        ValueError: an unknown ``normalization`` or ``bias_bn``; both ``seed`` and ``generator``.
    """
    if generator is not None and seed is not None:
        raise ValueError("pass a seed or a generator, not both (the generator would silently win)")
    if generator is None:
        seed = fresh_seed() if seed is None else int(seed)
        generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(theta.numel(), generator=generator, dtype=torch.float64)
    d = normalize_direction(spec, raw, theta.detach().cpu().to(torch.float64), normalization, bias_bn).to(theta.device)
    return (d, seed) if return_seed else d


def random_directions(spec: Spec, theta: torch.Tensor, count: int, seed: int | None = None, normalization: str = "filter",
                      bias_bn: str = "zero", orthogonalize: bool = False, return_seed: bool = False):
    """``count`` directions [count, P] (float64) from one generator, each normalized against theta [P].

    Directions are drawn in order from one generator, so the first of ``count`` equals the only one of
    ``count=1`` with the same seed. ``seed=None`` draws a fresh seed; ``return_seed=True`` returns
    ``(directions, seed)``.

    ``orthogonalize=True`` (off by default, as in Li et al. 2018) makes the normalized directions
    exactly orthogonal in the Euclidean inner product of parameter space, the one the plane
    theta + x d1 + y d2 is drawn in: the raw directions are Gram-Schmidt orthogonalized block by
    block (the blocks of :func:`normalization_blocks`: filters, tensors, or the whole vector), *then*
    normalized. Normalization multiplies each block by a positive number, which keeps block-wise
    orthogonality, so the result is both normalized and orthogonal (|cos| ~ 1e-16). Orthogonalizing
    after normalizing and normalizing again would undo it.

    Raises:
        ValueError: an unknown ``normalization`` or ``bias_bn``; ``orthogonalize`` with a block of fewer
            than ``count`` entries (e.g. filter normalization of a one-input layer), where no
            orthogonal normalized directions of this form exist.
    """
    seed = fresh_seed() if seed is None else int(seed)
    gen = torch.Generator().manual_seed(seed)
    ids, blocks = normalization_blocks(spec, normalization, bias_bn)
    raw = torch.randn(count, theta.numel(), generator=gen, dtype=torch.float64)
    if orthogonalize and count > 1:
        sizes = torch.bincount(ids[ids >= 0], minlength=blocks)
        if len(sizes) and int(sizes.min()) < count:
            small = int(torch.nonzero(ids == int(sizes.argmin()))[0])
            name = next(n for n, stop in _name_stops(spec) if small < stop)
            raise ValueError(f"orthogonalize=True: {name} has {normalization} blocks of {int(sizes.min())} entries, fewer than "
                             f"{count} directions; use normalization='layer' or 'none', bias_bn='include', or orthogonalize=False")
        raw = orthogonalize_blocks(raw, ids, blocks)
    t = theta.detach().cpu().to(torch.float64)
    dirs = torch.stack([normalize_direction(spec, r, t, normalization, bias_bn) for r in raw]).to(theta.device)
    return (dirs, seed) if return_seed else dirs


def _name_stops(spec: Spec) -> list[tuple[str, int]]:
    """(parameter name, end offset in the flat vector), in the canonical order."""
    stops, end = [], 0
    for name, shape in param_shapes(spec).items():
        end += math.prod(shape)
        stops.append((name, end))
    return stops


# ----------------------------------------------------------------------------------- slices

def slice_grid(num: int = 51, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """``num`` equally spaced coordinates on [lo, hi], float64; a point within 1e-9 steps of 0 is snapped
    to exactly 0 (an odd ``num`` on a symmetric range holds the solution itself)."""
    if num < 1 or not hi >= lo:
        raise ValueError(f"slice grid needs num >= 1 and hi >= lo, got num={num}, lo={lo}, hi={hi}")
    xs = torch.linspace(lo, hi, int(num), dtype=torch.float64)
    xs[xs.abs() < 1e-9 * (hi - lo) / max(num - 1, 1)] = 0.0
    return xs


def slice_1d(spec: Spec, theta: torch.Tensor, direction: torch.Tensor, data, loss: str,
             xs: torch.Tensor | None = None, splits: Sequence[str] = ("train", "test"),
             chunk_size: int | None = None, batch_points: int | None = None,
             progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """L(theta + x d) for x in ``xs`` [X]: ``x`` and ``{split}_loss`` / ``{split}_error`` [X].

    ``progress`` counts X points per split (see :func:`evaluate_affine`)."""
    xs = slice_grid() if xs is None else torch.as_tensor(xs, dtype=torch.float64)
    out = {"x": xs}
    for split, (xx, yy) in _splits(data, splits).items():
        l, e = evaluate_affine(spec, theta, direction.unsqueeze(0), xs.unsqueeze(1), xx, yy, loss, chunk_size, batch_points,
                               progress, data.x_train)
        out[f"{split}_loss"], out[f"{split}_error"] = l, e
    return out


def slice_2d(spec: Spec, theta: torch.Tensor, directions: torch.Tensor, data, loss: str,
             xs: torch.Tensor | None = None, ys: torch.Tensor | None = None, splits: Sequence[str] = ("train", "test"),
             chunk_size: int | None = None, batch_points: int | None = None,
             progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """L(theta + x d1 + y d2) on the grid ``xs`` [X] x ``ys`` [Y]: ``x``, ``y`` and ``{split}_loss`` / ``_error`` [X, Y].

    ``progress`` counts X * Y points per split (see :func:`evaluate_affine`); a 51 x 51 slice is 2601
    network evaluations over the data per split, seconds to a minute on a CPU."""
    xs = slice_grid() if xs is None else torch.as_tensor(xs, dtype=torch.float64)
    ys = xs if ys is None else torch.as_tensor(ys, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    coords = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    out = {"x": xs, "y": ys}
    for split, (xx, yy) in _splits(data, splits).items():
        l, e = evaluate_affine(spec, theta, directions[:2], coords, xx, yy, loss, chunk_size, batch_points, progress,
                               data.x_train)
        out[f"{split}_loss"], out[f"{split}_error"] = l.reshape(len(xs), len(ys)), e.reshape(len(xs), len(ys))
    return out
