"""Issue 22, section 2: acceptance and endpoints that do not depend on the units of the loss.

Before the fix the cutoff (||g||^2 < 1e-10) and the stopping tolerance (1e-20) were absolute:
multiplying a loss by 1e-6 turned a rejected point into an accepted one without moving it, and at
1e-9 the defaults accepted a point 0.05 away from the minimum.
"""

import pytest
import torch

from surfacekit.critical import METHODS, classify_endpoint, find, levenberg_marquardt
from surfacekit.critical.trace import FinderRun
from surfacekit.problems import F64, NEAR_ORIGIN, SingularQuadratic, linear_autoencoder, random_point, two_weight

SCALES = (1e-9, 1.0, 1e6)


def problems():
    ae = linear_autoencoder()
    loss, critical_point = ae.loss_fn, ae.critical_point
    u = torch.randn(20, generator=torch.Generator().manual_seed(3), **F64)
    near_saddle = critical_point((0, 2), torch.eye(2, **F64)) + 0.05 * u  # index 2 Baldi-Hornik point
    psd = SingularQuadratic(eigenvalues=(3.0, 2.0, 1.5, 0.7, 1.0, 0.5))
    indefinite = SingularQuadratic(kernel=0.3)
    return {  # name: (loss, start, finders, endpoint tolerance relative to max(1, ||theta||))
        "two_weight": (two_weight, torch.tensor(NEAR_ORIGIN[0], **F64), METHODS, 1e-10),
        "singular psd": (psd, random_point(8), METHODS, 1e-10),
        "singular inconsistent": (indefinite, random_point(8), ("newton_mr", "newton", "gradnorm", "levenberg_marquardt"),
                                  1e-8),
        # critical points of the autoencoder form GL(2) orbits: flat directions, so rounding may
        # move the endpoint along the orbit; compare to 1e-6
        "autoencoder": (loss, near_saddle, METHODS, 1e-6),
    }


@pytest.mark.parametrize("name", ["two_weight", "singular psd", "singular inconsistent", "autoencoder"])
def test_every_finder_is_unchanged_by_the_units_of_the_loss(name):
    fn, x0, methods, tol = problems()[name]
    for method in methods:
        points = [find(lambda t, c=c: c * fn(t), x0, method, max_iter=60, compute_index=False) for c in SCALES]
        ref = points[1]
        for c, p in zip(SCALES, points):
            assert p.accepted == ref.accepted and p.status == ref.status, (method, c)
            assert (p.theta - ref.theta).norm() <= tol * max(1.0, float(ref.theta.norm())), (method, c)
            assert abs(p.loss - c * ref.loss) <= 1e-9 * abs(c * ref.loss) + 1e-12 * c, (method, c)
            if ref.accepted:  # the absolute figure is recorded beside the decision, in the loss's units
                assert p.accepted_absolute == (p.grad_norm2 < 1e-10)
        if name == "autoencoder" and method != "gradnorm":  # where the absolute cutoff changes its mind
            assert points[0].accepted_absolute and points[1].accepted_absolute


def test_acceptance_ratio_is_scale_free_and_the_absolute_cutoff_is_not():
    # The case: at a loss scale of 1e-9 the absolute cutoff accepts a point 0.05 from the
    # minimum of a quadratic; the scale-free criterion rejects it, at every scale.
    a = torch.diag(torch.tensor([1.0, 2.0, 0.5], **F64))
    x0 = torch.tensor([1.0, -1.0, 1.0], **F64)
    x = 0.05 * x0 / x0.norm()
    for c in SCALES:
        def fn(t, c=c):
            return c * 0.5 * t @ a @ t

        g0 = c * a @ x0
        run = FinderRun(x, 10, 0, 0, [float(g0 @ g0), 0.0], [float(fn(x0)), 0.0], "max_iter")
        point = classify_endpoint(fn, run, "newton_mr", compute_index=False)
        absolute = classify_endpoint(fn, run, "newton_mr", criterion="absolute", compute_index=False)
        assert not point.accepted and point.status == "rejected"
        assert point.acceptance_ratio == pytest.approx(float((a @ x).norm()) / (1e-6 * float((a @ x0).norm()) + 2e-10))
        assert absolute.accepted == (c == 1e-9) == point.accepted_absolute
        assert point.grad_norm_scaled == pytest.approx(float((a @ x).norm()) / 2.0)


def test_levenberg_marquardt_solves_tiny_losses_like_unit_ones():
    # scipy's LSQR has absolute terms in its stopping tests; on the unnormalized problem the
    # 1e-9-scaled autoencoder ran to max_iter (60) where the unit one stopped after 8 steps.
    ae = linear_autoencoder()
    loss, critical_point = ae.loss_fn, ae.critical_point
    u = torch.randn(20, generator=torch.Generator().manual_seed(3), **F64)
    x0 = critical_point((0, 2), torch.eye(2, **F64)) + 0.05 * u
    runs = [levenberg_marquardt(lambda t, c=c: c * loss(t), x0, max_iter=60) for c in (1e-9, 1.0)]
    assert runs[0].iterations == runs[1].iterations <= 10 and runs[0].stop == runs[1].stop == "tolerance"
