"""Spherical p-spin glass: energy, Riemannian derivatives, batched optimizers, theory thresholds.

Model (Auffinger, Ben Arous, Cerny; Choromanska et al. 2015):

    H(w) = N^{-(p-1)/2} sum_{i1..ip} X_{i1..ip} w_{i1} ... w_{ip},   ||w||^2 = N,

with X i.i.d. N(0, 1). H only sees the symmetric part of X, so the couplings are stored
symmetrized (mean over index permutations); every derivative below assumes a symmetric tensor.
Energies are reported per site, H/N, which is O(1). Start points are batched: ``w`` is [S, N].
All tensors are float64 unless stated otherwise and stay on the device of the couplings.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np
import torch
from scipy.optimize import brentq

from surfacekit.curvature import check_threshold, count_below

Tensor = torch.Tensor

# Intermediate [S, N^(p-1)] contractions are chunked over starts to stay below this many elements.
_CHUNK_ELEMENTS = 2**25


# --------------------------------------------------------------------------------------------
# Theory thresholds
# --------------------------------------------------------------------------------------------


def _check_p(p: int) -> None:
    if not isinstance(p, (int, np.integer)) or p < 3:
        raise ValueError(
            f"p must be an integer >= 3, got {p!r}: for p = 2 the spherical spin glass has only "
            "two pairs of critical points and no band (-E_0, -E_inf) of low-index saddles"
        )


def complexity(u: float, p: int) -> float:
    """Annealed complexity Theta_p(u) of critical points at energy u = H/N, for u <= -E_inf.

    Theta_p(u) = 0.5 log(p-1) - (p-2)/(4(p-1)) u^2 - I_1(u), with
    I_1(u) = -(u/E_inf^2) sqrt(u^2 - E_inf^2) - log(-u + sqrt(u^2 - E_inf^2)) + log(E_inf).
    """
    _check_p(p)
    e_inf = 2.0 * math.sqrt((p - 1) / p)
    if u > -e_inf:
        raise ValueError(f"complexity is defined here for u <= -E_inf = {-e_inf:.6f}, got {u}")
    root = math.sqrt(max(u * u - e_inf * e_inf, 0.0))
    i1 = -(u / e_inf**2) * root - math.log(-u + root) + math.log(e_inf)
    return 0.5 * math.log(p - 1) - (p - 2) / (4.0 * (p - 1)) * u * u - i1


def thresholds(p: int) -> tuple[float, float]:
    """Energy thresholds (E_0, E_inf) of the spherical p-spin glass, as positive magnitudes.

    E_inf = 2 sqrt((p-1)/p) is the threshold above which critical points have diverging index;
    -E_0 (the ground-state energy per site, annealed) is the zero of ``complexity`` below -E_inf.
    Units: H/N. Raises ValueError for p < 3.
    """
    _check_p(p)
    e_inf = 2.0 * math.sqrt((p - 1) / p)
    lower = -e_inf - 1.0
    while complexity(lower, p) > 0.0:
        lower -= 1.0
    e_0 = -brentq(complexity, lower, -e_inf, args=(p,), xtol=1e-14, rtol=1e-14)
    return e_0, e_inf


# --------------------------------------------------------------------------------------------
# Disorder and start points
# --------------------------------------------------------------------------------------------


def _seeds(seed: int, count: int) -> list[int]:
    """Independent child seeds (for torch generators) derived from one integer seed."""
    children = np.random.SeedSequence(seed).spawn(count)
    return [int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for c in children]


def _gaussian(shape: tuple[int, ...], seed: int, device, dtype) -> Tensor:
    """N(0, 1) samples drawn on the CPU (identical on every device), then moved to ``device``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=dtype).to(device)


def symmetrize(x: Tensor) -> Tensor:
    """Mean of the tensor ``x`` [N]*p over all p! permutations of its indices."""
    perms = list(itertools.permutations(range(x.dim())))
    out = torch.zeros_like(x)
    for perm in perms:
        out += x.permute(perm)
    return out / len(perms)


def couplings(
    n: int,
    p: int,
    seed: int,
    *,
    symmetric: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Disorder tensor [N]*p with i.i.d. N(0, 1) entries, symmetrized unless ``symmetric=False``.

    The raw and the symmetrized tensor give the same energy; derivatives need the symmetric one.
    The samples do not depend on ``device``.
    """
    _check_p(p)
    x = _gaussian((n,) * p, _seeds(seed, 2)[0], device, dtype)
    return symmetrize(x) if symmetric else x


def split_couplings(x: Tensor, num_tensors: int, seed: int, *, symmetric: bool = True) -> Tensor:
    """Pieces [P, N, ..., N] with sum_k pieces[k] / sqrt(P) == x, for stochastic gradients.

    The pieces are drawn from the Gaussian law of P independent tensors distributed like ``x``,
    conditioned on their scaled sum being ``x``: pieces[k] = x/sqrt(P) + z_k - mean_j z_j, with
    z_k i.i.d. N(0, 1) tensors, symmetrized when ``symmetric`` (pass the flag used for ``x``).
    So the stochastic and the full-gradient runs see the same disorder.
    """
    if num_tensors < 1:
        raise ValueError(f"num_tensors must be >= 1, got {num_tensors}")
    z = _gaussian((num_tensors,) + tuple(x.shape), seed, x.device, x.dtype)
    if symmetric:
        z = torch.stack([symmetrize(zk) for zk in z])
    return x / math.sqrt(num_tensors) + z - z.mean(dim=0, keepdim=True)


def retract(w: Tensor) -> Tensor:
    """Map each row of ``w`` [S, N] to the sphere of radius sqrt(N): sqrt(N) w / ||w||."""
    return w * (math.sqrt(w.shape[-1]) / w.norm(dim=-1, keepdim=True))


def random_starts(
    num_starts: int,
    n: int,
    seed: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Start points [S, N] uniform on the sphere ||w||^2 = N (independent of ``device``)."""
    return retract(_gaussian((num_starts, n), _seeds(seed, 2)[1], device, dtype))


# --------------------------------------------------------------------------------------------
# Energy and derivatives
# --------------------------------------------------------------------------------------------


def _contract(x: Tensor, w: Tensor, k: int) -> Tensor:
    """Contract the first ``k`` indices of ``x`` [N]*p with each row of ``w`` [S, N].

    Returns [S] + [N]*(p-k). One matrix product for the first index, batched products after it;
    starts are processed in chunks only to bound the [S, N^(p-1)] intermediate.
    """
    n, p = x.shape[0], x.dim()
    flat = x.reshape(n, -1)
    chunk = max(1, _CHUNK_ELEMENTS // max(flat.shape[1], 1))
    outs = []
    for wc in w.split(chunk):
        out = wc @ flat  # [s, N^(p-1)]
        for _ in range(k - 1):
            out = torch.bmm(wc.unsqueeze(1), out.reshape(wc.shape[0], n, -1)).squeeze(1)
        outs.append(out)
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out.reshape((w.shape[0],) + (n,) * (p - k))


def _scale(n: int, p: int) -> float:
    return n ** (-(p - 1) / 2)


def energy(x: Tensor, w: Tensor) -> Tensor:
    """H(w) [S] for couplings ``x`` [N]*p (raw or symmetric) and points ``w`` [S, N]."""
    n, p = x.shape[0], x.dim()
    return _scale(n, p) * _contract(x, w, p)


def euclidean_gradient(x: Tensor, w: Tensor) -> Tensor:
    """Euclidean gradient [S, N] of H: p N^{-(p-1)/2} X[w, ..., w, :]. ``x`` must be symmetric."""
    n, p = x.shape[0], x.dim()
    return (p * _scale(n, p)) * _contract(x, w, p - 1)


def _project(w: Tensor, v: Tensor) -> Tensor:
    """Project each row of ``v`` [S, N] onto the tangent space of the sphere at ``w`` [S, N]."""
    n = w.shape[-1]
    return v - w * ((w * v).sum(-1, keepdim=True) / n)


def riemannian_gradient(x: Tensor, w: Tensor) -> Tensor:
    """Riemannian gradient [S, N] of H on the sphere ||w||^2 = N (tangent projection)."""
    return _project(w, euclidean_gradient(x, w))


def _energy_and_riemannian_gradient(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """(H [S], Riemannian gradient [S, N]) from one contraction; H = w . grad / p (Euler)."""
    g = euclidean_gradient(x, w)
    return (w * g).sum(-1) / x.dim(), _project(w, g)


def euclidean_hessian(x: Tensor, w: Tensor) -> Tensor:
    """Euclidean Hessian [S, N, N] of H: p(p-1) N^{-(p-1)/2} X[w, ..., w, :, :] (symmetric x)."""
    n, p = x.shape[0], x.dim()
    return (p * (p - 1) * _scale(n, p)) * _contract(x, w, p - 2)


def riemannian_hessian(x: Tensor, w: Tensor) -> Tensor:
    """Riemannian Hessian [S, N, N] of H on the sphere of radius sqrt(N), as a matrix on R^N.

    P A P - (w . grad H / N) P with A the Euclidean Hessian and P = I - w w^T / N. Its normal
    direction w is an exact null vector; use ``hessian_eigenvalues`` for the tangent spectrum.
    """
    n = w.shape[-1]
    eye = torch.eye(n, dtype=w.dtype, device=w.device)
    proj = eye - w.unsqueeze(-1) * w.unsqueeze(-2) / n
    radial = (w * euclidean_gradient(x, w)).sum(-1) / n
    a = euclidean_hessian(x, w)
    return proj @ a @ proj - radial[:, None, None] * proj


def tangent_basis(w: Tensor) -> Tensor:
    """Orthonormal bases [S, N, N-1] of the tangent spaces at ``w`` [S, N] (Householder)."""
    n = w.shape[-1]
    u = w / w.norm(dim=-1, keepdim=True)
    sign = torch.where(u[:, -1] >= 0, 1.0, -1.0).to(w.dtype)
    v = u.clone()
    v[:, -1] += sign  # reflection maps u to -sign * e_N; it is never ill-conditioned
    refl = torch.eye(n, dtype=w.dtype, device=w.device) - 2.0 * v.unsqueeze(-1) * v.unsqueeze(
        -2
    ) / (v * v).sum(-1)[:, None, None]
    return refl[:, :, : n - 1]


def hessian_eigenvalues(x: Tensor, w: Tensor) -> Tensor:
    """Eigenvalues [S, N-1] (ascending) of the Riemannian Hessian on the tangent space at w."""
    q = tangent_basis(w)
    return torch.linalg.eigvalsh(q.transpose(-1, -2) @ riemannian_hessian(x, w) @ q)


# --------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------


def gradient_descent(
    x: Tensor,
    w0: Tensor,
    *,
    lr: float = 0.15,
    lr_decay: float = 0.0,
    tol: float = 1e-7,
    max_steps: int = 20_000,
    callback: Callable[[int, int], None] | None = None,
) -> dict[str, Tensor]:
    """Riemannian gradient descent from every row of ``w0`` [S, N], with retraction.

    Step t: w <- retract(w - lr / (1 + lr_decay t) * grad_R H(w)). A start is frozen as soon as
    its Riemannian gradient norm is below ``tol``; the others go on until ``max_steps``.
    Returns tensors: w [S, N], energy_per_n [S], grad_norm [S] (Euclidean norm of grad_R H at
    the endpoint), steps [S] (updates made), converged [S] bool. ``callback(t, finished)``, if
    given, is called whenever starts converge and every 100 steps (for progress bars).
    """
    s = w0.shape[0]
    w = retract(w0)
    steps = torch.full((s,), max_steps, dtype=torch.int64, device=w.device)
    active = torch.arange(s, device=w.device)
    for t in range(max_steps):
        wa = w[active]
        _, g = _energy_and_riemannian_gradient(x, wa)
        done = g.norm(dim=-1) < tol
        if bool(done.any()):
            steps[active[done]] = t
            keep = ~done
            active, wa, g = active[keep], wa[keep], g[keep]
        if callback is not None and (bool(done.any()) or t % 100 == 0):
            callback(t, s - active.numel())
        if active.numel() == 0:
            break
        w[active] = retract(wa - (lr / (1.0 + lr_decay * t)) * g)
    h, g = _energy_and_riemannian_gradient(x, w)
    gn = g.norm(dim=-1)
    return {
        "w": w,
        "energy_per_n": h / w.shape[-1],
        "grad_norm": gn,
        "steps": steps,
        "converged": gn < tol,
    }


def stochastic_gradient_descent(
    pieces: Tensor,
    w0: Tensor,
    *,
    num_steps: int = 1000,
    lr: float = 0.3,
    lr_decay: float = 0.0015,
) -> Tensor:
    """SGD phase of Choromanska et al.: step t uses the gradient of piece t mod P alone.

    ``pieces`` [P, N, ..., N] (see ``split_couplings``; the full couplings are their sum over
    sqrt(P)); step t: w <- retract(w - lr / (1 + lr_decay t) * grad_R H_k(w)). Returns w [S, N].
    """
    w = retract(w0)
    for t in range(num_steps):
        g = riemannian_gradient(pieces[t % pieces.shape[0]], w)
        w = retract(w - (lr / (1.0 + lr_decay * t)) * g)
    return w


# --------------------------------------------------------------------------------------------
# Experiment entry point
# --------------------------------------------------------------------------------------------


def simulate(
    n: int,
    p: int,
    num_starts: int,
    seed: int,
    method: str = "gd",
    *,
    lr: float = 0.15,
    lr_decay: float = 0.0,
    tol: float = 1e-7,
    max_steps: int = 20_000,
    sgd_tensors: int = 10,
    sgd_steps: int = 1000,
    sgd_lr: float = 0.3,
    sgd_lr_decay: float = 0.0015,
    index_max_n: int = 200,
    index_rel_threshold: float = 1e-5,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    callback: Callable[[int, int], None] | None = None,
    select: slice | None = None,
) -> dict[str, np.ndarray]:
    """Descend from ``num_starts`` random points on one disorder sample; per-start results.

    ``select`` (a slice of range(num_starts), default all) descends only those starts: every start
    runs independently of the others, so chunks of starts give exactly the rows of one full run.

    ``method``: "gd" (Riemannian gradient descent) or "sgd" (``sgd_steps`` steps of
    ``stochastic_gradient_descent`` on ``sgd_tensors`` pieces of the same couplings, then
    gradient descent). The couplings and starts depend on ``seed`` only, not on method/device.
    Returns numpy arrays of length S: energy_per_n, grad_norm, steps (gradient-descent steps),
    converged; for "sgd" also sgd_steps; for n <= index_max_n also the index fields, with the
    threshold convention and counting rule of :func:`surfacekit.curvature.index` (one rule,
    :func:`surfacekit.curvature.count_below`, on the dense tangent-space spectrum): index (count
    of eigenvalues below the threshold), index_fraction (index / (N-1)), index_threshold (the
    absolute threshold, ``-index_rel_threshold * max|lambda|``, negative), index_method ("dense"),
    index_at_least (False: dense counts are exact), index_certificate (the smallest eigenvalue not
    counted), lambda_min and lambda_max. ``callback`` is passed to ``gradient_descent`` (progress
    of the final descent).
    """
    if method not in ("gd", "sgd"):
        raise ValueError(f"method must be 'gd' or 'sgd', got {method!r}")
    check_threshold(None, index_rel_threshold)
    if n < 2 or num_starts < 1:
        raise ValueError(f"need n >= 2 and num_starts >= 1, got n={n}, num_starts={num_starts}")
    x = couplings(n, p, seed, device=device, dtype=dtype)
    w0 = random_starts(num_starts, n, seed, device=x.device, dtype=dtype)
    if select is not None:
        w0 = w0[select]
    out: dict[str, np.ndarray] = {}
    if method == "sgd":
        pieces = split_couplings(x, sgd_tensors, _seeds(seed, 3)[2])
        w0 = stochastic_gradient_descent(
            pieces, w0, num_steps=sgd_steps, lr=sgd_lr, lr_decay=sgd_lr_decay
        )
        del pieces
        out["sgd_steps"] = np.full(w0.shape[0], sgd_steps, dtype=np.int64)
    res = gradient_descent(
        x, w0, lr=lr, lr_decay=lr_decay, tol=tol, max_steps=max_steps, callback=callback
    )
    for key in ("energy_per_n", "grad_norm", "steps", "converged"):
        out[key] = res[key].cpu().numpy()
    if n <= index_max_n:
        eig = hessian_eigenvalues(x, res["w"])
        counted = count_below(eig, relative_threshold=index_rel_threshold)
        out["index"] = counted.count.cpu().numpy()
        out["index_fraction"] = out["index"] / (n - 1)
        out["index_threshold"] = counted.threshold.cpu().numpy()
        out["index_method"] = np.array(["dense"] * len(counted.count))
        out["index_at_least"] = np.zeros(len(counted.count), dtype=bool)
        out["index_certificate"] = counted.certificate.cpu().numpy()
        out["lambda_min"] = eig[:, 0].cpu().numpy()
        out["lambda_max"] = eig[:, -1].cpu().numpy()
    return out
