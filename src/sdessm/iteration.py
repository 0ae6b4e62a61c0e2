r"""One EM iteration per path, jitted: the E-step statistics under the current parameters,
then the M-step, returning the next state and the objective at the current one.

- `discrete_iteration`: the closed form of the derivation in the discrete model.
- `continuous_iteration`: closed-form emissions and initial state, the transition part
  maximised numerically over F and L (irregular steps, or a fixed diffusion).
- `structured_iteration`: the whole expected complete-data log-likelihood (plus a log-prior)
  maximised over theta, for a structure theta -> `SDEParams`.

A numerical M-step is kept monotone by `safeguard` (halving toward the current point until the
exact objective does not fall); `squarem` accelerates any of them.
"""

from __future__ import annotations

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from .kalman import loglik_sequence_compiled, map_sequences_jit
from .mstep import closed_form_mstep, expected_complete_loglik, maximize
from .params import LGSSMParams, SDEParams, continuous_discrete, transitions
from .problem import fold_inputs
from .stats import expected_stats

#: Backtracking halvings of a numerical M-step that lowered the log-likelihood (`safeguard`).
SAFEGUARD_HALVINGS = 3


@functools.partial(jax.jit, static_argnames=("config",))
def discrete_iteration(state: LGSSMParams, y, config, inputs=None):
    """E-step + closed-form M-step; returns the next state and the log-likelihood of `state`.
    `inputs` `(B, T, m)`: the known inputs of a state with gains `B`/`D`."""
    fixed, R_structure, per_step, update_transitions, complete, same_mask = config
    stats, logliks = expected_stats(
        state, y, per_step=per_step, complete=complete, same_mask=same_mask, inputs=inputs
    )
    new = closed_form_mstep(stats, state, fixed, R_structure, transitions=update_transitions)
    return new, jnp.sum(logliks), jnp.zeros(())


@functools.partial(jax.jit, static_argnames=("config",))
def continuous_iteration(state: SDEParams, y, reps, groups, config, inputs=None):
    """E-step + closed-form emission/initial M-step + numerical (F, L) M-step (and the drift's
    input gain `B`, when the state has one: `inputs` `(B, T, m)` are then given)."""
    fixed, R_structure, per_step, mstep_iters, complete, same_mask = config
    num_groups = reps.shape[0]
    _, _, lg = continuous_discrete(state, reps, groups)
    batched = groups.ndim == 2
    stats, logliks = expected_stats(
        lg, y, groups, num_groups, per_step, batched, complete, same_mask, inputs
    )
    emit = closed_form_mstep(stats, lg, fixed, R_structure, transitions=False)
    rest = dict(zip(("H", "u", "R", "mu1", "P1"), emit[2:7], strict=True), D=emit.D)
    names = ("F", "L") + (() if state.B is None else ("B",))
    free = {k: getattr(state, k) for k in names if k not in fixed}
    if free:

        def objective(theta):
            trial = state._replace(**(rest | theta))
            A_g, Sigma_g, B_g = transitions(trial, reps, grouped=False)
            trial = LGSSMParams(A_g, Sigma_g, *emit[2:7], B_g, emit.D)
            return expected_complete_loglik(stats, trial, parts=("transitions",))

        free = maximize(objective, free, mstep_iters)
    new = state._replace(**(rest | free))
    if free:  # closed-form emissions with the old (F, L, B) raise the objective: the fallback
        loglik = lambda s: total_loglik(s, y, reps, groups, complete, same_mask, inputs)  # noqa: E731
        emissions_only = state._replace(**rest)
        new = safeguard_via(loglik, state, emissions_only, new)
    return new, jnp.sum(logliks), jnp.zeros(())


def total_loglik(sde: SDEParams, y, reps, groups, complete, same_mask=False, inputs=None):
    """Marginal log-likelihood of all sequences `y` (B, T, p) under `sde` on the grouped steps
    (`inputs` `(B, T, m)` for a model with input gains)."""
    _, _, lg = continuous_discrete(sde, reps, groups)
    batched = groups.ndim == 2
    if inputs is not None:
        lg, y, _ = fold_inputs(lg, y, inputs, batched)
    fn = loglik_sequence_compiled  # the kernel where it applies: no scan to compile
    return jnp.sum(map_sequences_jit(fn, lg, y, batched, complete, same_mask))


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


def safeguard(objective, old, new, halvings: int = SAFEGUARD_HALVINGS, unrolled: bool = False):
    """`new`, or the first of `old + (new - old) / 2^j` (j = 1..halvings) that does not lower
    `objective` below its value at `old`; `old` itself if none does. Jittable.

    A numerical M-step only raises the expected complete-data log-likelihood as far as that can
    be evaluated: with a numerically singular Sigma its transition term is dominated by
    round-off, and a "better" L-BFGS point can lower the log-likelihood itself. Checking the
    objective (log-likelihood, plus a log-prior) costs one filter pass per trial point, which
    keeps generalized EM monotone whatever the conditioning of the expected one.

    The points are evaluated by one `lax.map` (one compiled copy of `objective`), or with
    `unrolled` one after another without a loop primitive: inside a loop the log-prior of a
    NumPyro model failed to compile (an unregistered LAPACK custom call).
    """
    trials = _halvings(old, new, halvings)
    if unrolled:
        values = jnp.stack([objective(point) for point in [old, *trials]])
    else:
        points = jax.tree.map(lambda *leaves: jnp.stack(leaves), old, *trials)
        values = jax.lax.map(objective, points)
    return _first_acceptable(values[1:], values[0], trials, old)[0]


def safeguard_via(objective, old, fallback, new, halvings: int = SAFEGUARD_HALVINGS):
    """`safeguard(objective, old, safeguard(objective, fallback, new, halvings), halvings=0)`
    with all the points evaluated by one `lax.map`: one compiled copy of `objective` instead of
    `halvings + 4` (the log-likelihood's filter scan and discretisation each time). For
    objectives that compile inside a loop, unlike a NumPyro log-prior (see `safeguard`)."""
    trials = _halvings(fallback, new, halvings)
    points = jax.tree.map(lambda *leaves: jnp.stack(leaves), old, fallback, *trials)
    values = jax.lax.map(objective, points)
    chosen, value = _first_acceptable(values[2:], values[1], trials, fallback)
    return _first_acceptable(value[None], values[0], [chosen], old)[0]


@functools.partial(
    jax.jit, static_argnames=("structure", "log_prior", "mstep_iters", "complete", "same_mask")
)
def structured_iteration(
    theta, y, reps, groups, structure, log_prior, mstep_iters, complete, same_mask=False,
    inputs=None,
):  # fmt: skip
    """E-step under `structure(theta)`, then a numerical M-step over theta (plus a log-prior).
    `inputs` `(B, T, m)`: the known inputs of a structure with gains `B`/`D`."""
    sde = structure(theta)
    _, _, lg = continuous_discrete(sde, reps, groups)
    per_step = jnp.ndim(sde.H) == 3
    stats, logliks = expected_stats(
        lg, y, groups, reps.shape[0], per_step, groups.ndim == 2, complete, same_mask, inputs
    )
    prior = (lambda th: jnp.zeros(())) if log_prior is None else log_prior  # noqa: E731

    def objective(th):
        s = structure(th)
        A_g, Sigma_g, B_g = transitions(s, reps, grouped=False)
        trial = LGSSMParams(A_g, Sigma_g, *s[2:7], B_g, s.D)
        return expected_complete_loglik(stats, trial) + prior(th)

    new = maximize(objective, theta, mstep_iters)

    def total(th):
        ll = total_loglik(structure(th), y, reps, groups, complete, same_mask, inputs)
        return ll + prior(th)

    chosen = safeguard(total, theta, new, unrolled=log_prior is not None)
    return chosen, jnp.sum(logliks), prior(theta)


#: SQUAREM's bound on the step length |alpha|: it starts at 1 (plain EM), grows by SQUAREM_GROWTH
#: each time an extrapolation at the bound is accepted and shrinks by it after a rejected one
#: (Varadhan and Roland 2008, section 7; their `step.max0` and `mstep`).
SQUAREM_GROWTH = 4.0
#: Halvings of alpha toward -1 that SQUAREM tries for a valid extrapolated point, then theta2.
SQUAREM_HALVINGS = 8


def squarem(step, valid=None):
    """SQUAREM (Varadhan and Roland 2008) around a monotone EM map `step`, kept monotone.

    From theta0: theta1 = M(theta0), theta2 = M(theta1), r = theta1 - theta0,
    v = theta2 - 2 theta1 + theta0, alpha = -min(|r| / |v|, bound), and the extrapolated point
    theta' = theta0 - 2 alpha r + alpha^2 v (alpha = -1 gives theta2). The next iterate is
    M(theta') when theta' is at least as good as theta1, else theta2, so the objective never
    falls. Each call costs three E-steps (two when there is nothing to extrapolate) and
    returns the objective parts of theta0. The bound adapts (`SQUAREM_GROWTH`): along a curved
    ridge, where EM crawls, a long straight step overshoots, and repeated rejections would
    cost a third E-step for nothing.

    `valid(theta)` says whether a point is a model at all (covariances positive semi-definite,
    for parameters that are not unconstrained coordinates); alpha is halved toward -1 until the
    extrapolated point is valid, so EM's monotonicity argument applies at it.
    """
    bound = [1.0]

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
        alpha = -min(max(1.0, float(jnp.linalg.norm(r)) / norm_v), bound[0])
        at_bound = alpha == -bound[0]

        def point(alpha):
            return unravel(flat0 - 2.0 * alpha * r + alpha**2 * v)

        theta_x = point(alpha)
        halvings = 0
        while valid is not None and alpha < -1.0 and not valid(theta_x):
            if halvings == SQUAREM_HALVINGS:  # no valid extrapolation: rejected
                bound[0] = max(1.0, bound[0] / SQUAREM_GROWTH)
                return theta2, ll0, lp0
            alpha, at_bound, halvings = (alpha - 1.0) / 2.0, False, halvings + 1
            theta_x = point(alpha)
        if alpha == -1.0:  # theta2 itself: no extrapolation left
            bound[0] *= SQUAREM_GROWTH if at_bound else 1.0
            return theta2, ll0, lp0
        theta3, llx, lpx = step(theta_x)
        objective = float(llx) + float(lpx)
        if np.isfinite(objective) and objective >= float(ll1) + float(lp1):
            bound[0] *= SQUAREM_GROWTH if at_bound else 1.0
            return theta3, ll0, lp0
        bound[0] = max(1.0, bound[0] / SQUAREM_GROWTH)
        return theta2, ll0, lp0

    accelerated.bound = bound  # a checkpoint keeps it, so a resumed run steps as one run
    return accelerated


def covariances_valid(params, names=("Sigma", "R", "P1")) -> bool:
    """Whether the covariance fields `names` of `params` (one per step allowed) are symmetric
    positive semi-definite up to round-off relative to their own largest eigenvalue (not the
    absolute floor of the public checks, `_checks.check_covariance`: a variance of 1e-6 in the
    data's units must not go negative): a point SQUAREM may extrapolate to."""
    for name in names:
        C = np.asarray(getattr(params, name), dtype=float)
        if not np.all(np.isfinite(C)):
            return False
        w = np.linalg.eigvalsh(0.5 * (C + np.swapaxes(C, -1, -2)))
        if w.size and float(np.min(w)) < -1e-10 * float(np.max(np.abs(w))):
            return False
    return True


def per_step_emissions(params, T):
    """`params` with `H`, `u` and `R` given one per time step (`T` leading), broadcast from shared
    ones: the state of EM with `emissions="per_step"`."""
    tv = {"H": 2, "u": 1, "R": 2}
    fields = {
        k: jnp.broadcast_to(getattr(params, k), (T,) + getattr(params, k).shape[-n:])
        for k, n in tv.items()
    }
    return params._replace(**fields)


def sde_parametrisation(init: SDEParams, fixed: frozenset):
    """Unconstrained coordinates of an SDEParams (Cholesky factors for R and P1), fixed kept."""
    consts = {k: getattr(init, k) for k in SDEParams._fields if k in fixed}
    theta = {}
    for k in SDEParams._fields:
        if k in fixed or getattr(init, k) is None:  # fixed, or an input gain the model lacks
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
