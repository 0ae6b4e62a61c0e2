"""Bad input at every public entry point: one table of calls, each with the exception type and a
message that names the argument and says what was expected.

Every problem is tiny (d = 2, p = 1, T = 4) and every call fails before anything is compiled, so
the whole table runs in seconds. The conventions it checks are listed in docs/conventions.md
("Bad input"): `TypeError` for an argument of the wrong kind (not `SDEParams`, a non-numeric,
boolean or complex array, not a random key), `ValueError` for the wrong shape or value.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sdessm.models import load

import sdessm
from sdessm._checks import PSD_RTOL, SYM_RTOL
from sdessm.discretize import stationary_covariance
from sdessm.infer import fit_nuts
from sdessm.io import read_csv
from sdessm.problem import resolve

OU = load("ou")
TIMES = np.array([0.0, 0.5, 1.0, 1.5])
Y = np.zeros((4, 1))
KEY = jax.random.key(0)


def sde(**overrides) -> sdessm.SDEParams:
    """A damped oscillator observed in its position: d = 2, p = 1."""
    base = dict(
        F=np.array([[0.0, 1.0], [-1.0, -0.5]]),
        L=np.array([[0.0], [0.5]]),
        H=np.array([[1.0, 0.0]]),
        u=np.zeros(1),
        R=np.array([[0.1]]),
        mu1=np.zeros(2),
        P1=np.eye(2),
    )
    return sdessm.SDEParams(**(base | overrides))


def sde2(**overrides) -> sdessm.SDEParams:
    """Both coordinates observed: p = 2, for the symmetry of a 2 x 2 `R`."""
    return sde(**(dict(H=np.eye(2), u=np.zeros(2), R=0.1 * np.eye(2)) | overrides))


def lgssm(**overrides) -> sdessm.LGSSMParams:
    base = dict(A=0.9 * np.eye(2), Sigma=0.1 * np.eye(2)) | sde()._asdict()
    base = {k: v for k, v in base.items() if k in sdessm.LGSSMParams._fields}
    return sdessm.LGSSMParams(**(base | overrides))


def kf(params=None, y=Y, times=TIMES, **kwargs):
    return sdessm.kalman_filter(sde() if params is None else params, y, times, **kwargs)


def em(model=None, y=Y, times=None, **kwargs):
    kwargs = dict(dt=0.5) | kwargs if times is None else kwargs
    return sdessm.fit_em(sde() if model is None else model, y, times, progress=False, **kwargs)


def nuts(**kwargs):
    kwargs = dict(num_warmup=1, num_samples=1, num_chains=1, progress=False) | kwargs
    return fit_nuts(OU.model, Y, TIMES, **kwargs)


def csv(text: str, name: str = "data.csv") -> str:
    """Write `text` to `name` in the current (temporary) folder; return the name."""
    with open(name, "w") as f:
        f.write(text)
    return name


NAN_2x2 = np.array([[1.0, np.nan], [np.nan, 1.0]])
ASYM = 1e3 * SYM_RTOL  # asymmetry beyond the tolerance
NEG = -1e3 * PSD_RTOL  # an eigenvalue below the tolerance

# (id, call, exception type, substring of the message)
CASES = [
    # ---- shapes of the parameters: trailing axes at construction, leading ones by `validate`
    ("F-vector", lambda: kf(sde(F=np.zeros(2))), ValueError, "`F` must have shape (..., 2, 2)"),
    ("F-3d", lambda: kf(sde(F=np.zeros((1, 2, 2)))), ValueError, "`F` must have shape (2, 2)"),
    (
        "F-not-square",
        lambda: kf(sde(F=np.zeros((2, 3)))),
        ValueError,
        "`F` must have shape (..., 2, 2) (d = 2 from `mu1`); got (2, 3).",
    ),
    ("L-rows", lambda: kf(sde(L=np.ones((3, 1)))), ValueError, "`L` must have shape (..., 2, m)"),
    ("L-vector", lambda: kf(sde(L=np.ones(2))), ValueError, "`L` must have shape (..., 2, m)"),
    ("L-3d", lambda: kf(sde(L=np.ones((1, 2, 1)))), ValueError, "`L` must have shape (2, m)"),
    (
        "H-columns",
        lambda: kf(sde(H=np.ones((1, 3)))),
        ValueError,
        "`H` must have shape (..., p, 2) (d = 2 from `mu1`); got (1, 3).",
    ),
    ("H-vector", lambda: kf(sde(H=np.ones(2))), ValueError, "`H` must have shape (..., p, 2)"),
    (
        "u-length",
        lambda: kf(sde(u=np.zeros(2))),
        ValueError,
        "`u` must have shape (..., 1) (p = 1 from `H`); got (2,).",
    ),
    ("R-shape", lambda: kf(sde(R=np.eye(2))), ValueError, "`R` must have shape (..., 1, 1)"),
    ("R-scalar", lambda: kf(sde(R=0.1)), ValueError, "`R` must have shape (..., 1, 1)"),
    ("mu1-matrix", lambda: kf(sde(mu1=np.zeros((1, 2)))), ValueError, "`mu1` must be a vector"),
    ("mu1-column", lambda: kf(sde(mu1=np.zeros((2, 1)))), ValueError, "(d = 1 from `mu1`)"),
    ("mu1-scalar", lambda: sde(mu1=np.zeros(())), ValueError, "`mu1` must have shape (..., d)"),
    ("mu1-length", lambda: kf(sde(mu1=np.zeros(3))), ValueError, "(d = 3 from `mu1`)"),
    ("P1-shape", lambda: kf(sde(P1=np.eye(3))), ValueError, "`P1` must have shape (..., 2, 2)"),
    (
        "validate-R-shape",
        lambda: sde(R=np.ones((2, 3, 1, 1))).validate(),
        ValueError,
        "`R` must have shape (1, 1) or (T, 1, 1)",
    ),
    (
        "replace-F",
        lambda: sde()._replace(F=np.zeros((2, 3))),
        ValueError,
        "`F` must have shape (..., 2, 2) (d = 2 from `mu1`); got (2, 3).",
    ),
    (
        "lgssm-Sigma",
        lambda: lgssm(Sigma=np.eye(3)),
        ValueError,
        "`Sigma` must have shape (..., 2, 2) (d = 2 from `mu1`); got (3, 3).",
    ),
    (
        "lgssm-A-steps",
        lambda: kf(lgssm(A=np.tile(np.eye(2), (5, 1, 1))), times=None),
        ValueError,
        "`A` has a leading axis of 5 transitions; the data have T = 4, so it must be 3 (T-1)",
    ),
    # ---- shapes of the data and times
    ("y-columns", lambda: kf(y=np.zeros((4, 2))), ValueError, "`y` has 2 columns"),
    ("y-vector", lambda: kf(y=np.zeros(4)), ValueError, "`y` must have shape (T, p) or (B, T, p)"),
    ("y-4d", lambda: kf(y=np.zeros((1, 1, 4, 1))), ValueError, "`y` must have shape (T, p)"),
    ("y-no-steps", lambda: kf(y=np.zeros((0, 1)), times=TIMES[:0]), ValueError, "at least one"),
    ("times-length", lambda: kf(times=TIMES[:3]), ValueError, "`times` has 3 entries"),
    ("times-3d", lambda: kf(times=TIMES[None, None]), ValueError, "`times` must have shape (T,)"),
    (
        "times-per-sequence-B",
        lambda: kf(y=np.zeros((2, 4, 1)), times=np.tile(TIMES, (3, 1))),
        ValueError,
        "`times` of shape (3, 4) gives one time grid per sequence, so `y` must be (3, 4, p)",
    ),
    (
        "times-per-sequence-T",
        lambda: kf(y=np.zeros((2, 4, 1)), times=np.tile(TIMES[:3], (2, 1))),
        ValueError,
        "`times` has 3 entries per sequence but `y` has T = 4",
    ),
    # ---- dtypes: numbers only (integers are converted to float), no bool, no complex
    ("F-complex", lambda: kf(sde(F=np.eye(2) * 1j)), TypeError, "`F` must be real"),
    (
        "F-object",
        lambda: kf(sde(F=np.array([[None, 1], [0, 1]], dtype=object))),
        TypeError,
        "`F` must be a numeric array",
    ),
    ("H-strings", lambda: kf(sde(H=np.array([["1", "0"]]))), TypeError, "`H` must be a numeric"),
    ("y-strings", lambda: kf(y=np.full((4, 1), "a")), TypeError, "`y` must be a numeric array"),
    ("y-ragged", lambda: kf(y=[[0.0], [1.0, 2.0]]), TypeError, "`y` must be a numeric array"),
    ("y-bool", lambda: kf(y=np.zeros((4, 1), bool)), TypeError, "`y` must be a numeric array"),
    ("y-complex", lambda: kf(y=np.zeros((4, 1), complex)), TypeError, "`y` must be real"),
    ("times-strings", lambda: kf(times=TIMES.astype(str)), TypeError, "`times` must be a numeric"),
    ("times-bool", lambda: kf(times=TIMES > 0), TypeError, "`times` must be a numeric array"),
    ("dt-string", lambda: kf(times=None, dt="0.5"), TypeError, "`dt` must be a numeric array"),
    ("params-dict", lambda: kf({"F": 1}), TypeError, "`params` must be SDEParams or LGSSMParams"),
    # ---- finiteness (NaN in `y` is a missing value, never an error)
    ("y-inf", lambda: kf(y=np.array([[0.0], [np.inf], [0], [0]])), ValueError, "`y` contains inf"),
    ("F-nan", lambda: kf(sde(F=NAN_2x2)), ValueError, "`F` must be finite"),
    ("L-nan", lambda: kf(sde(L=np.array([[np.nan], [1.0]]))), ValueError, "`L` must be finite"),
    ("H-inf", lambda: kf(sde(H=np.array([[np.inf, 0]]))), ValueError, "`H` must be finite"),
    ("u-nan", lambda: kf(sde(u=np.array([np.nan]))), ValueError, "`u` must be finite"),
    ("mu1-inf", lambda: kf(sde(mu1=np.array([np.inf, 0]))), ValueError, "`mu1` must be finite"),
    ("R-nan", lambda: kf(sde(R=np.array([[np.nan]]))), ValueError, "`R` must be finite"),
    ("P1-nan", lambda: kf(sde(P1=NAN_2x2)), ValueError, "`P1` must be finite"),
    ("times-nan", lambda: kf(times=np.array([0, np.nan, 1, 2])), ValueError, "`times` must be fin"),
    ("times-inf", lambda: kf(times=np.array([0, 1, 2, np.inf])), ValueError, "`times` must be fin"),
    # ---- times and steps
    (
        "times-duplicate",
        lambda: kf(times=np.array([0.0, 0.5, 0.5, 1.0])),
        ValueError,
        "`times` must be strictly increasing; step 1 -> 2 has length 0",
    ),
    (
        "times-decreasing",
        lambda: kf(times=TIMES[::-1]),
        ValueError,
        "`times` must be strictly increasing",
    ),
    ("dt-zero", lambda: kf(times=None, dt=0.0), ValueError, "`dt` must be > 0"),
    ("dt-nan", lambda: kf(times=None, dt=np.nan), ValueError, "`dt` must be finite"),
    ("dt-array", lambda: kf(times=None, dt=[0.5, 1.0]), ValueError, "`dt` must have shape ()"),
    ("times-and-dt", lambda: kf(dt=0.5), ValueError, "give either `times` or `dt`, not both"),
    ("neither-times-nor-dt", lambda: kf(times=None), ValueError, "needs the observation `times`"),
    ("lgssm-with-times", lambda: kf(lgssm()), ValueError, "`times`/`dt` apply to `SDEParams`"),
    # ---- covariances: symmetric to SYM_RTOL, PSD to PSD_RTOL (relative to max(1, max|M|))
    (
        "R-asymmetric",
        lambda: kf(sde2(R=np.array([[1.0, ASYM], [0.0, 1.0]])), y=np.zeros((4, 2))),
        ValueError,
        "`R` must be symmetric (to 1e-08 relative)",
    ),
    (
        "P1-asymmetric",
        lambda: kf(sde(P1=np.array([[1.0, ASYM], [0.0, 1.0]]))),
        ValueError,
        "`P1` must be symmetric (to 1e-08 relative)",
    ),
    ("R-negative", lambda: kf(sde(R=np.array([[NEG]]))), ValueError, "`R` must be positive semi"),
    (
        "P1-indefinite",
        lambda: kf(sde(P1=np.array([[1.0, 2.0], [2.0, 1.0]]))),
        ValueError,
        "`P1` must be positive semi-definite (smallest eigenvalue >= -1e-08 relative)",
    ),
    (
        "Sigma-negative-definite",
        lambda: kf(lgssm(Sigma=-np.eye(2)), times=None),
        ValueError,
        "`Sigma` must be positive semi-definite",
    ),
    # ---- the other Kalman entry points share the checks
    (
        "log_likelihood-R-nan",
        lambda: sdessm.log_likelihood(sde(R=[[np.nan]]), Y, TIMES),
        ValueError,
        "`R` must be finite",
    ),
    (
        "rts_smoother-times",
        lambda: sdessm.rts_smoother(sde(), Y, TIMES[::-1]),
        ValueError,
        "`times` must be strictly increasing",
    ),
    (
        "prepare-y-columns",
        lambda: resolve(lgssm(), np.zeros((4, 3))),
        ValueError,
        "`y` has 3 columns",
    ),
    # ---- inside jax.jit the shape checks still run
    (
        "jit-F-shape",
        lambda: jax.jit(lambda F: sdessm.kalman_filter(sde(F=F), Y, TIMES))(np.eye(3)),
        ValueError,
        "`F` must have shape (..., 2, 2) (d = 2 from `mu1`); got (3, 3).",
    ),
    (
        "jit-F-leading-axis",
        lambda: jax.jit(lambda F: sdessm.kalman_filter(sde(F=F), Y, TIMES))(np.ones((3, 2, 2))),
        ValueError,
        "`F` must have shape (2, 2)",
    ),
    # ---- discretize, discretize_params, stationary_covariance
    (
        "discretize-F-vector",
        lambda: sdessm.discretize(np.ones(2), np.eye(2), 0.1),
        ValueError,
        "`F` must be a square matrix (d, d)",
    ),
    (
        "discretize-L-complex",
        lambda: sdessm.discretize(-np.eye(2), 1j * np.eye(2), 0.1),
        TypeError,
        "`L` must be real",
    ),
    (
        "discretize-dt-nan",
        lambda: sdessm.discretize(-np.eye(2), np.eye(2), np.nan),
        ValueError,
        "`dt` must be finite",
    ),
    (
        "discretize-dt-negative",
        lambda: sdessm.discretize(-np.eye(2), np.eye(2), [0.1, -1.0]),
        ValueError,
        "`dt` must be > 0",
    ),
    (
        "discretize_params-times-2d",
        lambda: sde().discretize(np.tile(TIMES, (2, 1))),
        ValueError,
        "`times` must have shape (T,)",
    ),
    (
        "discretize_params-both",
        lambda: sdessm.discretize_params(sde(), TIMES, dt=0.5),
        ValueError,
        "give exactly one of `times` (T,) and `dt`",
    ),
    (
        "stationary-shape",
        lambda: stationary_covariance(np.eye(2), np.eye(3)),
        ValueError,
        "`F` and `Q` must both be square (d, d)",
    ),
    (
        "stationary-F-complex",
        lambda: stationary_covariance(1j * np.eye(2), np.eye(2)),
        TypeError,
        "`F` must be real",
    ),
    (
        "stationary-F-nan",
        lambda: stationary_covariance(NAN_2x2, np.eye(2)),
        ValueError,
        "`F` must be finite",
    ),
    (
        "stationary-Q-negative-definite",
        lambda: stationary_covariance(-np.eye(2), -np.eye(2)),
        ValueError,
        "`Q` must be positive semi-definite",
    ),
    (
        "stationary-Q-asymmetric",
        lambda: stationary_covariance(-np.eye(2), np.array([[1.0, 0.5], [0.0, 1.0]])),
        ValueError,
        "`Q` must be symmetric",
    ),
    # ---- simulate
    (
        "simulate-num_timesteps-0",
        lambda: sdessm.simulate(KEY, sde(), dt=0.5, num_timesteps=0),
        ValueError,
        "`num_timesteps` must be >= 1 (an integer); got 0",
    ),
    (
        "simulate-num_timesteps-float",
        lambda: sdessm.simulate(KEY, sde(), dt=0.5, num_timesteps=2.5),
        ValueError,
        "`num_timesteps` must be >= 1 (an integer); got 2.5",
    ),
    (
        "simulate-num_sequences-0",
        lambda: sdessm.simulate(KEY, sde(), TIMES, 0),
        ValueError,
        "`num_sequences` must be >= 1 (an integer) or None; got 0",
    ),
    (
        "simulate-num_sequences-float",
        lambda: sdessm.simulate(KEY, sde(), TIMES, 1.5),
        ValueError,
        "`num_sequences` must be >= 1 (an integer) or None; got 1.5",
    ),
    (
        "simulate-times-and-dt",
        lambda: sdessm.simulate(KEY, sde(), TIMES, dt=0.5),
        ValueError,
        "give `times`, or `dt` with `num_timesteps`, not both",
    ),
    (
        "simulate-neither",
        lambda: sdessm.simulate(KEY, sde()),
        ValueError,
        "an `SDEParams` needs `times` (T,), or `dt` and `num_timesteps`",
    ),
    (
        "simulate-times-nan",
        lambda: sdessm.simulate(KEY, sde(), [0.0, np.nan]),
        ValueError,
        "`times` must be finite",
    ),
    (
        "simulate-key-int",
        lambda: sdessm.simulate(0, sde(), TIMES),
        TypeError,
        "`key` must be a JAX random key",
    ),
    (
        "simulate-params-dict",
        lambda: sdessm.simulate(KEY, {}, TIMES),
        TypeError,
        "`params` must be SDEParams or LGSSMParams",
    ),
    (
        "simulate-lgssm-no-T",
        lambda: sdessm.simulate(KEY, lgssm()),
        ValueError,
        "an `LGSSMParams` without per-step fields needs `num_timesteps`",
    ),
    # ---- forecast
    (
        "forecast-before-data",
        lambda: sdessm.forecast(sde(), Y, TIMES, [1.0, 2.0]),
        ValueError,
        "`future_times` must start after the last observation time 1.5",
    ),
    (
        "forecast-future-nan",
        lambda: sdessm.forecast(sde(), Y, TIMES, [2.0, np.nan]),
        ValueError,
        "`future_times` must be finite",
    ),
    (
        "forecast-future-decreasing",
        lambda: sdessm.forecast(sde(), Y, TIMES, [3.0, 2.0]),
        ValueError,
        "`future_times` must be strictly increasing",
    ),
    (
        "forecast-times-decreasing",
        lambda: sdessm.forecast(sde(), Y, TIMES[::-1], [2.0]),
        ValueError,
        "`times` must be strictly increasing",
    ),
    # ---- fit_em: options are checked before the data and before anything is compiled
    (
        "fit_em-fixed-unknown",
        lambda: em(fixed=("H", "G")),
        ValueError,
        "`fixed` names unknown field(s) ['G']",
    ),
    (
        "fit_em-fixed-not-names",
        lambda: em(fixed=3),
        TypeError,
        "`fixed` must be a field name or a sequence of field names",
    ),
    (
        "fit_em-num_iters-negative",
        lambda: em(num_iters=-1),
        ValueError,
        "`num_iters` must be >= 1 (an integer); got -1",
    ),
    (
        "fit_em-num_iters-float",
        lambda: em(num_iters=2.5),
        ValueError,
        "`num_iters` must be >= 1 (an integer); got 2.5",
    ),
    (
        "fit_em-mstep_iters-0",
        lambda: em(mstep_iters=0),
        ValueError,
        "`mstep_iters` must be >= 1 (an integer); got 0",
    ),
    ("fit_em-tol-negative", lambda: em(tol=-1e-3), ValueError, "`tol` must be >= 0"),
    ("fit_em-tol-nan", lambda: em(tol=np.nan), ValueError, "`tol` must be >= 0"),
    (
        "fit_em-tol-string",
        lambda: em(tol="small"),
        TypeError,
        "`tol` must be >= 0 (a real number); got str 'small'",
    ),
    (
        "fit_em-R_structure",
        lambda: em(R_structure="banded"),
        ValueError,
        "`R_structure` must be one of",
    ),
    ("fit_em-psd", lambda: em(psd="clip"), ValueError, "`psd` must be 'report' or 'nearest'"),
    (
        "fit_em-model-dict",
        lambda: em({"F": np.eye(2)}),
        TypeError,
        "`model` must be SDEParams, LGSSMParams, a NumPyro model function, or theta with "
        "`structure`",
    ),
    (
        "fit_em-init-with-params",
        lambda: em(init={"F": 1.0}),
        ValueError,
        "`init`, `objective` and `model_kwargs` apply to a NumPyro model",
    ),
    ("fit_em-times-and-dt", lambda: em(times=TIMES, dt=0.5), ValueError, "not both"),
    (
        "fit_em-neither",
        lambda: sdessm.fit_em(sde(), Y, progress=False),
        ValueError,
        "needs the observation `times`",
    ),
    ("fit_em-R-nan", lambda: em(sde(R=[[np.nan]])), ValueError, "`R` must be finite"),
    (
        "fit_em-model-init-list",
        lambda: sdessm.fit_em(OU.model, Y, TIMES, init=[0.5]),
        TypeError,
        "`init` must be a dict of site values",
    ),
    # ---- fit_nuts: checked before any sampling
    ("fit_nuts-num_chains-0", lambda: nuts(num_chains=0), ValueError, "`num_chains` must be >= 1"),
    (
        "fit_nuts-num_samples-0",
        lambda: nuts(num_samples=0),
        ValueError,
        "`num_samples` must be >= 1",
    ),
    (
        "fit_nuts-num_warmup-negative",
        lambda: nuts(num_warmup=-1),
        ValueError,
        "`num_warmup` must be >= 0",
    ),
    (
        "fit_nuts-init-missing-sites",
        lambda: nuts(init={"theta": 0.5}),
        ValueError,
        "`init` does not fit this model: its parameter sites are ['theta', 'sigma', 'u', 'noise']; "
        "missing ['noise', 'sigma', 'u']",
    ),
    (
        "fit_nuts-init-list",
        lambda: nuts(init=[0.5]),
        TypeError,
        "`init` must be a dict of site values",
    ),
    (
        "fit_nuts-init-shape",
        lambda: nuts(init=dict(OU.TRUE_PARAMS, theta=[0.5, 0.6])),
        ValueError,
        "`init['theta']` must have shape ()",
    ),
    # ---- read_csv
    (
        "read_csv-not-found",
        lambda: read_csv("absent.csv"),
        ValueError,
        "data file absent.csv does not exist",
    ),
    (
        "read_csv-no-time-column",
        lambda: read_csv(csv("s,y\n0,1\n")),
        ValueError,
        "has no time column 't'; its columns are ['s', 'y']",
    ),
    (
        "read_csv-unknown-column",
        lambda: read_csv(csv("t,y\n0,1\n"), columns=["z"]),
        ValueError,
        "has no column(s) ['z']",
    ),
    (
        "read_csv-not-a-number",
        lambda: read_csv(csv("t,y\n0,1\n1,abc\n")),
        ValueError,
        "row 3, column 'y': 'abc' is not a number",
    ),
    (
        "read_csv-times-decrease",
        lambda: read_csv(csv("t,y\n1,1\n0,2\n")),
        ValueError,
        "times must be strictly increasing",
    ),
    (
        "read_csv-time-missing",
        lambda: read_csv(csv("t,y\n0,1\n,2\n")),
        ValueError,
        "the time column 't' is empty",
    ),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, error, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # read_csv cases write their files here
    with pytest.raises(Exception) as err:  # noqa: B017 (the exact type is checked below)
        call()
    assert type(err.value) is error, f"{type(err.value).__name__}: {err.value}"
    assert message in str(err.value), str(err.value)


def test_case_ids_are_unique_and_many():
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids) >= 40


# --------------------------------------------------------------------------- what passes


def test_within_tolerance_passes():
    """Asymmetry and negative eigenvalues of round-off size are accepted."""
    tiny_asym = np.array([[1.0, 1e-3 * SYM_RTOL], [0.0, 1.0]])
    sde(P1=tiny_asym, R=np.array([[-1e-3 * PSD_RTOL]])).validate()
    sde(P1=np.zeros((2, 2)), R=np.zeros((1, 1))).validate()  # singular covariances are fine


def test_integers_are_numbers():
    """Integer arrays are accepted and converted to float; NaN in `y` is a missing value."""
    ints = lgssm(A=np.eye(2, dtype=int), Sigma=np.eye(2, dtype=int), R=np.ones((1, 1), int))
    params, y, *_ = resolve(ints, np.array([[1], [2], [3], [4]]))
    assert params.A.dtype == y.dtype == np.float64
    resolve(lgssm(), np.full((4, 1), np.nan))


def test_value_checks_do_not_run_under_jit():
    """Traced values are unknown: inside `jax.jit` a NaN parameter is not an error."""
    out = jax.jit(lambda F: sde(F=F).validate().F)(np.full((2, 2), np.nan))
    assert np.isnan(out).all()


# --------------------------------------------------------------------------- construction

# a wrong trailing shape for each field (d = 2, p = 1), and the message naming it
WRONG_SHAPES = {
    "F": ((2, 3), "`F` must have shape (..., 2, 2) (d = 2 from `mu1`); got (2, 3)."),
    "L": ((3, 2), "`L` must have shape (..., 2, m) (d = 2 from `mu1`); got (3, 2)."),
    "A": ((2,), "`A` must have shape (..., 2, 2) (d = 2 from `mu1`); got (2,)."),
    "Sigma": ((4, 2, 1), "`Sigma` must have shape (..., 2, 2) (d = 2 from `mu1`); got (4, 2, 1)."),
    "H": ((1, 3), "`H` must have shape (..., p, 2) (d = 2 from `mu1`); got (1, 3)."),
    "u": ((4, 2), "`u` must have shape (..., 1) (p = 1 from `H`); got (4, 2)."),
    "R": ((), "`R` must have shape (..., 1, 1) (p = 1 from `H`); got ()."),
    "mu1": ((), "`mu1` must have shape (..., d), a vector of length d; got ()."),
    "P1": ((2, 1), "`P1` must have shape (..., 2, 2) (d = 2 from `mu1`); got (2, 1)."),
}
FIELD_CASES = [("sde", name) for name in sdessm.SDEParams._fields[:7]] + [
    ("lgssm", name) for name in sdessm.LGSSMParams._fields[:7]
]  # the input gains B and D: tests/test_inputs.py


@pytest.mark.parametrize("kind, name", FIELD_CASES, ids=[f"{k}-{n}" for k, n in FIELD_CASES])
def test_wrong_trailing_shape_raises_at_construction(kind, name):
    """At construction, on `_replace` and on `_make`, under `jax.jit` too; naming the field."""
    build = sde if kind == "sde" else lgssm
    shape, message = WRONG_SHAPES[name]
    bad = np.zeros(shape)
    good = build()
    fields = good._asdict() | {name: bad}
    for make in (
        lambda: build(**{name: bad}),
        lambda: type(good)(**fields),
        lambda: good._replace(**{name: bad}),
        lambda: type(good)._make(fields.values()),
        lambda: jax.jit(lambda x: good._replace(**{name: x}))(bad),
    ):
        with pytest.raises(ValueError) as err:
            make()
        assert str(err.value) == message


def test_leading_axes_are_free_at_construction():
    """Per-step and batch axes pass construction; `validate` judges them at the entry points."""
    ps = lgssm(A=np.tile(0.9 * np.eye(2), (3, 1, 1)), Sigma=np.tile(0.1 * np.eye(2), (3, 1, 1)))
    ps = ps._replace(H=np.ones((4, 1, 2)), u=np.zeros((4, 1)), R=np.ones((4, 1, 1)))
    assert ps.validate(4) is ps
    sde(L=np.ones((2, 3)), H=np.ones((5, 3, 2)), u=np.zeros((5, 3)), R=np.ones((5, 3, 3)))
    batched = sdessm.SDEParams(*(np.stack([x, x]) for x in sde()[:7]))
    assert batched.F.shape == (2, 2, 2)
    nested = sdessm.SDEParams(**{k: np.asarray(v).tolist() for k, v in sde()._asdict().items()})
    assert nested.validate() is nested  # nested lists of numbers are checked as arrays
    with pytest.raises(ValueError, match="`P1` must have shape"):
        sde(P1=[[1.0, 0.0]])


def test_batched_params_under_vmap():
    """Parameters stacked with `jax.tree.map`, then a log-likelihood per parameter set; `in_axes`
    prefixes of ints and None are trees of the same class."""
    p1, p2 = sde(), sde(F=np.array([[0.0, 1.0], [-2.0, -0.3]]))
    one = [float(sdessm.log_likelihood(p, Y, TIMES)) for p in (p1, p2)]
    batched = jax.tree.map(lambda *x: jnp.stack(x), p1, p2)
    got = jax.vmap(sdessm.log_likelihood, in_axes=(0, None, None))(batched, Y, TIMES)
    np.testing.assert_allclose(got, one, rtol=1e-12)
    axes = sdessm.SDEParams(0, None, None, None, None, None, None)
    got = jax.vmap(sdessm.log_likelihood, in_axes=(axes, None, None))(
        p1._replace(F=batched.F), Y, TIMES
    )
    np.testing.assert_allclose(got, one, rtol=1e-12)
    assert jax.tree.map(lambda _: None, p1) == sdessm.SDEParams(*[None] * 7)


def test_transformations_rebuild_params_freely():
    """jit, grad, vmap, eval_shape, forward and reverse mode, and JAX's own tree plumbing (leaves
    that are no parameters, or of any shape) never trip the construction check."""
    p = sde()
    loglik = lambda q: sdessm.log_likelihood(q, Y, TIMES)  # noqa: E731
    assert np.isclose(jax.jit(loglik)(p), loglik(p))
    grad = jax.grad(loglik)(p)
    assert type(grad) is sdessm.SDEParams and grad.F.shape == (2, 2)
    norms = jax.tree.map(jnp.linalg.norm, grad)  # 0-d leaves
    assert type(norms) is sdessm.SDEParams and np.ndim(norms.F) == 0
    shapes = jax.eval_shape(lambda q: q._replace(F=2.0 * q.F), p)
    assert shapes.F.shape == (2, 2) and isinstance(shapes.F, jax.ShapeDtypeStruct)
    treedef = jax.tree.structure(p)
    assert jax.tree.unflatten(treedef, [object()] * 7).F is not None
    jac = jax.jacfwd(lambda s: p._replace(F=s[0] * p.F))(np.ones(3))  # a trailing axis of 3
    assert jac.F.shape == (2, 2, 3)
    stacked = jax.vmap(lambda s: p._replace(F=s * p.F), out_axes=1)(np.ones(4))
    assert stacked.F.shape == (2, 4, 2)
    _, pullback = jax.vjp(lambda q: q.F.sum(), jax.tree.map(np.asarray, p))
    assert type(pullback(1.0)[0]) is sdessm.SDEParams
    ints = p._replace(mu1=np.zeros(2, dtype=int))
    (tangent,) = jax.vjp(lambda q: q.F.sum(), ints)[1](1.0)
    assert tangent.mu1.dtype == jax.dtypes.float0
    keys = [k.name for k in jax.tree_util.tree_flatten_with_path(p)[0][0][0]]
    assert keys == ["F"]  # key paths as for any NamedTuple


def test_pickle_copy_and_namedtuple_api():
    import copy
    import pickle

    p = sde()
    for q in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p), copy.copy(p)):
        assert type(q) is sdessm.SDEParams
        assert all(np.array_equal(a, b) for a, b in zip(q, p, strict=True))
    norms = jax.tree.map(np.linalg.norm, p)  # no parameters, but copied as they are
    assert pickle.loads(pickle.dumps(norms)).F == norms.F
    lg = lgssm()
    assert pickle.loads(pickle.dumps(lg))._fields == sdessm.LGSSMParams._fields
    assert isinstance(p, tuple) and len(p) == 9 and p.B is None and p.D is None
    assert list(p._asdict()) == list(sdessm.SDEParams._fields)
    assert repr(p).startswith("SDEParams(F=array(")
    F, *_ = p
    assert F is p.F and p[0] is p.F
