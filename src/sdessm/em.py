r"""EM for LTI-SDE state-space models: closed-form EM with SDE recovery, and generalized EM.

- Uniform steps: the closed-form M-step of the derivation in the discrete model, then
  $[[F, Q], [0, -F^\top]] = \log([[A, \Sigma A^{-\top}], [0, A^{-\top}]]) / \Delta t$.
- Irregular steps, or a fixed diffusion: the transition part of the expected complete-data
  log-likelihood, read from statistics grouped by distinct step, is maximised numerically over
  $F$ and $L$ (L-BFGS, warm-started, a step is kept only if it does not lower the objective);
  initial-state and emission parameters keep their closed form.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from ._checks import float64
from .discretize import STEP_DIGITS, _discretize
from .kalman import prepare
from .mstep import R_STRUCTURES, closed_form_mstep, expected_complete_loglik, maximize
from .params import LGSSMParams, SDEParams
from .stats import expected_stats

SDE_FIELDS = ("F", "L", "Q", "H", "u", "R", "mu1", "P1")
LGSSM_FIELDS = LGSSMParams._fields

#: Relative log-likelihood decrease tolerated as round-off.
DECREASE_RTOL = 1e-9
#: A recovered eigenvalue of F with |Im lambda| above this fraction of pi / dt is reported.
NYQUIST_FRACTION = 0.9


class NoRealLogarithmError(ValueError):
    """The fitted transition matrix has no real logarithm: no LTI SDE explains it at this step.

    `result` holds the fitted discrete model (an `EMResult` whose `params` is the `LGSSMParams`).
    """

    def __init__(self, message: str, result: EMResult | None = None):
        super().__init__(message)
        self.result = result


class NotPSDError(ValueError):
    """The diffusion covariance Q recovered from the fit is not positive semi-definite.

    `result` holds the fitted discrete model; `Q` the recovered (indefinite) matrix.
    """

    def __init__(self, message: str, result: EMResult | None = None, Q=None):
        super().__init__(message)
        self.result = result
        self.Q = Q


class NyquistWarning(UserWarning):
    """An eigenvalue of the recovered F lies near the branch cut |Im lambda| = pi / dt."""


@dataclasses.dataclass(frozen=True)
class EMResult:
    """What `fit_em` returns.

    Attributes:
        params: the fitted parameters, in the form given (`SDEParams` or `LGSSMParams`).
        discrete: the fitted discrete model on the data's time grid.
        log_likelihoods: entry k is the exact marginal log-likelihood of the k-th iterate (entry 0
            at `init`); the last entry belongs to `params`.
        converged: whether the relative change fell below `tol`.
        num_iters: the number of EM iterations made.
        report: diagnostics of the fit and of the SDE recovery (eigenvalues of F, most negative
            eigenvalue of Q, Nyquist margin, why EM stopped).
    """

    params: SDEParams | LGSSMParams
    discrete: LGSSMParams
    log_likelihoods: np.ndarray
    converged: bool
    num_iters: int
    report: dict
    _data: tuple = dataclasses.field(default=(), repr=False)

    @property
    def log_likelihood(self) -> float:
        return float(self.log_likelihoods[-1])


def _psd_factor(Q):
    """Cholesky factor of Q, or V sqrt(lambda) for a singular PSD Q."""
    w, V = np.linalg.eigh(Q)
    if w.min() > 1e-12 * max(1.0, np.abs(w).max()):
        return np.linalg.cholesky(Q)
    return V * np.sqrt(np.clip(w, 0.0, None))


@float64
def sde_from_discrete(A, Sigma, dt: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Recover $(F, Q)$ from the discrete transition $(A, \Sigma)$ over a step `dt`.

    $[[F, Q], [0, -F^\top]] = \log([[A, \Sigma A^{-\top}], [0, A^{-\top}]]) / \Delta t$ with the
    principal matrix logarithm. Eigenvalues of F are identified only modulo $2\pi i / \Delta t$:
    the principal branch assumes $|\mathrm{Im}\,\lambda| < \pi / \Delta t$.

    Raises:
        NoRealLogarithmError: `A` is singular or has a real eigenvalue <= 0.

    Examples:
        >>> import numpy as np, sdessm
        >>> A, Sigma = sdessm.discretize([[-0.5]], [[2.0]], 0.3)
        >>> F, Q = sdessm.sde_from_discrete(A, Sigma, 0.3)
        >>> np.round(F, 10).tolist(), np.round(Q, 10).tolist()
        ([[-0.5]], [[4.0]])
    """
    A, Sigma = np.asarray(A, dtype=float), np.asarray(Sigma, dtype=float)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or Sigma.shape != A.shape:
        raise ValueError(f"`A` and `Sigma` must be square and alike; got {A.shape}, {Sigma.shape}.")
    if not dt > 0:
        raise ValueError(f"`dt` must be > 0; got {dt}.")
    d = A.shape[0]
    eig = np.linalg.eigvals(A)
    scale = max(1.0, float(np.abs(eig).max()))
    bad = (np.abs(eig.imag) <= 1e-10 * scale) & (eig.real <= 1e-12 * scale)
    if bad.any():
        raise NoRealLogarithmError(
            f"the fitted A has eigenvalue(s) {np.round(eig[bad].real, 6).tolist()} on the "
            f"non-positive real axis (all eigenvalues: {np.round(eig, 6).tolist()}), so no real "
            f"matrix logarithm and no LTI SDE reproduces it at dt = {dt:g}. Sample more densely "
            "(a shorter step), or fit a structured model whose drift is constrained."
        )
    A_inv_T = np.linalg.solve(A, np.eye(d)).T
    block = np.block([[A, Sigma @ A_inv_T], [np.zeros((d, d)), A_inv_T]])
    log = scipy.linalg.logm(block)
    if np.iscomplexobj(log):
        log = log.real
    log = log / dt
    return log[:d, :d], 0.5 * (log[:d, d:] + log[:d, d:].T)


def _free_fields(init, fixed, B):
    allowed = SDE_FIELDS if isinstance(init, SDEParams) else LGSSM_FIELDS
    fixed = ("P1",) if fixed is None and B == 1 else (() if fixed is None else fixed)
    if isinstance(fixed, str):
        fixed = (fixed,)
    unknown = sorted(set(fixed) - set(allowed))
    if unknown:
        raise ValueError(f"`fixed` names unknown field(s) {unknown}; choose from {list(allowed)}.")
    fixed = frozenset("L" if f == "Q" else f for f in fixed)
    return fixed


def _group_steps(init: SDEParams, y, times, dt):
    """Representative steps (G,) and the group of each transition ((T-1,) or (B, T-1))."""
    T = y.shape[-2]
    if dt is not None:
        return np.array([float(dt)]), np.zeros(T - 1, dtype=np.int32)
    steps = np.diff(np.asarray(times, dtype=float), axis=-1)
    keys = np.round(steps / np.abs(steps).max(), STEP_DIGITS)
    _, first, inverse = np.unique(keys.ravel(), return_index=True, return_inverse=True)
    return steps.ravel()[first], inverse.reshape(steps.shape).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("config",))
def _discrete_iteration(state: LGSSMParams, y, config):
    """E-step + closed-form M-step; returns the next state and the log-likelihood of `state`."""
    fixed, R_structure, per_step, update_transitions = config
    stats, logliks = expected_stats(state, y, per_step=per_step)
    new = closed_form_mstep(stats, state, fixed, R_structure, transitions=update_transitions)
    return new, jnp.sum(logliks)


def _continuous_discrete(state: SDEParams, reps, groups):
    """The discrete model of a continuous state on the grouped steps, per transition."""
    A_g, Sigma_g = _discretize(state.F, state.L @ state.L.T, reps)
    return A_g, Sigma_g, LGSSMParams(A_g[groups], Sigma_g[groups], *state[2:])


@functools.partial(jax.jit, static_argnames=("config",))
def _continuous_iteration(state: SDEParams, y, reps, groups, config):
    """E-step + closed-form emission/initial M-step + numerical (F, L) M-step."""
    fixed, R_structure, per_step, mstep_iters = config
    num_groups = reps.shape[0]
    _, _, lg = _continuous_discrete(state, reps, groups)
    batched = groups.ndim == 2
    stats, logliks = expected_stats(lg, y, groups, num_groups, per_step, params_batched=batched)
    emit = closed_form_mstep(stats, lg, fixed, R_structure, transitions=False)
    free = {k: getattr(state, k) for k in ("F", "L") if k not in fixed}
    if free:

        def objective(theta):
            F, L = theta.get("F", state.F), theta.get("L", state.L)
            A_g, Sigma_g = _discretize(F, L @ L.T, reps)
            trial = LGSSMParams(A_g, Sigma_g, *emit[2:])
            return expected_complete_loglik(stats, trial, parts=("transitions",))

        free = maximize(objective, free, mstep_iters)
    new = SDEParams(free.get("F", state.F), free.get("L", state.L), *emit[2:])
    return new, jnp.sum(logliks)


def _per_step_emissions(params, T):
    tv = {"H": 2, "u": 1, "R": 2}
    fields = {
        k: jnp.broadcast_to(getattr(params, k), (T,) + getattr(params, k).shape[-n:])
        for k, n in tv.items()
    }
    return params._replace(**fields)


@float64
def fit_em(
    init: SDEParams | LGSSMParams,
    y,
    times=None,
    *,
    dt: float | None = None,
    num_iters: int = 500,
    tol: float = 1e-8,
    fixed=None,
    R_structure: str = "full",
    emissions: str = "shared",
    psd: str = "report",
    mstep_iters: int = 30,
    progress: bool = True,
) -> EMResult:
    r"""Maximum-likelihood estimates by EM, started at `init`.

    Args:
        init: starting parameters. An `SDEParams` (with `times` or `dt`) is fitted in continuous
            time and its F, Q recovered; an `LGSSMParams` fits the discrete model alone.
        y: `(T, p)` or `(B, T, p)` observations; NaN = missing (treated as latent in the
            E-step). Trailing all-NaN rows of a sequence are padding.
        times: `(T,)` or `(B, T)` observation times (`SDEParams` only).
        dt: a uniform step instead of `times` (`SDEParams` only).
        num_iters: most EM iterations.
        tol: stop when the log-likelihood changes by less than `tol * max(1, |loglik|)`.
        fixed: field names held at their `init` value, e.g. `("H", "u")`; `"Q"` and `"L"` both
            mean the diffusion. Defaults to `("P1",)` for one sequence (where the M-step would
            collapse P1 to the smoothed covariance of a single draw) and `()` for several; an
            explicit value replaces the default.
        R_structure: `"full"`, `"diagonal"` or `"isotropic"` observation noise.
        emissions: `"shared"` or `"per_step"` (own H_k, u_k, R_k per time step, learned from B
            i.i.d. sequences).
        psd: what to do when the recovered Q is not PSD: `"report"` raises `NotPSDError` with
            the fit attached, `"nearest"` replaces Q by the nearest PSD matrix (flagged in the
            report).
        mstep_iters: L-BFGS steps of a numerical M-step.
        progress: show a progress bar.

    Returns:
        An `EMResult`.

    Raises:
        NoRealLogarithmError: the fitted A has no real logarithm (SDE recovery only).
        NotPSDError: the recovered Q is indefinite and `psd="report"`.
    """
    from tqdm.auto import tqdm

    if R_structure not in R_STRUCTURES:
        raise ValueError(f"`R_structure` must be one of {R_STRUCTURES}; got {R_structure!r}.")
    if emissions not in ("shared", "per_step"):
        raise ValueError(f"`emissions` must be 'shared' or 'per_step'; got {emissions!r}.")
    if psd not in ("report", "nearest"):
        raise ValueError(f"`psd` must be 'report' or 'nearest'; got {psd!r}.")
    if int(num_iters) < 0:
        raise ValueError(f"`num_iters` must be >= 0; got {num_iters}.")
    lg0, y_arr, _ = prepare(init, y, times, dt)
    yb = y_arr if y_arr.ndim == 3 else y_arr[None]
    B, T, _ = yb.shape
    if T < 2:
        raise ValueError("`y` must hold at least 2 time steps for EM.")
    fixed = _free_fields(init, fixed, B)
    per_step = emissions == "per_step"
    is_sde = isinstance(init, SDEParams)

    if is_sde:
        init = type(init)(*(jnp.asarray(x, dtype=float) for x in init))
        reps, groups = _group_steps(init, yb, times, dt)
        continuous = len(reps) > 1 or "L" in fixed
    else:
        continuous = False
        if lg0.time_varying()["A"] and not {"A", "Sigma"} <= fixed:
            raise ValueError(
                "an `LGSSMParams` with per-step `A`/`Sigma` can only be fitted with both fixed; "
                "for irregular times fit an `SDEParams` with `times`."
            )

    if continuous:
        state = _per_step_emissions(init, T) if per_step else init
        reps_j, groups_j = jnp.asarray(reps), jnp.asarray(groups)
        config = (fixed, R_structure, per_step, int(mstep_iters))
        step = lambda s: _continuous_iteration(s, yb, reps_j, groups_j, config)  # noqa: E731
    else:
        state = lg0
        discrete_fixed = set(fixed)
        if is_sde and "F" in fixed:
            discrete_fixed.add("A")
        if per_step:
            state = _per_step_emissions(state, T)
        update = not {"A", "Sigma"} <= discrete_fixed
        config = (frozenset(discrete_fixed), R_structure, per_step, update)
        step = lambda s: _discrete_iteration(s, yb, config)  # noqa: E731

    lls: list[float] = []
    report: dict = {"path": "numerical transitions" if continuous else "closed form"}
    converged = False
    previous = state
    with tqdm(total=int(num_iters), desc="EM", disable=not progress, leave=False) as bar:
        for it in range(int(num_iters) + 1):
            new_state, ll = step(state)
            ll = float(ll)
            if not np.isfinite(ll):
                raise FloatingPointError(
                    f"EM iteration {it}: the log-likelihood is {ll}; the parameters have left "
                    "the valid region (a covariance collapsed?). Try fixing P1/R or more data."
                )
            if lls and ll < lls[-1] - DECREASE_RTOL * max(1.0, abs(lls[-1])):
                report["stopped"] = (
                    f"log-likelihood decreased by {lls[-1] - ll:.3g} at iteration {it}; "
                    "returned the previous iterate"
                )
                warnings.warn(f"EM stopped: {report['stopped']}.", RuntimeWarning, stacklevel=3)
                state = previous
                break
            lls.append(ll)
            if len(lls) > 1 and abs(lls[-1] - lls[-2]) <= tol * max(1.0, abs(lls[-1])):
                converged = True
                break
            if it == int(num_iters):
                break
            previous, state = state, new_state
            bar.update(1)
            bar.set_postfix(loglik=f"{ll:.6g}")
    num_done = len(lls) - 1
    report.setdefault("stopped", "converged" if converged else "reached num_iters")

    if continuous:
        _, _, discrete = _continuous_discrete(state, jnp.asarray(reps), jnp.asarray(groups))
        if groups.ndim == 1 and len(reps) == 1:
            discrete = discrete._replace(A=discrete.A[0], Sigma=discrete.Sigma[0])
        params = state
        if len(reps) == 1:
            _report_drift(np.asarray(state.F), float(reps[0]), report)
        else:  # irregular sampling: no single Nyquist limit
            report["eigenvalues_F"] = np.linalg.eigvals(np.asarray(state.F))
    else:
        discrete = state
        params = state
    lls_arr = np.asarray(lls)
    data = (yb if y_arr.ndim == 3 else yb[0], times, dt, fixed, R_structure)
    result = EMResult(params, discrete, lls_arr, converged, num_done, report, data)
    if is_sde and not continuous:
        params = _recover(result, init, float(reps[0]), fixed, psd, report)
        result = dataclasses.replace(result, params=params)
    return result


def _report_drift(F, dt, report):
    eig = np.linalg.eigvals(F)
    report["eigenvalues_F"] = eig
    report["nyquist_margin"] = float(np.pi / dt - np.abs(eig.imag).max())
    if np.abs(eig.imag).max() > NYQUIST_FRACTION * np.pi / dt:
        warnings.warn(
            f"an eigenvalue of F has |Im lambda| = {np.abs(eig.imag).max():.4g}, near the Nyquist "
            f"limit pi/dt = {np.pi / dt:.4g}: frequencies are identified only modulo 2 pi / dt, "
            "so the recovered F may be an alias.",
            NyquistWarning,
            stacklevel=4,
        )


def _recover(result: EMResult, init: SDEParams, dt: float, fixed, psd: str, report: dict):
    """SDEParams from the discrete fit (uniform step `dt`)."""
    lg = result.discrete
    try:
        F, Q = sde_from_discrete(np.asarray(lg.A), np.asarray(lg.Sigma), dt)
    except NoRealLogarithmError as err:
        raise NoRealLogarithmError(str(err), result) from None
    if "F" in fixed:
        F = np.asarray(init.F)
    _report_drift(F, dt, report)
    w = np.linalg.eigvalsh(Q)
    report["Q_min_eigenvalue"] = float(w.min())
    report["psd_replaced"] = False
    if w.min() < -1e-10 * max(1.0, np.abs(w).max()):
        if psd == "report":
            raise NotPSDError(
                f"the diffusion Q recovered from the fit is not PSD: its most negative "
                f"eigenvalue is {w.min():.4g}. The fitted discrete model is in `err.result`; "
                "pass psd='nearest' to replace Q by the nearest PSD matrix.",
                result,
                Q,
            )
        w_all, V = np.linalg.eigh(Q)
        Q = (V * np.clip(w_all, 0.0, None)) @ V.T
        report["psd_replaced"] = True
    dtype = jnp.result_type(float)
    return SDEParams(
        jnp.asarray(F, dtype),
        jnp.asarray(_psd_factor(Q), dtype),
        lg.H,
        lg.u,
        lg.R,
        lg.mu1,
        lg.P1,
    )
