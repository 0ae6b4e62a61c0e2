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
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from ._checks import check_something_observed, float64
from .discretize import _discretize, group_steps
from .identify import SYMMETRIC, check_identified
from .kalman import _filter_one, _loglik_one, _map_sequences, _map_sequences_jit, prepare
from .mstep import R_STRUCTURES, closed_form_mstep, expected_complete_loglik, maximize
from .params import LGSSMParams, SDEParams
from .stats import expected_stats

SDE_FIELDS = ("F", "L", "Q", "H", "u", "R", "mu1", "P1")
LGSSM_FIELDS = LGSSMParams._fields

#: Relative log-likelihood decrease tolerated as round-off.
DECREASE_RTOL = 1e-9
#: Backtracking halvings of a numerical M-step that lowered the log-likelihood (`_safeguard`).
SAFEGUARD_HALVINGS = 3
#: A recovered eigenvalue of F with |Im lambda| above this fraction of pi / dt is reported.
NYQUIST_FRACTION = 0.9
#: With `polish`, EM hands over to the Newton finish once an iteration gains less than this
#: (log-likelihood units): EM's linear convergence is slowest exactly there.
HANDOVER = 1e-3
#: With `polish`, EM also hands over when it crawls: each of the last CRAWL_WINDOW gains more
#: than CRAWL_RATIO times the previous one (then over 4x the last gain remains to be gained).
CRAWL_WINDOW, CRAWL_RATIO = 5, 0.8
#: Most free coordinates for which the finish computes the exact Hessian (a square of that size).
MAX_CERTIFIED_COORDINATES = 200
#: What may follow EM in `fit_em` (see its `finish`).
FINISHES = ("polish", "certify", "none")
#: Most trust-region Newton iterations of the polish; then at most NEWTON_STEPS plain Newton
#: steps, each halved at most NEWTON_HALVINGS times, to meet the certificate's `tol`.
POLISH_ITERATIONS = 200
NEWTON_STEPS, NEWTON_HALVINGS = 8, 20
#: The observed information counts as singular below this fraction of its largest eigenvalue.
FLAT_RTOL = 1e-10


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
        params: the fitted parameters, in the form given (`SDEParams`, `LGSSMParams` or theta).
        discrete: the fitted discrete model on the data's time grid (`A`, `Sigma` per
            transition for irregular steps, with a leading B axis for per-sequence times).
        log_likelihoods: entry k is the exact marginal log-likelihood of the k-th iterate (entry 0
            at `init`); the last entry belongs to `params`.
        converged: whether the estimate is a certified maximum: the observed information is
            positive definite there and a Newton step would gain at most `tol`
            (`report["convergence"]` says which, or why not).
        num_iters: the number of EM iterations made (the Newton finish's in `report["polish"]`).
        report: diagnostics of the fit and of the SDE recovery (eigenvalues of F, most negative
            eigenvalue of Q, Nyquist margin, why EM stopped, the certificate, the gradient norm,
            a flat direction; `log_posteriors` for MAP).
        sde: the fitted `SDEParams` (None for a discrete-only fit).
    """

    params: SDEParams | LGSSMParams
    discrete: LGSSMParams
    log_likelihoods: np.ndarray
    converged: bool
    num_iters: int
    report: dict
    sde: SDEParams | None = None
    _context: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def log_likelihood(self) -> float:
        return float(self.log_likelihoods[-1])

    def standard_errors(self):
        """Standard errors of the free parameters from the observed information.

        The Hessian of the exact marginal log-likelihood (plus the log-prior for MAP) at the
        estimate, by JAX autodiff, in the coordinates F, Q (lower triangle), H, u, R (as
        structured), mu1, P1 (lower triangle) for an SDE fit, the discrete fields for an
        `LGSSMParams` fit, or the leaves of theta for a structured fit.

        Returns:
            (dict | PyTree): a dict of arrays shaped like the fields (NaN where fixed), or for a
                structured fit a pytree shaped like theta.

        Raises:
            ValueError: the Hessian is not negative definite (a boundary estimate, or a
                direction the data do not identify, e.g. F, L and H all free); the message
                names the coordinates of the flattest direction.
        """
        return _standard_errors(self)

    def covariance(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """`(labels, estimate, cov)`: the free coordinates (as in `standard_errors`, e.g.
        `"F[0,1]"`, `"Q[1,0]"`), their values, and the inverse observed information.

        Use it for the delta method on functions of several parameters (eigenvalues of F).
        """
        labels, estimate, cov, _ = _covariance(self)
        return labels, estimate, cov


def _progress_bar():
    """tqdm's notebook bar in Jupyter when ipywidgets is there, else the text bar, silently."""
    import warnings

    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        from tqdm.auto import tqdm
    return tqdm


def _psd_factor(Q):
    """Cholesky factor of Q, or V sqrt(lambda) for a singular PSD Q."""
    w, V = np.linalg.eigh(Q)
    if w.min() > 1e-12 * max(1.0, np.abs(w).max()):
        return np.linalg.cholesky(Q)
    return V * np.sqrt(np.clip(w, 0.0, None))


@float64
def diffusion_from_sigma(F, A, Sigma) -> np.ndarray:
    r"""The diffusion $Q$ whose step covariance under a known drift is `Sigma`.

    $\Sigma = \int_0^{\Delta t} e^{Fs} Q e^{F^\top s} ds$ gives $A Q A^\top - Q = F \Sigma +
    \Sigma F^\top$ with $A = e^{F \Delta t}$: a Stein equation, solved exactly, with a unique
    solution when no two eigenvalues of A multiply to 1 (any stable F). Unlike the matrix
    logarithm it needs no invertible A, so stiff modes that decay within one step are fine.

    Examples:
        >>> import numpy as np, sdessm
        >>> F = np.diag([-500.0, -0.2])
        >>> A, Sigma = sdessm.discretize(F, [[0.3, 0.0], [0.1, 0.5]], 0.1)
        >>> Q = diffusion_from_sigma(F, A, Sigma)
        >>> np.round(Q, 10).tolist()
        [[0.09, 0.03], [0.03, 0.26]]
    """
    import scipy.linalg

    F, A, Sigma = (np.asarray(x, dtype=float) for x in (F, A, Sigma))
    Q = scipy.linalg.solve_discrete_lyapunov(A, -(F @ Sigma + Sigma @ F.T))
    return 0.5 * (Q + Q.T)


def sde_from_discrete(A, Sigma, dt: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Recover $(F, Q)$ from the discrete transition $(A, \Sigma)$ over a step `dt`.

    $[[F, Q], [0, -F^\top]] = \log([[A, \Sigma A^{-\top}], [0, A^{-\top}]]) / \Delta t$ with the
    principal matrix logarithm. Eigenvalues of F are identified only modulo $2\pi i / \Delta t$:
    the principal branch assumes $|\mathrm{Im}\,\lambda| < \pi / \Delta t$.

    Raises:
        NoRealLogarithmError: `A` is singular or has a negative real eigenvalue (the message
            says whether a non-principal real logarithm can exist).

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
    real = np.abs(eig.imag) <= 1e-10 * scale
    zero, negative = real & (np.abs(eig) <= 1e-12 * scale), real & (eig.real < -1e-12 * scale)
    where = f"(all eigenvalues: {_format_eigenvalues(eig)}) at dt = {dt:g}"
    advice = (
        "Sample more densely (a shorter step), or fit a structured model with a constrained drift."
    )
    if zero.any():
        raise NoRealLogarithmError(
            f"the fitted A is singular: eigenvalue(s) {_format_eigenvalues(eig[zero])} {where}. "
            "A mode that decays completely within one step has no logarithm, so its drift is not "
            f"identified. {advice}"
        )
    if negative.any():
        values = np.sort(eig[negative].real)
        clusters = np.split(values, np.flatnonzero(np.diff(values) > 1e-8 * scale) + 1)
        if all(len(c) % 2 == 0 for c in clusters):
            reason = (
                "Each occurs an even number of times, so a real logarithm can exist (when its "
                "Jordan blocks pair up), but not the principal one: the drift would oscillate at "
                "exactly the Nyquist frequency pi / dt, which this step cannot identify."
            )
        else:
            reason = "No real matrix logarithm exists, so no LTI SDE reproduces A at this step."
        raise NoRealLogarithmError(
            f"the fitted A has eigenvalue(s) {_format_eigenvalues(eig[negative])} on the negative "
            f"real axis {where}. {reason} {advice}"
        )
    A_inv_T = np.linalg.solve(A, np.eye(d)).T
    block = np.block([[A, Sigma @ A_inv_T], [np.zeros((d, d)), A_inv_T]])
    log = scipy.linalg.logm(block)
    if np.iscomplexobj(log):
        log = log.real
    log = log / dt
    return log[:d, :d], 0.5 * (log[:d, d:] + log[:d, d:].T)


def _format_eigenvalues(eig) -> str:
    """Eigenvalues as `[-0.5, 0.2+0.3i]`: real ones without an imaginary part, 6 digits."""
    scale = max(1.0, float(np.abs(eig).max())) if np.size(eig) else 1.0

    def one(z):
        if abs(z.imag) <= 1e-10 * scale:
            return f"{z.real:.6g}"
        return f"{z.real:.6g}{z.imag:+.6g}i"

    return "[" + ", ".join(one(complex(z)) for z in eig) + "]"


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


def mask_flags(y) -> tuple[bool, bool]:
    """(no NaN in `y` (B, T, p), every sequence has the NaN pattern of the first): static flags
    of the E-step, which shares one covariance recursion among sequences with one pattern."""
    missing = np.isnan(np.asarray(y))
    return not bool(missing.any()), bool((missing == missing[:1]).all())


def shard_sequences(y, devices="all"):
    """`y` (B, T, p) as one array whose sequences are split evenly over `devices`.

    `devices` is `"all"` (`jax.devices()`: with `jax.distributed` initialised, the devices of
    every process) or a sequence of devices. Every process passes the same full `y`; each device
    receives its block of sequences (`jax.make_array_from_callback`).

    Raises:
        ValueError: no device given, or B not a multiple of their number.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.devices() if isinstance(devices, str) and devices == "all" else devices
    if isinstance(devices, str) or not len(devices):
        raise ValueError(
            f"`devices` must be 'all' or a non-empty list of devices; got {devices!r}."
        )
    y = np.asarray(y)
    if y.ndim != 3 or y.shape[0] % len(devices):
        raise ValueError(
            f"`devices`: the {y.shape[0] if y.ndim == 3 else 1} sequence(s) of `y` cannot be "
            f"split evenly over {len(devices)} devices; use a number of sequences that is a "
            "multiple of the number of devices, or fewer devices."
        )
    mesh = Mesh(np.asarray(devices), ("sequences",))
    sharding = NamedSharding(mesh, PartitionSpec("sequences"))
    return jax.make_array_from_callback(y.shape, sharding, lambda index: y[index])


def _observed_transitions(y) -> int:
    """Transitions within the observed span of each sequence of `y` (B, T, p), summed."""
    observed = np.any(~np.isnan(np.asarray(y)), axis=-1)
    last = np.where(observed.any(axis=1), y.shape[1] - 1 - np.argmax(observed[:, ::-1], axis=1), 0)
    return int(np.sum(last))


def _group_steps(y, times, dt):
    """Representative steps (G,) and the group of each transition ((T-1,) or (B, T-1))."""
    T = y.shape[-2]
    if dt is not None:
        return np.array([float(dt)]), np.zeros(T - 1, dtype=np.int32)
    return group_steps(np.diff(np.asarray(times, dtype=float), axis=-1))


@functools.partial(jax.jit, static_argnames=("config",))
def _discrete_iteration(state: LGSSMParams, y, config):
    """E-step + closed-form M-step; returns the next state and the log-likelihood of `state`."""
    fixed, R_structure, per_step, update_transitions, complete, same_mask = config
    stats, logliks = expected_stats(
        state, y, per_step=per_step, complete=complete, same_mask=same_mask
    )
    new = closed_form_mstep(stats, state, fixed, R_structure, transitions=update_transitions)
    return new, jnp.sum(logliks), jnp.zeros(())


def _continuous_discrete(state: SDEParams, reps, groups, Q=None):
    """The discrete model of a continuous state on the grouped steps, per transition.

    `Q` overrides `state.L @ state.L.T` (standard errors work with Q itself).
    """
    A_g, Sigma_g = _discretize(state.F, state.L @ state.L.T if Q is None else Q, reps)
    return A_g, Sigma_g, LGSSMParams(A_g[groups], Sigma_g[groups], *state[2:])


@functools.partial(jax.jit, static_argnames=("config",))
def _continuous_iteration(state: SDEParams, y, reps, groups, config):
    """E-step + closed-form emission/initial M-step + numerical (F, L) M-step."""
    fixed, R_structure, per_step, mstep_iters, complete, same_mask = config
    num_groups = reps.shape[0]
    _, _, lg = _continuous_discrete(state, reps, groups)
    batched = groups.ndim == 2
    stats, logliks = expected_stats(
        lg, y, groups, num_groups, per_step, batched, complete, same_mask
    )
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
    if free:  # closed-form emissions with the old (F, L) raise the objective: the fallback
        loglik = lambda s: _total_loglik(s, y, reps, groups, complete, same_mask)  # noqa: E731
        emissions_only = SDEParams(state.F, state.L, *emit[2:])
        new = _safeguard_via(loglik, state, emissions_only, new)
    return new, jnp.sum(logliks), jnp.zeros(())


def _total_loglik(sde: SDEParams, y, reps, groups, complete, same_mask=False):
    """Marginal log-likelihood of all sequences `y` (B, T, p) under `sde` on the grouped steps."""
    _, _, lg = _continuous_discrete(sde, reps, groups)
    batched = groups.ndim == 2
    return jnp.sum(_map_sequences_jit(_loglik_one, lg, y, batched, complete, same_mask))


def _crawling(objectives) -> bool:
    """EM converging linearly and slowly: each of the last `CRAWL_WINDOW` gains is more than
    `CRAWL_RATIO` times the one before, so what is left is many times the last gain."""
    gains = np.diff(np.asarray(objectives[-CRAWL_WINDOW - 1 :], dtype=float))
    if len(gains) < CRAWL_WINDOW or np.any(gains <= 0):
        return False
    return bool(np.all(gains[1:] > CRAWL_RATIO * gains[:-1]))


def _halvings(old, new, halvings: int):
    """`new`, then `old + (new - old) / 2^j` for j = 1..halvings."""
    return [new] + [
        jax.tree.map(lambda a, b, t=0.5**j: b + t * (a - b), new, old)
        for j in range(1, halvings + 1)
    ]


def _first_acceptable(values, base, trials, old):
    """The first of `trials` whose value is finite and >= `base`, and its value; else `old` and
    `base`."""
    ok = jnp.isfinite(values) & (values >= base)
    first = jnp.argmax(ok)
    chosen = jax.tree.map(lambda *leaves: jnp.stack(leaves)[first], *trials)
    chosen = jax.tree.map(lambda a, b: jnp.where(jnp.any(ok), a, b), chosen, old)
    return chosen, jnp.where(jnp.any(ok), values[first], base)


def _safeguard(objective, old, new, halvings: int = SAFEGUARD_HALVINGS):
    """`new`, or the first of `old + (new - old) / 2^j` (j = 1..halvings) that does not lower
    `objective` below its value at `old`; `old` itself if none does. Jittable.

    A numerical M-step only raises the expected complete-data log-likelihood as far as that can
    be evaluated: with a numerically singular Sigma its transition term is dominated by
    round-off, and a "better" L-BFGS point can lower the log-likelihood itself. Checking the
    objective (log-likelihood, plus a log-prior) costs one filter pass per trial point, which
    keeps generalized EM monotone whatever the conditioning of the expected one.
    """
    base = objective(old)
    trials = _halvings(old, new, halvings)
    # evaluated one after another, without a loop primitive: inside `lax.while_loop` the
    # log-prior of a NumPyro model failed to compile (an unregistered LAPACK custom call)
    values = jnp.stack([objective(trial) for trial in trials])
    return _first_acceptable(values, base, trials, old)[0]


def _safeguard_via(objective, old, fallback, new, halvings: int = SAFEGUARD_HALVINGS):
    """`_safeguard(objective, old, _safeguard(objective, fallback, new, halvings), halvings=0)`
    with all the points evaluated by one `lax.map`: one compiled copy of `objective` instead of
    `halvings + 4` (the log-likelihood's filter scan and discretisation each time). For
    objectives that compile inside a loop, unlike a NumPyro log-prior (see `_safeguard`)."""
    trials = _halvings(fallback, new, halvings)
    points = jax.tree.map(lambda *leaves: jnp.stack(leaves), old, fallback, *trials)
    values = jax.lax.map(objective, points)
    chosen, value = _first_acceptable(values[2:], values[1], trials, fallback)
    return _first_acceptable(value[None], values[0], [chosen], old)[0]


@functools.partial(
    jax.jit, static_argnames=("structure", "log_prior", "mstep_iters", "complete", "same_mask")
)
def _structured_iteration(
    theta, y, reps, groups, structure, log_prior, mstep_iters, complete, same_mask=False
):
    """E-step under `structure(theta)`, then a numerical M-step over theta (plus a log-prior)."""
    sde = structure(theta)
    _, _, lg = _continuous_discrete(sde, reps, groups)
    per_step = jnp.ndim(sde.H) == 3
    stats, logliks = expected_stats(
        lg, y, groups, reps.shape[0], per_step, groups.ndim == 2, complete, same_mask
    )
    prior = (lambda th: jnp.zeros(())) if log_prior is None else log_prior  # noqa: E731

    def objective(th):
        s = structure(th)
        A_g, Sigma_g = _discretize(s.F, s.L @ s.L.T, reps)
        return expected_complete_loglik(stats, LGSSMParams(A_g, Sigma_g, *s[2:])) + prior(th)

    new = maximize(objective, theta, mstep_iters)

    def total(th):
        return _total_loglik(structure(th), y, reps, groups, complete, same_mask) + prior(th)

    return _safeguard(total, theta, new), jnp.sum(logliks), prior(theta)


def _squarem(step):
    """SQUAREM (Varadhan and Roland 2008) around a monotone EM map `step`, kept monotone.

    From theta0: theta1 = M(theta0), theta2 = M(theta1), r = theta1 - theta0,
    v = theta2 - 2 theta1 + theta0, alpha = min(-1, -|r| / |v|), and the extrapolated point
    theta' = theta0 - 2 alpha r + alpha^2 v (alpha = -1 gives theta2). The next iterate is
    M(theta') when theta' is at least as good as theta1, else theta2, so the objective never
    falls. Each call costs three E-steps and returns the objective parts of theta0.
    """

    def accelerated(theta0):
        theta1, ll0, lp0 = step(theta0)
        theta2, ll1, lp1 = step(theta1)
        flat0, unravel = jax.flatten_util.ravel_pytree(theta0)
        flat1, flat2 = (
            jax.flatten_util.ravel_pytree(theta1)[0],
            jax.flatten_util.ravel_pytree(theta2)[0],
        )
        r, v = flat1 - flat0, flat2 - 2.0 * flat1 + flat0
        norm_v = float(jnp.linalg.norm(v))
        if norm_v == 0.0:
            return theta2, ll0, lp0
        alpha = min(-1.0, -float(jnp.linalg.norm(r)) / norm_v)
        theta_x = unravel(flat0 - 2.0 * alpha * r + alpha**2 * v)
        theta3, llx, lpx = step(theta_x)
        better = float(llx) + float(lpx) >= float(ll1) + float(lp1)
        return (theta3 if better and np.isfinite(float(llx) + float(lpx)) else theta2), ll0, lp0

    return accelerated


def _per_step_emissions(params, T):
    tv = {"H": 2, "u": 1, "R": 2}
    fields = {
        k: jnp.broadcast_to(getattr(params, k), (T,) + getattr(params, k).shape[-n:])
        for k, n in tv.items()
    }
    return params._replace(**fields)


def _sde_parametrisation(init: SDEParams, fixed: frozenset):
    """Unconstrained coordinates of an SDEParams (Cholesky factors for R and P1), fixed kept."""
    consts = {k: getattr(init, k) for k in SDEParams._fields if k in fixed}
    theta = {}
    for k in SDEParams._fields:
        if k in fixed:
            continue
        v = getattr(init, k)
        theta[k] = jnp.linalg.cholesky(v) if k in ("R", "P1") else v

    def build(th):
        fields = dict(consts)
        for k in th:
            if k in ("R", "P1"):
                C = jnp.tril(th[k])
                fields[k] = C @ jnp.swapaxes(C, -1, -2)
            else:
                fields[k] = th[k]
        return SDEParams(**fields)

    return theta, build


@float64
def fit_em(
    model,
    y,
    times=None,
    *,
    init=None,
    objective: str | None = None,
    model_kwargs: dict | None = None,
    dt: float | None = None,
    num_iters: int = 500,
    tol: float = 1e-6,
    finish: str = "polish",
    fixed=None,
    R_structure: str = "full",
    emissions: str = "shared",
    structure=None,
    log_prior=None,
    psd: str = "report",
    mstep_iters: int = 30,
    accelerate: bool = True,
    progress: bool = True,
    checkpoint=None,
    checkpoint_every: int = 10,
    devices=None,
) -> EMResult:
    r"""Maximum-likelihood (or MAP) estimates by EM.

    `model` is either the starting parameters (`SDEParams`, `LGSSMParams`, or theta with
    `structure`) or a NumPyro model function with one `LTISDE` site. Paths, chosen from the
    arguments:

    - a NumPyro model `model(times, y=None, **model_kwargs)`: generalized EM over its parameter
      sites (`objective="mle"` or `"map"`, the mode of the posterior density of the sites in
      their own coordinates), started at `init` (a dict of site values, or None for the prior
      medians); `params` of the result is a dict of site values. The unconstrained zoo model
      (its module defines `EM_CLOSED_FORM` and `from_sde`) gets the closed form for MLE on
      uniform steps. See `sdessm.infer`.

    - `SDEParams` with uniform steps: the closed-form M-step of the derivation in the discrete
      model, then F and Q recovered by the block matrix logarithm (`sde_from_discrete`).
    - `SDEParams` with irregular `times` (or a fixed diffusion): generalized EM, the transition
      M-step numerical over F and L (statistics grouped by distinct step), the rest closed form.
      Q = L L^T keeps the shape of the given L: an `(d, m)` L with m < d fits a rank-m
      diffusion (an oscillator driven through its velocity only, say); give a `(d, d)` L for a
      free Q. The closed form (uniform steps) always returns a full `(d, d)` factor.
    - `LGSSMParams`: the discrete model alone, closed form.
    - `structure` given: `init` is a pytree `theta` and `structure(theta)` an `SDEParams`; every
      M-step maximises the expected complete-data log-likelihood over theta numerically
      (L-BFGS, warm-started, never lowering it). With `log_prior(theta)` it is MAP.
    - `log_prior` with an `SDEParams` and no `structure`: MAP over all free fields (R and P1
      through Cholesky factors); `log_prior` receives the `SDEParams`.

    Args:
        model (SDEParams | LGSSMParams | PyTree | Callable): starting parameters, or a NumPyro
            model (see above).
        y (ArrayLike): `(T, p)` or `(B, T, p)` observations; NaN = missing (treated as latent
            in the E-step). Trailing all-NaN rows of a sequence are padding and count for
            nothing.
        times (ArrayLike | None): `(T,)` or `(B, T)` observation times (continuous-time
            paths).
        dt: a uniform step instead of `times`.
        num_iters: most EM iterations.
        tol: the accuracy asked for, in log-likelihood units (absolute, whatever the length of
            the series). EM stops when an iteration gains less (with `finish="polish"`: less
            than `HANDOVER` = 1e-3, or when it crawls, where EM is slowest); the fit has
            `converged` only when the observed information at the estimate is positive definite
            and a Newton step would gain at most `tol` (`report["convergence"]` says which, or
            why not).
        finish: what follows EM. `"polish"`: maximise the exact objective from the EM estimate
            by trust-region Newton steps (JAX gradient and Hessian; a step is kept only if it
            does not lower the objective, and saddle points are left) in the free coordinates of
            the standard errors (EM is robust far from the optimum and slow near it; Newton is
            the opposite), then certify the result. `"certify"`: EM's estimate as it is,
            certified or not. `"none"`: EM's estimate, unchecked (`converged` is False, and the
            report says so): for studying EM itself.
        fixed (Sequence[str] | None): field names held at their `init` value, e.g. `("H", "u")`;
            `"Q"` and `"L"` both name the diffusion. Defaults to `("P1",)` for one sequence
            (where the M-step would collapse P1 onto the smoothed covariance of a single draw)
            and `()` for several; an explicit value replaces the default. With the default,
            a start whose free fields the law of y cannot identify (a change of basis of the
            state, say, with H free) is refused before EM, naming the direction and the fields
            to hold (`sdessm.identify`); an explicit `fixed` is run as asked. Not with
            `structure` (keep constants inside it).
        R_structure: `"full"`, `"diagonal"` or `"isotropic"` observation noise (closed form).
        emissions: `"shared"` or `"per_step"` (own H_k, u_k, R_k per time step, learned from B
            i.i.d. sequences).
        structure (Callable | None): a function theta -> `SDEParams` (jittable).
        log_prior (Callable | None): a function of theta (or of the `SDEParams`) giving a
            log-density: MAP.
        psd: when the recovered Q is not PSD: `"report"` raises `NotPSDError` with the fit
            attached; `"nearest"` replaces Q by the nearest PSD matrix, flagged in the report.
        mstep_iters: L-BFGS steps per numerical M-step.
        accelerate: on the numerical paths (`structure`, `log_prior`, NumPyro models), SQUAREM
            extrapolation with a monotone safeguard: one iteration is then three E-steps, and
            EM's slow crawl along weakly identified directions is cut by orders of magnitude.
        progress: show a progress bar.
        checkpoint (str | os.PathLike | None): a file that keeps the run: every
            `checkpoint_every` iterations and at the end, the iterate and the history are written
            to it atomically (a temporary file, then one rename). If the file exists when
            `fit_em` starts, the run resumes from it and ends exactly as an uninterrupted run
            would (EM is deterministic); a finished run is returned as it was, or continued if
            `num_iters` is now larger. A checkpoint of another fit (other data, times, start or
            settings) is refused with a ValueError. For `structure` and `log_prior` the
            functions themselves cannot be compared: resume with the same ones.
        checkpoint_every: iterations between checkpoint writes.
        devices (str | Sequence[jax.Device] | None): spread the sequences of `y` (B, T, p) over
            devices: `"all"` (every device of every process, `jax.devices()`) or a list of
            devices; None keeps them on the default device. B must be a multiple of the number
            of devices. The E-step statistics are sums over sequences, so each device smooths
            its share and the sums are reduced across devices (XLA inserts the all-reduce); the
            result equals the one-device fit to round-off.
        init (dict | None): starting site values of a NumPyro model (only with a model).
        objective: `"mle"` (default) or `"map"`, for a NumPyro model.
        model_kwargs: further keyword arguments of a NumPyro model.

    Returns:
        An `EMResult`.

    Raises:
        NoRealLogarithmError: the fitted A has no real logarithm (SDE recovery).
        NotPSDError: the recovered Q is indefinite and `psd="report"`.
    """
    tqdm = _progress_bar()

    if callable(model) and not isinstance(model, (SDEParams, LGSSMParams)):
        from .infer import fit_em_model

        fields = dict(dt=dt, fixed=fixed, structure=structure, log_prior=log_prior)
        given = sorted(k for k, v in fields.items() if v is not None)
        if given or R_structure != "full" or emissions != "shared":
            raise ValueError(
                f"{given or ['R_structure/emissions']} do not apply to a NumPyro model: express "
                "constants and structure in the model itself."
            )
        return fit_em_model(
            model,
            y,
            times,
            objective=objective or "mle",
            init=init,
            model_kwargs=model_kwargs,
            num_iters=num_iters,
            tol=tol,
            finish=finish,
            psd=psd,
            mstep_iters=mstep_iters,
            progress=progress,
            accelerate=accelerate,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            devices=devices,
        )
    if init is not None or objective is not None or model_kwargs is not None:
        raise ValueError(
            "`init`, `objective` and `model_kwargs` apply to a NumPyro model; with parameters, "
            "pass the starting values as the first argument (and `log_prior` for MAP)."
        )
    init = model
    # argument checks: all of them before the data are read or anything is compiled
    from ._checks import check_count, check_nonnegative

    if structure is None and log_prior is None and not isinstance(init, SDEParams | LGSSMParams):
        raise TypeError(
            "`model` must be SDEParams, LGSSMParams, a NumPyro model function, or theta with "
            f"`structure`; got {type(init).__name__}."
        )
    if R_structure not in R_STRUCTURES:
        raise ValueError(f"`R_structure` must be one of {R_STRUCTURES}; got {R_structure!r}.")
    if emissions not in ("shared", "per_step"):
        raise ValueError(f"`emissions` must be 'shared' or 'per_step'; got {emissions!r}.")
    if psd not in ("report", "nearest"):
        raise ValueError(f"`psd` must be 'report' or 'nearest'; got {psd!r}.")
    num_iters = check_count("num_iters", num_iters)
    mstep_iters = check_count("mstep_iters", mstep_iters)
    tol = check_nonnegative("tol", tol)
    if finish not in FINISHES:
        raise ValueError(f"`finish` must be one of {FINISHES}; got {finish!r}.")
    polish = finish == "polish"
    if fixed is not None and structure is None:
        names = (fixed,) if isinstance(fixed, str) else fixed
        try:
            names = tuple(names)
        except TypeError:
            names = None
        if names is None or not all(isinstance(f, str) for f in names):
            raise TypeError(
                "`fixed` must be a field name or a sequence of field names, e.g. ('H', 'u'); "
                f"got {fixed!r}."
            )
        fixed = names
        _free_fields(init, fixed, 1)  # unknown names
    if int(checkpoint_every) < 1:
        raise ValueError(f"`checkpoint_every` must be >= 1; got {checkpoint_every}.")
    numerical = structure is not None or log_prior is not None
    if structure is not None:
        if fixed is not None:
            raise ValueError("`fixed` does not apply with `structure`: keep constants inside it.")
        sde0 = structure(init)
        if not isinstance(sde0, SDEParams):
            raise TypeError(f"`structure(init)` must return SDEParams; got {type(sde0).__name__}.")
    elif log_prior is not None and not isinstance(init, SDEParams):
        raise TypeError("`log_prior` without `structure` needs an `SDEParams` init.")
    else:
        sde0 = init
    if numerical and (R_structure != "full" or emissions != "shared"):
        raise ValueError(
            "`R_structure` and `emissions` set the closed-form M-step; with `structure` or "
            "`log_prior`, build them into the parameters instead."
        )
    lg0, y_arr, _ = prepare(sde0, y, times, dt)
    yb = y_arr if y_arr.ndim == 3 else y_arr[None]
    B, T, _ = yb.shape
    if T < 2:
        raise ValueError("`y` must hold at least 2 time steps for EM.")
    is_sde = isinstance(sde0, SDEParams)
    fixed_given = fixed
    fixed = _free_fields(sde0, fixed, B) if structure is None else frozenset()
    if not {"H", "u", "R"} <= fixed:
        check_something_observed(yb, "EM would estimate its emission parameters from nothing")
    transitions_free = structure is None and not ({"F", "L"} <= fixed or {"A", "Sigma"} <= fixed)
    if transitions_free and _observed_transitions(yb) == 0:
        raise ValueError(
            "`y` holds no transition between observed time steps: every sequence is observed at "
            "one time at most (trailing all-NaN rows are padding). EM needs a sequence observed "
            "at two times at least, or the transition parameters in `fixed`."
        )
    per_step = emissions == "per_step"
    y_given = yb
    if per_step:
        d = lg0.state_dim
        need = (0 if "H" in fixed else d) + (0 if "u" in fixed else 1) + (0 if "R" in fixed else 1)
        if B < need:
            raise ValueError(
                f"`emissions='per_step'` estimates H_k, u_k, R_k at each step from the B = {B} "
                f"sequences; with these free it needs B >= {need}. Use more sequences, fix some "
                "emission fields, or emissions='shared'."
            )
    offset = None
    per_step_fields = [k for k, n in (("H", 2), ("u", 1), ("R", 2)) if np.ndim(getattr(lg0, k)) > n]
    if per_step_fields and not per_step and not numerical:
        if per_step_fields != ["u"] or "u" not in fixed:
            raise ValueError(
                f"per-step {per_step_fields} with emissions='shared' is supported only for a known "
                "per-step offset `u` held fixed (fixed=(..., 'u')); use emissions='per_step'."
            )
        offset = lg0.u  # a known offset u_k: fit y_k - u_k with u = 0
        yb = yb - offset[None]
        zero_u = jnp.zeros(offset.shape[-1], dtype=offset.dtype)
        lg0 = lg0._replace(u=zero_u)
        sde0 = sde0._replace(u=zero_u)

    if is_sde:
        sde0 = type(sde0)(*(jnp.asarray(x, dtype=float) for x in sde0))
        reps, groups = _group_steps(yb, times, dt)
        reps_j, groups_j = jnp.asarray(reps), jnp.asarray(groups)
    elif lg0.time_varying()["A"] and not {"A", "Sigma"} <= fixed:
        raise ValueError(
            "an `LGSSMParams` with per-step `A`/`Sigma` can only be fitted with both fixed; "
            "for irregular times fit an `SDEParams` with `times`."
        )
    continuous = is_sde and not numerical and (len(reps) > 1 or "L" in fixed)
    complete, same_mask = mask_flags(yb)
    y_host = yb  # the data as given (a sharded array may not be addressable here in full)
    if devices is not None:
        yb = shard_sequences(yb, devices)
    if fixed_given is None and finish != "none" and not numerical and not per_step:
        if offset is None and not any(lg0.time_varying().values()):
            steps = reps[np.reshape(groups, (-1, T - 1))[0]] if is_sde else np.zeros(T - 1)
            check_identified(sde0, fixed, R_structure, steps)

    if numerical:
        if structure is None:
            state, build = _sde_parametrisation(sde0, fixed)
            prior = log_prior

            def log_prior_fn(th):
                return prior(build(th))

            path = "numerical (MAP)"
        else:
            state = jax.tree.map(lambda a: jnp.asarray(a, dtype=float), init)
            build, log_prior_fn = structure, log_prior
            path = "numerical (structured" + (", MAP)" if log_prior is not None else ")")
        iters = int(mstep_iters)
        step = lambda s: _structured_iteration(  # noqa: E731
            s,
            yb,
            reps_j,
            groups_j,
            build,
            log_prior_fn if log_prior is not None else None,
            iters,
            complete,
            same_mask,
        )
        if accelerate:
            step = _squarem(step)
    elif continuous:
        state = _per_step_emissions(sde0, T) if per_step else sde0
        config = (fixed, R_structure, per_step, int(mstep_iters), complete, same_mask)
        step = lambda s: _continuous_iteration(s, yb, reps_j, groups_j, config)  # noqa: E731
        path = "numerical transitions"
    else:
        state = lg0
        discrete_fixed = set(fixed)
        if is_sde and "F" in fixed:
            discrete_fixed.add("A")
        if per_step:
            state = _per_step_emissions(state, T)
        update = not {"A", "Sigma"} <= discrete_fixed
        config = (frozenset(discrete_fixed), R_structure, per_step, update, complete, same_mask)
        step = lambda s: _discrete_iteration(s, yb, config)  # noqa: E731
        path = "closed form"

    lls: list[float] = []
    objectives: list[float] = []
    report: dict = {"path": path}
    converged = False
    previous = state
    start, stopped = 0, None
    if checkpoint is not None:
        from . import checkpoint as ckpt

        key = ckpt.fingerprint(
            state,
            path=path,
            y=y_host,
            times=None if times is None else np.asarray(times, dtype=float),
            dt=None if dt is None else float(dt),
            fixed=tuple(sorted(fixed)),
            R_structure=R_structure,
            emissions=emissions,
            accelerate=bool(accelerate),
            mstep_iters=int(mstep_iters),
        )
        saved = ckpt.load(checkpoint, state, key)
        if saved is not None:
            state, previous = saved["state"], saved["previous"]
            lls, objectives = saved["lls"], saved["objectives"]
            start, stopped = saved["next_iter"], saved["stopped"]
            if stopped is not None and stopped["reason"] == "reached num_iters":
                if int(num_iters) > start:  # continue: iteration `start` is computed again
                    lls, objectives, stopped = lls[:-1], objectives[:-1], None
        save = lambda *a, **k: ckpt.save(checkpoint, *a, key=key, **k)  # noqa: E731
    if stopped is not None:  # a finished run, as it was saved
        converged = bool(stopped["converged"])
        report["stopped"] = stopped["reason"]
    with tqdm(
        total=int(num_iters),
        initial=start,
        desc="EM",
        disable=not progress or stopped is not None,
        leave=False,
    ) as bar:
        for it in range(start, int(num_iters) + 1 if stopped is None else start):
            new_state, ll, lp = step(state)
            ll, objective = float(ll), float(ll) + float(lp)
            if not np.isfinite(objective):
                raise FloatingPointError(
                    f"EM iteration {it}: the objective is {objective}; the parameters have left "
                    "the valid region (a covariance collapsed?). Try fixing P1 or R, or more data."
                )
            if objectives and objective < objectives[-1] - DECREASE_RTOL * max(
                1.0, abs(objectives[-1])
            ):
                report["stopped"] = (
                    f"the objective decreased by {objectives[-1] - objective:.3g} at iteration "
                    f"{it}; returned the previous iterate"
                )
                warnings.warn(f"EM stopped: {report['stopped']}.", RuntimeWarning, stacklevel=3)
                state = previous
                if checkpoint is not None:
                    stop = {"reason": report["stopped"], "converged": False}
                    save(state, state, lls, objectives, it, stopped=stop)
                break
            lls.append(ll)
            objectives.append(objective)
            change = abs(objectives[-1] - objectives[-2]) if len(objectives) > 1 else np.inf
            if change <= (max(tol, HANDOVER) if polish else tol) or (
                polish and _crawling(objectives)
            ):
                converged = True
                if checkpoint is not None:
                    stop = {"reason": "converged", "converged": True}
                    save(state, previous, lls, objectives, it + 1, stopped=stop)
                break
            if it == int(num_iters):
                if checkpoint is not None:  # resumable with a larger num_iters
                    stop = {"reason": "reached num_iters", "converged": False}
                    save(state, previous, lls, objectives, it, stopped=stop)
                break
            previous, state = state, new_state
            if checkpoint is not None and (it + 1) % int(checkpoint_every) == 0:
                save(state, previous, lls, objectives, it + 1)
            bar.update(1)
            bar.set_postfix(loglik=f"{ll:.6g}", refresh=False)
    report.setdefault("stopped", "converged" if converged else "reached num_iters")
    if report["stopped"] == "converged":  # EM's own rule: an iteration gained less than a bound
        last = objectives[-1] - objectives[-2] if len(objectives) > 1 else 0.0
        if polish and last > max(tol, HANDOVER):
            report["stopped"] = "EM crawled: its gains shrank by less than 20% per iteration"
        else:
            report["stopped"] = "the gain per iteration fell below " + (
                f"{max(tol, HANDOVER):g}" if polish else f"tol = {tol:g}"
            )
    if log_prior is not None:
        report["log_posteriors"] = np.asarray(objectives)

    sde = None
    if numerical or continuous:
        sde = build(state) if numerical else state
        _, _, discrete = _continuous_discrete(sde, reps_j, groups_j)
        if groups.ndim == 1 and len(reps) == 1:
            discrete = discrete._replace(A=discrete.A[0], Sigma=discrete.Sigma[0])
        params = sde if (numerical and structure is None) or continuous else state
        if len(reps) == 1:
            _report_drift(np.asarray(sde.F), float(reps[0]), report)
        else:  # irregular sampling: no single Nyquist limit
            report["eigenvalues_F"] = np.linalg.eigvals(np.asarray(sde.F))
    else:
        discrete = params = state
    if offset is not None:
        discrete, params = discrete._replace(u=offset), params._replace(u=offset)
        sde = sde._replace(u=offset) if sde is not None else None
    context = dict(
        y=y_given if y_arr.ndim == 3 else y_given[0],
        reps=reps_j if is_sde else None,
        groups=groups_j if is_sde else None,
        fixed=fixed,
        R_structure=R_structure,
        structure=build if numerical else None,
        log_prior=log_prior_fn if log_prior is not None else None,
    )
    if numerical and structure is None:  # MAP on SDEParams: its coordinates are theta's
        context["theta"] = state
    result = EMResult(
        params, discrete, np.asarray(lls), converged, len(lls) - 1, report, sde, context
    )
    if is_sde and not (numerical or continuous):
        sde = _recover(result, sde0, float(reps[0]), fixed, psd, report)
        result = dataclasses.replace(result, params=sde, sde=sde)
    if devices is not None or per_step or offset is not None:
        report["convergence"] = "not certified: the exact finish does not cover " + (
            "sharded sequences" if devices is not None else "per-step emissions"
        )
        return dataclasses.replace(result, converged=False)
    result = _finish(result, finish, tol, progress)
    if is_sde and not numerical and len(reps) == 1 and result.sde is not None:
        _report_drift(np.asarray(result.sde.F), float(reps[0]), result.report, warn=False)
    return result


def _leaf_labels(tree) -> list[str]:
    """A label per scalar of a pytree, in `ravel_pytree`'s order: `theta[3]` for an array,
    `omega` or `F[0,1]` for the sites of a dict (a NumPyro model's parameters)."""
    if not isinstance(tree, dict):
        return [f"theta[{i}]" for i in range(jax.flatten_util.ravel_pytree(tree)[0].size)]
    labels = []
    for name, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = ".".join(str(getattr(k, "key", k)) for k in name)
        shape = np.shape(leaf)
        labels += [key + (f"[{','.join(map(str, ix))}]" if ix else "") for ix in np.ndindex(shape)]
    return labels


def _coordinates(result: EMResult):
    """Free coordinates of the estimate: `(labels, vector, rebuild, unravel)`.

    `rebuild(vector)` gives `(parameters, Q)`, Q None where the parameters hold it as L L^T or
    have none (discrete fits); `unravel` maps a vector back to theta for structured fits.
    """
    ctx = result._context
    if ctx["structure"] is not None and (
        "theta" in ctx or not isinstance(result.params, SDEParams)
    ):
        theta = ctx.get("theta", result.params)
        flat, unravel = jax.flatten_util.ravel_pytree(theta)
        return (
            _leaf_labels(theta),
            flat,
            lambda v: (ctx["structure"](unravel(v)), None),
            unravel,
        )
    if isinstance(result.params, SDEParams):
        base = result.params._asdict()
        base["Q"] = result.params.Q
        fixed = {("Q" if f == "L" else f) for f in ctx["fixed"]}
        names = ("F", "Q", "H", "u", "R", "mu1", "P1")
    else:
        base = result.params._asdict()
        fixed = set(ctx["fixed"])
        names = LGSSMParams._fields
    labels, pieces, slots = [], [], []
    for name in names:
        if name in fixed:
            continue
        x = jnp.asarray(base[name])
        if name == "R" and ctx["R_structure"] == "isotropic":
            idx = [(0, 0)]
        elif name == "R" and ctx["R_structure"] == "diagonal":
            idx = [(i, i) for i in range(x.shape[-1])]
        elif name in SYMMETRIC and x.ndim == 2:
            idx = [(i, j) for i in range(x.shape[0]) for j in range(i + 1)]
        else:
            idx = list(np.ndindex(x.shape))
        for ix in idx:
            labels.append(f"{name}[{','.join(map(str, ix))}]")
            pieces.append(x[ix])
        slots.append((name, idx))
    vector = jnp.stack(pieces) if pieces else jnp.zeros((0,))

    def rebuild(v):
        fields = dict(base)
        k = 0
        for name, idx in slots:
            x = jnp.asarray(base[name])
            for ix in idx:
                x = x.at[ix].set(v[k])
                k += 1
            if name in SYMMETRIC and x.ndim == 2:
                if name == "R" and ctx["R_structure"] == "isotropic":
                    x = x[0, 0] * jnp.eye(x.shape[0], dtype=x.dtype)
                else:
                    x = jnp.tril(x) + jnp.tril(x, -1).T
            fields[name] = x
        if isinstance(result.params, SDEParams):
            return SDEParams(**{k: fields[k] for k in SDEParams._fields}), fields["Q"]
        return LGSSMParams(**fields), None

    return labels, vector, rebuild, None


def _objective(result: EMResult):
    """The exact objective in the free coordinates of `_coordinates`:
    `(labels, v0, objective, rebuild, unravel)`, `objective(v)` the marginal log-likelihood of
    all sequences (plus the log-prior of a MAP fit in structured coordinates), jittable."""
    ctx = result._context
    y = jnp.asarray(ctx["y"])
    yb = y if y.ndim == 3 else y[None]
    labels, v0, rebuild, unravel = _coordinates(result)

    def objective(v):
        params, Q = rebuild(v)
        if isinstance(params, SDEParams):
            _, _, lg = _continuous_discrete(params, ctx["reps"], ctx["groups"], Q)
            batched = ctx["groups"].ndim == 2
        else:
            lg, batched = params, False
        total = jnp.sum(_map_sequences(_filter_one, lg, yb, batched).log_likelihood)
        if ctx["log_prior"] is not None and unravel is not None:
            total = total + ctx["log_prior"](unravel(v))
        return total

    return labels, v0, objective, rebuild, unravel


def _information(objective, v):
    """The observed information `-hessian(objective)(v)`, symmetrised, as NumPy."""
    hessian = np.asarray(jax.jit(jax.hessian(objective))(jnp.asarray(v)))
    return -0.5 * (hessian + hessian.T)


def _flat_coordinates(labels, info) -> list[tuple[str, float]] | None:
    """None when `info` is positive definite, else the largest components of its flattest
    direction, `[(label, component), ...]`."""
    if not np.all(np.isfinite(info)):
        return [(label, float("nan")) for label in labels[:4]]
    w, V = np.linalg.eigh(info)
    if w.min() > FLAT_RTOL * max(1.0, np.abs(w).max()):
        return None
    top = np.argsort(-np.abs(V[:, 0]))[:4]
    return [(labels[i], float(V[i, 0])) for i in top]


def _flat_direction(labels, info) -> str | None:
    """None when `info` is positive definite, else the coordinates of its flattest direction."""
    flat = _flat_coordinates(labels, info)
    return None if flat is None else ", ".join(f"{name} ({c:+.2f})" for name, c in flat)


@float64
def _covariance(result: EMResult):
    """(labels, estimate vector, inverse observed information, unravel) in free coordinates."""
    ctx = result._context
    labels, v0, objective, _, unravel = _objective(result)
    if ctx["log_prior"] is not None and unravel is None:
        raise ValueError(
            "standard errors of a MAP fit are given in the structured coordinates: fit with "
            "`structure=` to get them."
        )
    cached = ctx.get("information")  # computed by the finish of `fit_em` at this very point
    if cached is not None and np.allclose(cached[0], np.asarray(v0), rtol=1e-12, atol=1e-14):
        info = cached[1]
    else:
        info = _information(objective, v0)
    flat = _flat_direction(labels, info)
    if flat is not None:
        w = np.linalg.eigvalsh(info)
        raise ValueError(
            f"the observed information is not positive definite (smallest eigenvalue "
            f"{w.min():.3g}): the estimate is on a boundary or the data do not identify the "
            f"direction {flat}. Fix some of these parameters (e.g. H) and refit."
        )
    w, V = np.linalg.eigh(info)
    return labels, np.asarray(v0), (V / w) @ V.T, unravel


def _valid(v, rebuild, unravel) -> bool:
    """Whether the coordinates `v` of `_coordinates` give valid parameters: the covariances
    among them (Q, R, P1, Sigma) positive semi-definite (no round-off allowed: the public
    filter factorises them). A structured model is valid by construction."""
    if unravel is not None:
        return True
    params, Q = rebuild(jnp.asarray(v))
    covariances = [Q] + [getattr(params, name, None) for name in ("R", "P1", "Sigma")]
    return all(
        x is None or np.ndim(x) != 2 or np.linalg.eigvalsh(np.asarray(x)).min() >= 0
        for x in covariances
    )


def _at(result: EMResult, v, rebuild, unravel):
    """The `EMResult` with its parameters at the coordinates `v` (same history and context), or
    None when `v` leaves the valid region (a covariance that is not PSD)."""
    ctx = result._context
    v = jnp.asarray(v)
    if not _valid(v, rebuild, unravel):
        return None
    if unravel is not None:
        theta = unravel(v)
        sde = ctx["structure"](theta)
        params = sde if "theta" in ctx else theta
        context = dict(ctx, theta=theta) if "theta" in ctx else dict(ctx)
    else:
        params, Q = rebuild(v)
        context = dict(ctx)
        if isinstance(params, SDEParams):
            if Q is not None:
                Q = np.asarray(Q)
                params = params._replace(L=jnp.asarray(_psd_factor(Q), dtype=params.L.dtype))
            sde = params
        else:
            sde = None
    if sde is not None:
        _, _, discrete = _continuous_discrete(sde, ctx["reps"], ctx["groups"])
        if ctx["groups"].ndim == 1 and ctx["reps"].shape[0] == 1:
            discrete = discrete._replace(A=discrete.A[0], Sigma=discrete.Sigma[0])
    else:
        discrete = params
    return dataclasses.replace(result, params=params, discrete=discrete, sde=sde, _context=context)


def _finish(result: EMResult, finish: str, tol: float, progress: bool = False) -> EMResult:
    """Polish the EM estimate on the exact objective and certify it.

    With `polish`, trust-region Newton steps (SciPy's `trust-exact`, JAX gradient and Hessian)
    and then, if needed, halving Newton steps on the exact marginal log-likelihood (plus
    log-prior), from the EM estimate, in the free coordinates of the standard errors; a point is
    kept only if it does not lower the objective. Then the
    certificate: the fit has converged when the observed information is positive definite and
    the gain a Newton step predicts, g' I^-1 g / 2, is at most `tol` (log-likelihood units).
    Otherwise the report says why: a flat direction (a boundary, or a direction the data do not
    identify, named by its coordinates), or the gain still predicted.
    """
    import scipy.optimize

    report = dict(result.report)
    if finish == "none":
        report["convergence"] = "not checked (finish='none')"
        return dataclasses.replace(result, converged=False, report=report)
    polish = finish == "polish"
    labels, v0, objective, rebuild, unravel = _objective(result)
    n = len(labels)
    if n == 0:
        report["convergence"] = "nothing to certify: every parameter is fixed"
        return dataclasses.replace(result, converged=True, report=report)
    if n > MAX_CERTIFIED_COORDINATES:
        report["convergence"] = (
            f"not certified: {n} free coordinates, more than the {MAX_CERTIFIED_COORDINATES} for "
            "which the exact Hessian is computed"
        )
        return dataclasses.replace(result, converged=False, report=report)
    value_and_grad = jax.jit(jax.value_and_grad(objective))
    v = np.asarray(v0, dtype=float)
    start = value = float(value_and_grad(jnp.asarray(v))[0])
    hessian_at = jax.jit(jax.hessian(objective))
    hessians = {}  # a point's Hessian costs a gradient per coordinate: computed once

    def hessian(x):
        x = np.asarray(x, dtype=float)
        if x.tobytes() not in hessians:
            hessians[x.tobytes()] = np.asarray(hessian_at(jnp.asarray(x)), dtype=float)
        return hessians[x.tobytes()]

    if polish:

        def negative(x):
            f, g = value_and_grad(jnp.asarray(x))
            f, g = float(f), np.asarray(g, dtype=float)
            if not (np.isfinite(f) and np.all(np.isfinite(g)) and _valid(x, rebuild, unravel)):
                return np.inf, np.zeros_like(x)
            return -f, -g

        def curvature(x):
            h = -hessian(x)
            return 0.5 * (h + h.T) if np.all(np.isfinite(h)) else np.eye(len(x))

        bar = _progress_bar()(desc="Newton finish", disable=not progress, leave=False)
        with warnings.catch_warnings(), bar:
            warnings.simplefilter("ignore", RuntimeWarning)  # trial points that meet +inf
            warnings.simplefilter("ignore", scipy.optimize.OptimizeWarning)
            res = scipy.optimize.minimize(
                negative,
                v,
                jac=True,
                hess=curvature,
                method="trust-exact",
                options=dict(maxiter=POLISH_ITERATIONS, gtol=1e-10),
                callback=lambda x: bar.update(1),
            )
        if np.isfinite(res.fun) and -res.fun >= value and _at(result, res.x, rebuild, unravel):
            v, value = np.asarray(res.x, dtype=float), float(-res.fun)
        report["polish"] = {"newton_iterations": int(res.nit), "gain": value - start}
    for step in range(NEWTON_STEPS + 1):
        h = hessian(v)
        info = -0.5 * (h + h.T)
        g = np.asarray(value_and_grad(jnp.asarray(v))[1], dtype=float)
        flat_coordinates = _flat_coordinates(labels, info)
        flat = _flat_direction(labels, info)
        gain = float(0.5 * g @ np.linalg.solve(info, g)) if flat is None else np.inf
        if flat is not None or gain <= tol or not polish or step == NEWTON_STEPS:
            break
        direction = np.linalg.solve(info, g)
        for k in range(NEWTON_HALVINGS):
            trial = v + 0.5**k * direction
            f = float(value_and_grad(jnp.asarray(trial))[0])
            if np.isfinite(f) and f >= value and _at(result, trial, rebuild, unravel):
                v, value = trial, f
                break
        else:
            break  # no step that does not lower the objective: round-off level
    moved = not np.array_equal(v, np.asarray(v0, dtype=float))  # only to valid points
    finished = _at(result, v, rebuild, unravel) if moved else result
    report.update(
        gradient_norm=float(np.linalg.norm(g)),
        predicted_gain=gain if np.isfinite(gain) else None,
        flat_direction=flat,
        flat_coordinates=flat_coordinates,
        coordinates=(list(labels), np.asarray(v, dtype=float)),
    )
    if flat is not None:
        report["convergence"] = (
            "not certified: the log-likelihood is flat along the direction "
            f"{flat} (an estimate on a boundary, or a direction the data do not identify)"
        )
    elif gain <= tol:
        report["convergence"] = (
            f"certified: the observed information is positive definite and a Newton step would "
            f"gain {gain:.2g} <= tol = {tol:g} in log-likelihood"
        )
    else:
        report["convergence"] = (
            f"not certified: a Newton step would still gain {gain:.3g} > tol = {tol:g} in "
            "log-likelihood"
        )
    lls = np.asarray(finished.log_likelihoods)
    if moved:  # the finish moved the estimate: its log-likelihood is the last entry
        ll = float(_objective_loglik(finished))
        lls = np.append(lls, ll)
        if "log_posteriors" in report:
            report["log_posteriors"] = np.append(report["log_posteriors"], value)
    context = dict(finished._context, information=(np.asarray(v, dtype=float), info))
    return dataclasses.replace(
        finished,
        log_likelihoods=lls,
        converged=flat is None and gain <= tol,
        report=report,
        _context=context,
    )


def _objective_loglik(result: EMResult) -> float:
    """The marginal log-likelihood (without log-prior) of the result's parameters."""
    ctx = result._context
    y = jnp.asarray(ctx["y"])
    yb = y if y.ndim == 3 else y[None]
    if result.sde is not None:
        _, _, lg = _continuous_discrete(result.sde, ctx["reps"], ctx["groups"])
        batched = ctx["groups"].ndim == 2
    else:
        lg, batched = result.discrete, False
    return float(jnp.sum(_map_sequences(_filter_one, lg, yb, batched).log_likelihood))


@float64
def _standard_errors(result: EMResult):
    labels, _, cov, unravel = _covariance(result)
    se = np.sqrt(np.diag(cov))
    if unravel is not None:  # the same pytree structure as theta
        return jax.tree.map(np.asarray, unravel(jnp.asarray(se)))
    out: dict[str, np.ndarray] = {}
    for label, value in zip(labels, se, strict=True):
        name, ix = label.split("[")
        ix = tuple(int(i) for i in ix.rstrip("]").split(","))
        if name not in out:
            shape = np.shape(result.params.Q if name == "Q" else getattr(result.params, name))
            out[name] = np.full(shape, np.nan)
        out[name][ix] = value
        if name in SYMMETRIC and len(ix) == 2:
            out[name][ix[::-1]] = value
    if "R" in out and result._context["R_structure"] == "isotropic":
        out["R"] = np.where(np.eye(out["R"].shape[0], dtype=bool), out["R"][0, 0], np.nan)
    return out


def _report_drift(F, dt, report, warn: bool = True):
    eig = np.linalg.eigvals(F)
    report["eigenvalues_F"] = eig
    report["nyquist_margin"] = float(np.pi / dt - np.abs(eig.imag).max())
    if warn and np.abs(eig.imag).max() > NYQUIST_FRACTION * np.pi / dt:
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
    if "F" in fixed:  # A = exp(F dt) is known: Q from Sigma alone, no logarithm needed
        F = np.asarray(init.F, dtype=float)
        Q = diffusion_from_sigma(F, np.asarray(lg.A, dtype=float), np.asarray(lg.Sigma))
    else:
        try:
            F, Q = sde_from_discrete(np.asarray(lg.A), np.asarray(lg.Sigma), dt)
        except NoRealLogarithmError as err:
            raise NoRealLogarithmError(str(err), result) from None
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
