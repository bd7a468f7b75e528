"""Issue 22, section 1: Newton steps on singular Hessians go to the nearest critical point.

Measured before the fix (scipy MINRES in Newton-MR) on ``SingularQuadratic`` (P = 8, two zero
eigenvalues, start ``random_point(8)``): with a kernel component of 0.3 in g the endpoint drifted 1.5e14
along the kernel (line-search stop; Levenberg-Marquardt and Krylov Newton stayed within 2e-9);
with a kernel component of 1e-6 it was *accepted* (||g||^2 = 7.7e-13 < 1e-10) 1.1e10 away from the
start, with a loss of 9,835 where the least-squares point nearest the start has -1.09. The issue's
own quadratic gave 6.9e8 and "accepted 2e6 away, loss -13.83 vs -11.84": the same failure.
"""

import pytest

from surfacekit.critical import find
from surfacekit.problems import SingularQuadratic, random_point

LEAST_SQUARES = ["newton_mr", "levenberg_marquardt", "newton", "gradnorm"]


@pytest.mark.parametrize("method", LEAST_SQUARES)
@pytest.mark.parametrize("kernel", [0.0, 0.3, 1e-6])
def test_endpoint_is_the_nearest_least_squares_point(method, kernel):
    quadratic = SingularQuadratic(kernel=kernel)  # indefinite: eigenvalues 3, -2, 1.5, -0.7, 1, 0.5, 0, 0
    x0 = random_point(quadratic.size)
    nearest = quadratic.nearest(x0)
    point = find(quadratic, x0, method, max_iter=60, compute_index=False)
    assert (point.theta - nearest).norm() < 1e-8, (point.theta - nearest).norm()
    assert abs(point.loss - float(quadratic(nearest))) < 1e-10
    assert abs(point.grad_norm2 ** 0.5 - quadratic.kernel_component(x0)) < 1e-9
    # 0.3: no critical point, and g lies in the kernel of H: gradient-flat, not accepted. 1e-6: a
    # nearly critical point (||g|| = 1e-6 <= 1e-6 ||g_0|| = 3.5e-6), accepted where it should be: next to x0.
    assert point.accepted == (kernel != 0.3)
    assert point.status == ("gradient_flat" if kernel == 0.3 else "critical")
    if method == "newton_mr":  # the recorded kernel component of g, which no step removes
        assert abs(point.kernel_component - quadratic.kernel_component(x0)) < 1e-10
        assert point.stop == ("tolerance" if kernel == 0 else "stalled") and point.iterations == 1
        assert point.kernel_dims[0] == (0 if kernel == 0 else 1)  # the kernel the first Krylov subspace meets
        assert point.step_norms == pytest.approx([float((nearest - x0).norm())], rel=1e-12)  # one step, no drift


@pytest.mark.parametrize("kernel", [0.0, 0.3])
def test_saddle_free_reaches_the_nearest_minimum_or_runs_downhill(kernel):
    # Positive semidefinite with a 2-dimensional kernel: consistent -> a valley of minima, reached at
    # the point nearest the start; inconsistent -> f is linear along the kernel and unbounded below,
    # and saddle-free Newton follows it down: never accepted.
    quadratic = SingularQuadratic(eigenvalues=(3.0, 2.0, 1.5, 0.7, 1.0, 0.5), kernel=kernel)
    x0 = random_point(quadratic.size)
    point = find(quadratic, x0, "saddle_free", max_iter=60)
    if kernel == 0:
        assert point.accepted and point.index.count == 0
        assert (point.theta - quadratic.nearest(x0)).norm() < 1e-8
    else:
        assert not point.accepted and point.loss < float(quadratic(quadratic.nearest(x0))) - 1.0


def test_larger_singular_systems():
    # P = 40 with a 10-dimensional kernel, repeated eigenvalues and both signs.
    eigenvalues = [2.0] * 8 + [-1.0] * 8 + [0.5, -3.0, 4.0, 1e-2] * 3 + [7.0, -0.2]
    for kernel in (0.0, 0.5):
        quadratic = SingularQuadratic(eigenvalues=eigenvalues, zeros=10, kernel=kernel, seed=3)
        x0 = random_point(quadratic.size, seed=7)
        point = find(quadratic, x0, "newton_mr", compute_index=False)
        assert (point.theta - quadratic.nearest(x0)).norm() < 1e-8
        assert point.accepted == (kernel == 0)
