"""Results respect the caller's JAX configuration.

The public entry points compute in float64 (`sdessm._checks.float64` enables x64 for the call).
With x64 off, what they return comes back as NumPy (float64 arrays, 0-d results as NumPy
scalars): a float64 JAX array would be truncated to float32, with a warning, by the next JAX
operation outside the call. With x64 on, results are JAX arrays as before.

tests/conftest.py turns x64 on for this process, so the x64-off calls run in a fresh interpreter:
one, running every entry point on a small problem with warnings as errors, first with x64 off,
then again with x64 on (programs compiled in the first pass are reused), and reporting the kind
and dtype of every leaf of each result and how far the two passes differ.
"""

import dataclasses
import json
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sdessm.models import load

import sdessm
from sdessm._checks import to_numpy

SCRIPT = r"""
import dataclasses, json, warnings
warnings.simplefilter("error")
import jax, numpy as np
import sdessm
from sdessm.models import load

def leaves(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from leaves(v)
    elif isinstance(x, list | tuple):
        for v in x:
            yield from leaves(v)
    elif dataclasses.is_dataclass(x):
        for f in dataclasses.fields(x):
            if not f.name.startswith("_"):
                yield from leaves(getattr(x, f.name))
    else:
        yield x

def kind(x):
    if isinstance(x, jax.Array):
        return f"jax:{x.dtype}"
    if isinstance(x, np.ndarray | np.generic):
        return f"numpy.{'scalar' if isinstance(x, np.generic) else 'ndarray'}:{x.dtype}"
    return type(x).__name__

def run():
    ou = load("ou")  # its true parameters, as NumPy float64 arrays (as input in both passes)
    P = sdessm.SDEParams(F=np.array([[-0.5]]), L=np.array([[0.8]]), H=np.eye(1), u=np.ones(1),
                         R=np.array([[0.04]]), mu1=np.zeros(1), P1=np.array([[0.64]]))
    times = np.arange(200) * 0.5
    future = times[-1] + np.arange(1.0, 4.0)
    x, y = sdessm.simulate(jax.random.key(0), P, times)
    yield "simulate", (x, y)
    yield "discretize", sdessm.discretize(P.F, P.L, 0.5)
    lg = sdessm.discretize_params(P, times)
    yield "discretize_params", lg
    yield "kalman_filter", sdessm.kalman_filter(P, y, times)
    smoothed = sdessm.rts_smoother(P, y, times)
    yield "rts_smoother", smoothed
    yield "rts_smoother + 1", smoothed.smoothed_means + 1
    yield "log_likelihood", sdessm.log_likelihood(P, y, times)
    yield "log_likelihood lgssm", sdessm.log_likelihood(lg, y)
    fit = sdessm.fit_em(P, y, times, num_iters=10, fixed=("H", "mu1", "P1"), progress=False)
    yield "fit_em", fit
    yield "fit_em Q", (fit.params.Q, fit.params.L @ fit.params.L.T)
    yield "standard_errors", fit.standard_errors()  # through `covariance`'s computation
    yield "fit_em lgssm", sdessm.fit_em(lg, y, num_iters=3, fixed=("H", "P1"), progress=False)
    yield "sde_from_discrete", sdessm.sde_from_discrete(*sdessm.discretize(P.F, P.L, 0.5), 0.5)
    yield "forecast", sdessm.forecast(P, y, times, future)
    start = {"theta": 0.6, "sigma": 0.7, "u": 0.9, "noise": 0.3}
    model_fit = sdessm.fit_em(ou.model, y, times, init=start, num_iters=2, progress=False)
    yield "fit_em model", model_fit

assert not jax.config.jax_enable_x64
off = dict(run())
jax.config.update("jax_enable_x64", True)
on = dict(run())
report = {}
for name, value in off.items():
    a, b = list(leaves(value)), list(leaves(on[name]))
    diff = 0.0
    for u, v in zip(a, b, strict=True):
        if isinstance(u, np.ndarray | np.generic) and np.issubdtype(u.dtype, np.inexact):
            scale = np.maximum(1.0, np.abs(np.asarray(v)))
            diff = max(diff, float(np.max(np.abs(u - np.asarray(v)) / scale, initial=0.0)))
    report[name] = {
        "off": sorted({kind(x) for x in a}),
        "on": sorted({kind(x) for x in b}),
        "diff": diff,
    }
fit = off["fit_em"]
report["Q exact"] = bool(np.array_equal(fit.params.Q, np.asarray(fit.params.L) @ fit.params.L.T))
report["Q type"] = kind(fit.params.Q)
print(json.dumps(report))
"""

ENTRY_POINTS = [
    "simulate",
    "discretize",
    "discretize_params",
    "kalman_filter",
    "rts_smoother",
    "rts_smoother + 1",
    "log_likelihood",
    "log_likelihood lgssm",
    "fit_em",
    "fit_em Q",
    "standard_errors",
    "fit_em lgssm",
    "sde_from_discrete",
    "forecast",
    "fit_em model",
]
#: Leaves that are no arrays: labels, flags and numbers of the EM report, iteration counts.
PLAIN = {"str", "bool", "int", "float", "NoneType"}


@pytest.fixture(scope="module")
def x64_off():
    """The report of SCRIPT, run once in a fresh interpreter with x64 off (JAX's default)."""
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_x64_off_returns_numpy_float64(x64_off, name):
    """No JAX array and nothing below float64 with x64 off (and no warning: the script turns
    warnings into errors); the values are those of the same call with x64 on."""
    kinds = set(x64_off[name]["off"])
    arrays = kinds - PLAIN
    assert arrays, kinds
    assert all(k.startswith("numpy.") for k in arrays), kinds
    assert {k.split(":")[1] for k in arrays} <= {"float64", "complex128", "int64"}, kinds
    assert x64_off[name]["diff"] <= 1e-10


def test_x64_off_scalars_are_numpy_scalars(x64_off):
    assert x64_off["log_likelihood"]["off"] == ["numpy.scalar:float64"]
    assert x64_off["log_likelihood lgssm"]["off"] == ["numpy.scalar:float64"]


def test_x64_off_diffusion_is_exact(x64_off):
    """`fit.params.Q` is NumPy's `L @ L.T`, bit for bit (no float32 round trip)."""
    assert x64_off["Q exact"]
    assert x64_off["Q type"] == "numpy.ndarray:float64"


def test_x64_on_results_stay_jax_arrays(x64_off):
    """With x64 on (the second pass) nothing is converted."""
    for name in ("simulate", "kalman_filter", "rts_smoother", "forecast"):
        assert x64_off[name]["on"] == ["jax:float64"], (name, x64_off[name]["on"])


def test_script_covers_every_entry_point(x64_off):
    assert set(ENTRY_POINTS) <= set(x64_off)


# --------------------------------------------------------------------------- in this process


def test_x64_on_in_process_is_unchanged():
    """tests/conftest.py runs with x64 on: results are JAX float64 arrays, as always."""
    ou = load("ou")
    params = ou.to_sde(**ou.TRUE_PARAMS)
    times = jnp.arange(5.0)
    ll = sdessm.log_likelihood(params, jnp.zeros((5, 1)), times)
    assert isinstance(ll, jax.Array) and ll.dtype == jnp.float64
    smoothed = sdessm.rts_smoother(params, jnp.zeros((5, 1)), times)
    assert isinstance(smoothed.smoothed_means, jax.Array)


class _Pair(NamedTuple):
    first: object
    second: object


@dataclasses.dataclass(frozen=True)
class _Result:
    values: dict
    count: int
    _private: dict = dataclasses.field(default_factory=dict)


def test_to_numpy_walks_results():
    """NamedTuples keep their class, dicts their order, dataclasses their private fields; 0-d
    arrays become NumPy scalars; random keys and non-arrays are left alone."""
    key = jax.random.key(0)
    params = load("ou").to_sde(**load("ou").TRUE_PARAMS)
    tree = _Result(
        values={"z": jnp.ones(2), "a": (jnp.float64(1.5), None, "label", key)},
        count=3,
        _private={"y": jnp.zeros(2)},
    )
    out = to_numpy(_Pair(tree, params))
    assert type(out) is _Pair and type(out.second) is sdessm.SDEParams
    assert all(type(x) is np.ndarray for x in out.second[:7])
    assert out.second.B is None and out.second.D is None  # no inputs: None stays None
    res = out.first
    assert type(res) is _Result and res.count == 3
    assert list(res.values) == ["z", "a"]
    assert type(res.values["z"]) is np.ndarray
    scalar, none, label, same_key = res.values["a"]
    assert type(scalar) is np.float64 and scalar == 1.5
    assert none is None and label == "label" and same_key is key
    assert isinstance(res._private["y"], jax.Array)
    assert to_numpy(None) is None and to_numpy(2.0) == 2.0
