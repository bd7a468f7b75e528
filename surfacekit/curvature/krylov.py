"""Block thick-restart Lanczos with locking and a completion certificate: the one Krylov eigensolver loop.

:func:`block_krylov` serves both :func:`~surfacekit.curvature.lanczos.eigsh` (the ``k`` most
extreme eigenpairs) and the Lanczos path of :func:`~surfacekit.curvature.index.index` (every
eigenvalue below a threshold). Algorithm:

* **Block Lanczos with full reorthogonalization.** A block of ``b`` orthonormal vectors is multiplied
  at once (batched Hessian-vector products); the result is orthogonalized twice (block classical
  Gram-Schmidt) against the whole basis and the locked vectors, then within the block (modified
  Gram-Schmidt with rank detection: a direction that lies in the basis is an invariant subspace and
  is replaced by a fresh random one). The projected matrix ``T = V^T H V`` is filled from the
  orthogonalization coefficients; its eigenpairs are the Ritz pairs, and the residual of a Ritz
  vector ``V s`` is ``||R s_last||`` with ``R`` the coupling of the next block to the last one
  (Golub and Underwood 1977; Saad, *Numerical Methods for Large Eigenvalue Problems*, 2011, ch. 6).
  A block of ``b`` random vectors sees up to ``b`` directions of each eigenspace, so it resolves
  multiplicities up to ``b`` (a single vector sees one).
* **Thick restart with locking** (Wu and Simon 2000; Stathopoulos and Saad's locking). When the
  basis is full, converged Ritz pairs are locked (removed from the operator: every later vector is
  orthogonalized against them), the best unconverged Ritz vectors at the wanted end are kept, and
  the projected matrix becomes ``diag(ritz_values)``.
* **Completion certificate.** When the goal is met (k converged extreme values; or every Ritz value
  below the threshold converged up to a converged one above it), the run starts again from ``b``
  fresh Gaussian vectors in the complement of every locked vector and computes the most extreme
  eigenvalue of the deflated operator. A Ritz value is never more extreme than the operator's
  extreme eigenvalue, so a Ritz value beyond the k-th value (or below the threshold) proves that
  something was missed: the run switches back to counting with a doubled block, and certifies
  again afterwards. The certificate passes when its extreme Ritz value converges to the tolerance
  without going beyond, or, after at least as many block steps as the phase before it took to
  reach its goal, when the Ritz value's whole residual interval lies on the inner side of the k-th
  value (or the threshold). The second rule ends certificates whose next eigenvalue sits in a
  continuum (converging it to the tolerance could take thousands of products) while still giving
  the fresh vectors the Krylov depth that found the answer. Its value, residual, products and
  block steps are returned.

What the certificate guarantees, and with what failure probability: see :func:`miss_probability`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

from .errors import require_finite

MatVec = Callable[[Tensor], Tensor]
Which = Literal["largest", "smallest"]
RANK_TOL = 1e-12  # a new direction shorter than this x ||H|| lies in the basis (invariant subspace)
_ROTATE_ELEMENTS = 2**22  # in-place basis rotation works on column slabs of this many elements
# Ritz pairs (an eigh of the n x n projected matrix) are computed once per n / CHECK_FRACTION products:
# at most ~6% extra products before convergence is noticed, and the O(n^3) eigh stays a small cost.
CHECK_FRACTION = 16


@dataclass
class Locked:
    """Vectors removed from the operator, kept as a list of orthonormal [q_i, P] chunks (locking
    appends without copying): first ``excluded`` rows given by the caller (a subspace to leave
    out, no values), then converged eigenpairs with values [q] and residual norms [q]."""

    chunks: list[Tensor]
    values: Tensor
    residuals: Tensor
    excluded: int = 0

    @classmethod
    def empty(cls, like: Tensor, exclude: Tensor | None = None) -> "Locked":
        chunks = [] if exclude is None or len(exclude) == 0 else [exclude.to(like)]
        return cls(chunks, like.new_zeros(0), like.new_zeros(0), len(chunks[0]) if chunks else 0)

    @property
    def size(self) -> int:
        """Number of locked eigenpairs (not counting excluded rows)."""
        return len(self.values)

    @property
    def dimension(self) -> int:
        """Dimension of the removed subspace."""
        return self.excluded + len(self.values)

    def add(self, vectors: Tensor, values: Tensor, residuals: Tensor) -> None:
        if len(values):
            self.chunks.append(vectors)
            self.values = torch.cat([self.values, values])
            self.residuals = torch.cat([self.residuals, residuals])

    def vectors(self, rows: Tensor) -> Tensor:
        """The locked eigenvectors [len(rows), P] of the eigenpairs at positions ``rows``."""
        return torch.cat(self.chunks)[self.excluded + rows.to(self.chunks[0].device)]


def project_out(w: Tensor, locked: Locked) -> None:
    """Remove from the rows of ``w`` [m, P] their components along every locked vector (in place)."""
    for chunk in locked.chunks:
        w -= (w @ chunk.T) @ chunk


@dataclass(frozen=True)
class Goal:
    """What a run computes. Extreme: the ``k`` eigenpairs nearest the ``which`` end. Counting
    (``k == 0``, which "smallest"): every eigenvalue below ``threshold`` (absolute), or below
    ``-relative * scale`` with scale = max(``scale``, |smallest eigenvalue|); at most ``cap``."""

    which: Which
    k: int = 0
    threshold: float | None = None
    relative: float = 0.0
    scale: float = 0.0
    cap: int = 0

    def tau(self, smallest: float) -> float:
        scale = max(self.scale, abs(smallest))
        return -self.relative * scale if self.threshold is None else self.threshold


class KrylovOutcome(NamedTuple):
    """The state a :func:`block_krylov` run ends in. ``locked``: every converged eigenpair it found
    (the answer is read off these); ``threshold``: the absolute threshold (counting; nan otherwise);
    ``count``: locked values below it; ``at_least``: the count passed the cap; ``converged``: the goal
    and (if asked) the certificate were met within ``max_hvps``; ``candidates``: the best values
    [k], vectors [k, P] and residuals [k] when not converged (extreme goal), else None;
    ``certificate``: the certified extreme eigenvalue of the deflated operator (nan if not
    certified), with its residual, products and block steps before its first restart;
    ``norm_estimate``: the largest |Ritz value| seen (an estimate of ||H||); ``block``: the largest
    block the run used."""

    locked: Locked
    threshold: float
    count: int
    at_least: bool
    converged: bool
    hvps: int
    candidates: tuple[Tensor, Tensor, Tensor] | None
    certificate: float
    certificate_residual: float
    certificate_hvps: int
    certificate_steps: int
    norm_estimate: float
    block: int


@dataclass
class _Basis:
    """Block Krylov basis storage: V [basis, P] with the multiplied vectors in rows [0, n) and the
    next block in rows [n, n + rows); T [basis, basis] the projected matrix of rows [0, n)."""

    v: Tensor
    t: Tensor
    n: int = 0
    rows: int = 0
    steps: int = 0  # block steps since the last fresh start
    steps_before_restart: int | None = None  # block steps from the fresh start to its first restart
    fresh_hvps: int = 0  # products done when the last fresh start was made
    unchecked: int = 0  # products since the Ritz pairs were last computed


def miss_probability(size: int, steps: int, block: int, epsilon: float) -> float:
    """Upper bound on the chance that a certificate misses an eigenvalue beyond the certified end.

    The certificate computes the extreme Ritz value of the deflated operator (dimension ``size``)
    from ``block`` independent Gaussian start vectors after ``steps`` block multiplications without
    restart. For one start vector, Kuczynski and Wozniakowski (SIAM J. Matrix Anal. Appl. 13(4),
    1992) bound the probability that Lanczos after ``steps`` products underestimates the largest
    eigenvalue of a positive semi-definite matrix by a relative error ``epsilon`` or more by
    ``1.648 sqrt(size) exp(-(2 steps - 1) sqrt(epsilon))``. Shifting ``H`` by its far end makes it
    semi-definite, and the block Krylov space contains each start vector's Krylov space, so the
    block misses only if every start vector does: the bound to the power ``block``. Here
    ``epsilon`` is the distance of a missed eigenvalue beyond the certified end, relative to the
    spectral spread of the deflated operator. Worst case over all spectra (real spectra do far
    better); returns a number in [0, 1].
    """
    if steps < 1 or epsilon <= 0:
        return 1.0
    one = 1.648 * math.sqrt(size) * math.exp(-(2 * steps - 1) * math.sqrt(min(epsilon, 1.0)))
    return min(1.0, one) ** block


def _generator(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(seed) if seed is not None else torch.Generator()


def orthogonalize(w: Tensor, basis: Tensor, locked: Locked) -> Tensor:
    """Block classical Gram-Schmidt, twice: remove from the rows of ``w`` [b, P] the locked vectors
    and the rows of ``basis`` [n, P] (in place). Returns the coefficients on ``basis`` [b, n].

    Both passes include the locked vectors: with one, components along them (at the level of their
    residuals) grow as the Lanczos recurrence divides by small couplings (measured: 0.4 after a few
    restarts).
    """
    coef = w.new_zeros(w.shape[0], basis.shape[0])
    for _ in range(2):
        project_out(w, locked)
        c = w @ basis.T
        w -= c @ basis
        coef += c
    return coef


def _orthonormalize(w: Tensor, basis: Tensor, locked: Locked, max_rows: int, rank_tol: float,
                    gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Orthonormalize the rows of ``w`` [b, P] (already orthogonal to ``basis`` and the locked vectors)
    among themselves, in place, by modified Gram-Schmidt with reorthogonalization.

    A row whose remaining norm is at most ``rank_tol`` lies in the span already built (an invariant
    subspace) and is dropped; dropped rows are replaced by fresh random directions (coupling 0), and
    so are the extra rows of a block that grows, so that the block has ``max_rows`` rows. Returns
    (Q [max_rows, P], R [max_rows, b]) with ``w_original = R^T Q``.
    """
    b = w.shape[0]
    r = w.new_zeros(b, b)
    kept = 0
    for i in range(b):
        row = w[i]
        before = float(row.norm())
        for _ in range(2):
            if kept:
                c = w[:kept] @ row
                row -= c @ w[:kept]
                r[:kept, i] += c
        norm = float(row.norm())
        if 0 < norm < 0.1 * before:  # heavy cancellation: restore orthogonality to the basis
            orthogonalize(row[None], basis, locked)
            if kept:
                row -= (w[:kept] @ row) @ w[:kept]
            norm = float(row.norm())
        if norm > rank_tol and kept < max_rows:
            w[kept] = row / norm
            r[kept, i] = norm
            kept += 1
    if max_rows > b:  # a growing block: room for the fresh rows
        w = torch.cat([w, w.new_empty(max_rows - b, w.shape[1])])
        r = torch.cat([r, r.new_zeros(max_rows - b, b)])
    while kept < max_rows:
        w[kept] = _random_direction(w[:kept], basis, locked, gen)
        kept += 1
    return w[:kept], r[:kept]


def _random_direction(block: Tensor, basis: Tensor, locked: Locked, gen: torch.Generator) -> Tensor:
    """A unit Gaussian direction orthogonal to ``block``, ``basis`` and the locked vectors."""
    v = torch.randn(1, basis.shape[1], generator=gen, dtype=basis.dtype).to(basis.device)
    for _ in range(2):
        orthogonalize(v, basis, locked)
        if len(block):
            v -= (v @ block.T) @ block
    return (v / v.norm())[0]


def _fresh_block(state: _Basis, rows: int, locked: Locked, gen: torch.Generator, hvps: int) -> None:
    """Start the basis again from ``rows`` Gaussian vectors orthonormal to the locked vectors."""
    size = state.v.shape[1]
    block = torch.randn(rows, size, generator=gen, dtype=state.v.dtype).to(state.v.device)
    orthogonalize(block, state.v[:0], locked)
    q, _ = _orthonormalize(block, state.v[:0], locked, rows, 0.0, gen)
    state.v[: len(q)] = q
    state.t.zero_()
    state.n, state.rows, state.steps, state.steps_before_restart, state.fresh_hvps = 0, len(q), 0, None, hvps
    state.unchecked = 0


def _rotate(v: Tensor, n: int, coef: Tensor) -> None:
    """``v[:k] <- coef^T v[:n]`` in place (k = coef.shape[1]), one column slab at a time."""
    width = max(1, _ROTATE_ELEMENTS // max(n, 1))
    for c in range(0, v.shape[1], width):
        v[: coef.shape[1], c : c + width] = coef.T @ v[:n, c : c + width]


def _order(theta: Tensor, which: Which) -> Tensor:
    """Indices of ``theta`` from the wanted end inwards."""
    return torch.argsort(theta, descending=(which == "largest"), stable=True)


def _merged_head(goal: Goal, locked: Locked, theta: Tensor, converged: Tensor) -> tuple[Tensor, Tensor]:
    """Extreme goal: the k best of locked values and Ritz values, from the wanted end.
    Returns (source [k]: -1 - locked position or Ritz position, converged [k])."""
    values = torch.cat([locked.values, theta])
    source = torch.cat([-1 - torch.arange(locked.size), torch.arange(len(theta))])
    flags = torch.cat([torch.ones(locked.size, dtype=torch.bool), converged.cpu()])
    head = _order(values, goal.which).cpu()[: goal.k]
    return source[head], flags[head]


def _kth_locked(goal: Goal, locked: Locked) -> float:
    """The k-th locked value from the wanted end (nan if fewer are locked)."""
    if locked.size < goal.k:
        return float("nan")
    return float(locked.values[_order(locked.values, goal.which)[goal.k - 1]])


def block_krylov(
    matvec: MatVec,
    size: int,
    goal: Goal,
    *,
    block: int,
    basis: int,
    tol: float,
    floor: float,
    max_hvps: int,
    like: Tensor,
    seed: int | None,
    locked: Locked | None = None,
    certify: bool = True,
    extra_locks: int = 0,
    start_block: int | None = None,
) -> KrylovOutcome:
    """Run the block thick-restart Lanczos iteration of this module's docstring towards ``goal``.

    ``matvec`` maps [b, P] to [b, P] (float64, symmetric operator of order ``size``); ``block``
    (the largest block) and ``basis`` come from :func:`~surfacekit.curvature.memory.krylov_workspace`.
    The run starts with ``start_block`` vectors (default ``block``) and doubles the block, up to
    ``block``, whenever a certificate finds a missed eigenvalue (the extra rows are fresh random
    directions): a repeated eigenvalue then costs a few rounds instead of one per copy. A Ritz pair is
    converged when its residual is at most ``tol * max(|value|, floor * ||H||)`` (||H|| estimated by
    the largest |Ritz value| seen). ``locked`` (optional) starts the run with pairs already removed
    (e.g. the top outliers found while computing the scale). Counting runs lock converged pairs
    above the threshold too (they narrow the spectrum the tail competes with), at most
    ``extra_locks`` of them. Stops after ``max_hvps`` products (``converged=False``).
    """
    gen = _generator(seed)
    locked = Locked.empty(like) if locked is None else locked
    counting = goal.k == 0
    state = _Basis(like.new_empty(basis, size), like.new_zeros(basis, basis))
    hvps = 0
    norm_est = max(goal.scale, float(locked.values.abs().max()) if locked.size else 0.0)
    certifying = False
    tau = goal.tau(float(locked.values.min()) if locked.size else 0.0) if counting else float("nan")
    current = min(block, start_block or block)
    depth = 0  # block steps the last counting phase took, from its fresh start to its goal
    if size - locked.dimension <= 0:
        return _outcome(goal, locked, tau, hvps, True, None, float("nan"), 0.0, 0, 0, norm_est, current)
    _fresh_block(state, min(current, size - locked.dimension), locked, gen, hvps)
    while True:
        nb, n = state.rows, state.n
        if hvps + nb > max_hvps:
            return _out_of_budget(goal, locked, tau, hvps, norm_est, None, current)
        x = state.v[n : n + nb]
        w = matvec(x)
        if w.dtype != torch.float64:
            raise ValueError(f"the operator returned {w.dtype}; eigenvalues are computed in float64 only")
        require_finite(w, f"the operator's products {hvps + 1}..{hvps + nb}")
        if w.untyped_storage().data_ptr() == state.v.untyped_storage().data_ptr():
            w = w.clone()  # an operator that hands back its input (the identity) must not alias the basis
        hvps += nb
        norm_est = max(norm_est, float(w.norm(dim=1).max()))  # ||H x|| <= ||H|| for unit x
        coef = orthogonalize(w, state.v[: n + nb], locked)
        state.t[: n + nb, n : n + nb] = coef.T
        state.t[n : n + nb, : n + nb] = coef
        n = state.n = n + nb
        state.steps += 1
        room = min(current, size - locked.dimension - n)
        q, r = _orthonormalize(w, state.v[:n], locked, room, RANK_TOL * norm_est, gen)
        exhausted = len(q) == 0  # the basis spans the whole complement: every Ritz pair is exact
        full = n + len(q) > state.v.shape[0]
        state.unchecked += nb
        if not (full or exhausted or CHECK_FRACTION * state.unchecked >= n) and hvps + len(q) <= max_hvps:
            state.v[n : n + len(q)] = q  # Ritz pairs are computed every n / CHECK_FRACTION products
            state.rows = len(q)
            continue
        state.unchecked = 0
        theta, s = torch.linalg.eigh(state.t[:n, :n])
        norm_est = max(norm_est, float(theta.abs().max()))
        residuals = (r @ s[n - nb : n]).norm(dim=0) if len(q) else torch.zeros_like(theta)
        converged = residuals <= tol * torch.clamp(theta.abs(), min=floor * norm_est)
        wanted = _order(theta, goal.which)
        if counting:
            tau = goal.tau(min(float(theta[0]), float(locked.values.min()) if locked.size else 0.0))

        if certifying:
            e = int(wanted[0])
            if _beyond(goal, locked, float(theta[e]), tau, tol, floor, norm_est):
                certifying = False  # something was missed: count (or select) again, continuing this run
                current = min(2 * current, block)
            elif bool(converged[e]) or (state.steps >= depth and _resolved(goal, locked, float(theta[e]),
                                                                             float(residuals[e]), tau, tol, floor, norm_est)):
                steps = state.steps if state.steps_before_restart is None else state.steps_before_restart
                return _outcome(goal, locked, tau, hvps, True, None, float(theta[e]), float(residuals[e]),
                                hvps - state.fresh_hvps, steps, norm_est, current)
        if not certifying:
            done, lock, count = _goal_met(goal, locked, theta, converged, tau, exhausted)
            if counting and count > goal.cap:
                return _outcome(goal, locked, tau, hvps, True, None, float("nan"), float("nan"), 0, 0, norm_est,
                                current, at_least=True)
            if done:
                depth = state.steps
                locked.add(s[:, lock].T @ state.v[:n], theta[lock], residuals[lock])
                if exhausted or not certify:
                    rest = [i for i in wanted.tolist() if i not in set(lock.tolist())]
                    cert = float(theta[rest[0]]) if exhausted and rest else float("nan")
                    return _outcome(goal, locked, tau, hvps, True, None, cert, 0.0, 0, 0, norm_est, current)
                if size - locked.dimension <= 0:
                    return _outcome(goal, locked, tau, hvps, True, None, float("nan"), 0.0, 0, 0, norm_est, current)
                certifying = True
                _fresh_block(state, min(current, size - locked.dimension), locked, gen, hvps)
                continue
        if hvps + len(q) > max_hvps:
            return _out_of_budget(goal, locked, tau, hvps, norm_est, (theta, s, residuals, state.v[:n]), current)
        if full:
            if certifying and state.steps_before_restart is None:
                state.steps_before_restart = state.steps
            _restart(state, goal, locked, theta, s, residuals, converged, q, tau, certifying, extra_locks)
        else:
            state.v[n : n + len(q)] = q
            state.rows = len(q)


def _beyond(goal: Goal, locked: Locked, value: float, tau: float, tol: float, floor: float, norm_est: float) -> bool:
    """Whether a certificate Ritz value proves that an eigenvalue was missed."""
    if goal.k == 0:
        return value < tau
    kth = _kth_locked(goal, locked)
    margin = tol * max(abs(kth), floor * norm_est)
    return value > kth + margin if goal.which == "largest" else value < kth - margin


def _resolved(goal: Goal, locked: Locked, value: float, residual: float, tau: float, tol: float, floor: float,
              norm_est: float) -> bool:
    """Whether a certificate Ritz value lies, with its whole residual interval, on the inner side of the
    k-th value (or the threshold): the eigenvalue it approximates is not beyond."""
    if goal.k == 0:
        return value - residual > tau
    kth = _kth_locked(goal, locked)
    margin = tol * max(abs(kth), floor * norm_est)
    return value + residual < kth - margin if goal.which == "largest" else value - residual > kth + margin


def _goal_met(goal: Goal, locked: Locked, theta: Tensor, converged: Tensor, tau: float,
              exhausted: bool) -> tuple[bool, Tensor, int]:
    """(done, Ritz positions to lock when done, count below the threshold so far)."""
    if goal.k == 0:
        flags = converged.to(torch.int64)
        prefix = int(torch.cumprod(flags, 0).sum())
        below = int((theta[:prefix] < tau).sum())
        count = int((locked.values < tau).sum()) + below
        done = prefix > below or exhausted
        return done, torch.arange(below, device=theta.device), count
    source, flags = _merged_head(goal, locked, theta, converged)
    done = (len(flags) == goal.k and bool(flags.all())) or exhausted
    return done, source[source >= 0].to(theta.device), 0


def _restart(state: _Basis, goal: Goal, locked: Locked, theta: Tensor, s: Tensor, residuals: Tensor,
             converged: Tensor, q: Tensor, tau: float, certifying: bool, extra_locks: int) -> None:
    """Thick restart: lock converged pairs, keep the best unconverged Ritz vectors, append ``q``."""
    n, nq = state.n, len(q)
    wanted = _order(theta, goal.which)
    if goal.k == 0:
        counted = converged & (theta < tau)
        room = max(extra_locks - int((locked.values >= tau).sum()), 0)
        others = torch.nonzero(converged & ~counted).flatten()
        others = others[torch.argsort(theta[others], descending=True)][:room]  # the outliers first
        lock = torch.cat([torch.nonzero(counted).flatten(), others])
    elif certifying:
        lock = torch.zeros(0, dtype=torch.int64, device=theta.device)
    else:
        source, flags = _merged_head(goal, locked, theta, converged)
        lock = source[(source >= 0) & flags].to(theta.device)
    is_locked = torch.zeros_like(converged)
    is_locked[lock] = True
    free = wanted[~is_locked[wanted]]
    n_keep = min(len(free), max((n - len(lock)) // 2, nq), state.v.shape[0] - 2 * nq)
    keep = free[:n_keep]
    locked.add(s[:, lock].T @ state.v[:n], theta[lock], residuals[lock])
    _rotate(state.v, n, s[:, keep])
    state.v[n_keep : n_keep + nq] = q
    state.t.zero_()
    state.t[range(n_keep), range(n_keep)] = theta[keep]
    state.n, state.rows = n_keep, nq


def _out_of_budget(goal: Goal, locked: Locked, tau: float, hvps: int, norm_est: float,
                   ritz: tuple[Tensor, Tensor, Tensor, Tensor] | None, block: int) -> KrylovOutcome:
    """The best answer so far when the product budget ran out. Extreme goal: the k best of the
    locked and current Ritz pairs (``ritz`` = values, T's eigenvectors, residuals, basis)."""
    nan = float("nan")
    if goal.k == 0 or (ritz is None and locked.size == 0):
        return _outcome(goal, locked, tau, hvps, False, None, nan, nan, 0, 0, norm_est, block)
    theta, s, residuals, basis = ritz if ritz is not None else (locked.values[:0], None, locked.residuals[:0], None)
    values = torch.cat([locked.values, theta])
    order = _order(values, goal.which)[: goal.k].tolist()
    rows = [locked.vectors(torch.tensor([i]))[0] if i < locked.size else s[:, i - locked.size] @ basis for i in order]
    candidates = (values[order], torch.stack(rows), torch.cat([locked.residuals, residuals])[order])
    return _outcome(goal, locked, tau, hvps, False, candidates, nan, nan, 0, 0, norm_est, block)


def _outcome(goal: Goal, locked: Locked, tau: float, hvps: int, converged: bool, candidates, cert: float,
             cert_residual: float, cert_hvps: int, cert_steps: int, norm_est: float, block: int,
             at_least: bool = False) -> KrylovOutcome:
    count = int((locked.values < tau).sum()) if goal.k == 0 else 0
    if at_least:
        count = goal.cap
    return KrylovOutcome(locked, tau, count, at_least, converged, hvps, candidates, cert, cert_residual, cert_hvps,
                         cert_steps, norm_est, block)
