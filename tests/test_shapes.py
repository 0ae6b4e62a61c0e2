"""The shapes the public functions declare (their jaxtyping annotations) hold at run time.

Each function is wrapped in `jaxtyping.jaxtyped(typechecker=beartype)` and called with the
shapes its docstring allows: one sequence, several sequences with shared or per-sequence times,
missing values. The checker binds every named axis (T, p, d, B) across the arguments and the
return value, so an annotation that disagrees with what the function does fails here; a call
with inconsistent shapes is caught by the checker before the function runs.
"""

import inspect

import jax
import numpy as np
import pytest
from beartype import beartype
from jaxtyping import TypeCheckError, jaxtyped

import sdessm


def checked(fn):
    """`fn` with its annotations checked; through the `float64` wrapper of the entry points
    (whose `*args` hide them; the tests run with x64 on, where the wrapper only calls `fn`)."""
    return jaxtyped(typechecker=beartype)(inspect.unwrap(fn))


B, T, p, d = 3, 12, 2, 2


@pytest.fixture(scope="module")
def model():
    return sdessm.SDEParams(
        F=np.array([[-0.5, 1.0], [-1.0, -0.3]]),
        L=0.5 * np.eye(2),
        H=np.array([[1.0, 0.0], [0.2, 1.0]]),
        u=np.array([0.1, -0.2]),
        R=0.1 * np.eye(p),
        mu1=np.zeros(d),
        P1=np.eye(d),
    )


def _data(rng, batch: bool):
    y = rng.normal(size=(B, T, p) if batch else (T, p))
    y[..., 3, 0] = np.nan
    return y


CASES = {
    "one sequence": lambda rng: (_data(rng, False), np.arange(T) * 0.3),
    "shared times": lambda rng: (_data(rng, True), np.arange(T) * 0.3),
    "own times": lambda rng: (
        _data(rng, True),
        np.cumsum(rng.uniform(0.1, 0.5, size=(B, T)), axis=1),
    ),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(
    "fn", [sdessm.kalman_filter, sdessm.log_likelihood, sdessm.rts_smoother, sdessm.innovations]
)
def test_the_passes_keep_their_declared_shapes(model, fn, case):
    y, times = CASES[case](np.random.default_rng(0))
    checked(fn)(model, y, times)


@pytest.mark.parametrize("case", CASES)
def test_forecast_keeps_its_declared_shapes(model, case):
    y, times = CASES[case](np.random.default_rng(1))
    future = times[..., -1:] + 0.5 * np.arange(1, 4)
    checked(sdessm.forecast)(model, y, times, future)


def test_simulation_discretisation_and_residual_tests_keep_their_declared_shapes(model):
    times = np.arange(T) * 0.3
    x, y = checked(sdessm.simulate)(jax.random.key(0), model, times, B)
    assert x.shape == (B, T, d) and y.shape == (B, T, p)
    checked(sdessm.simulate)(jax.random.key(0), model, times)
    checked(sdessm.discretize)(model.F, model.L, np.array([0.1, 0.2, 0.3]))
    checked(sdessm.discretize)(model.F, model.L, 0.1)
    checked(sdessm.discretize_params)(model, times)
    standardized = sdessm.innovations(model, np.asarray(y), times).standardized
    checked(sdessm.residual_tests)(standardized, lags=[2, 4])


def test_the_checker_sees_inconsistent_shapes(model):
    """A grid of T + 1 times for T observations: the annotations bind T, so the checker stops
    the call (the function itself would raise a ValueError naming `times`)."""
    y = np.random.default_rng(2).normal(size=(T, p))
    with pytest.raises(TypeCheckError):
        checked(sdessm.kalman_filter)(model, y, np.arange(T + 1) * 0.3)
    with pytest.raises(ValueError, match="times"):
        sdessm.kalman_filter(model, y, np.arange(T + 1) * 0.3)
