r"""Unconstrained d-dimensional LTI SDE seen through a free H: the general linear-Gaussian model.

dx = F x dt + L dW, y = H x + u + e, e ~ N(0, diag(noise^2)), with state dimension d, observation
dimension p, L lower-triangular and x_1 ~ N(0, I). mu1 = 0 and P1 = I are constants, not sites:
the state has no units of its own, and they fix its origin and scale.

Parameters and units (time in the units of `times`, y in its own units, the state unitless):

- F (1 / time), (d, d): drift; entries Normal(-r I, r), centred at the stable drift -r I, where
  r = 1 / sqrt(step span) is the rate in the middle (on a log scale) of those the record can
  resolve, between 1 / span and 1 / step. This favours but does not force stability (an
  eigenvalue with positive real part in about a third of the draws for d = 2, half for d = 3):
  the data decide. Centred at a multiple of I with iid entries, the prior is unchanged by a
  rotation of the state, F -> O F O^T.
- L_diag (1 / sqrt(time)), (d,): diagonal of L; HalfNormal(sqrt(r)) each.
- L_offdiag (1 / sqrt(time)), (d (d - 1) / 2,): entries of L below the diagonal, row by row (the
  order of `jnp.tril_indices(d, -1)`); Normal(0, sqrt(r)) each. Absent for d = 1.
- H (y), (p, d): observation matrix; Normal(0, spread_i) in row i.
- u (y), (p,): observation offset (the mean of y when F is stable); Normal(level_i, 2.5 spread_i).
- noise (y), (p,): observation noise sds, R = diag(noise^2); HalfNormal(spread_i) each.

level, spread (per column of y), step and span are `sdessm.priors.data_scales`: the priors are
in the data's own units, so a fit reads the same in any units of y and of time.

`STATE_DIM` and `OBS_DIM` are the defaults of `model(times, y, state_dim=..., obs_dim=...)`
(obs_dim is read from y when y is given); `to_sde` reads d and p from the shapes of F and H.
`from_sde` maps a fitted `SDEParams` back to the named parameters, and `EM_CLOSED_FORM` holds the
`fit_em` options that run the derivation's closed-form EM on this model:
`fit_em(to_sde(**init), y, times, **EM_CLOSED_FORM)`, then `from_sde(result.sde)`.

Identified: only functionals invariant under a change of state coordinates. The likelihood is
unchanged by x -> T x for any invertible T (F -> T F T^-1, L -> T L, H -> H T^-1, with the
initial law mu1 -> T mu1, P1 -> T P1 T^T), and Q = L L^T fixes L only up to L -> L O with O
orthogonal (here resolved by taking L lower-triangular with a positive diagonal). With P1 = I
held fixed, the exact symmetry left is T orthogonal (rotations and reflections of the state); a
general T changes only the law of the first state, whose weight fades with the record length,
so the posterior is nearly flat along those directions too. Raw entries of F, L and H are
therefore not comparable between fits or with the truth. Compare instead

- the eigenvalues of F (rates and frequencies; |Im| < pi / dt to escape aliasing),
- observation-frame quantities: the observation autocovariance
  C(tau) = H expm(F tau) P_inf H^T (P_inf the stationary covariance, F stable), equivalently the
  spectral density of y, H (i w I - F)^-1 Q (-i w I - F)^-T H^T / (2 pi),
- u and R.
A d larger than the data need (a non-minimal realisation: (F, H) not observable, or (F, L) not
controllable) leaves the superfluous directions unidentified altogether.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from sdessm import priors
from sdessm.params import SDEParams
from sdessm.ppl import LTISDE

STATE_DIM = 2
OBS_DIM = 1

TRUE_PARAMS = {
    "F": [[-0.3, 1.2], [-0.8, -0.4]],
    "L_diag": [0.6, 0.4],
    "L_offdiag": [0.3],
    "H": [[1.0, 0.5]],
    "u": [1.0],
    "noise": [0.2],
}

EM_CLOSED_FORM = {"fixed": ("mu1", "P1"), "R_structure": "diagonal"}

_TOL_EPS = 1000  # from_sde's checks allow this many machine epsilons (relative)


def to_sde(F, L_diag, H, u, noise, L_offdiag=()):
    r"""The named parameters as `SDEParams`; d and p are read from the shapes of `F` and `H`.

    Raises:
        ValueError: a shape that does not match d = `F.shape[0]` and p = `H.shape[0]`.
    """
    F, L_diag, H = (jnp.asarray(a, dtype=float) for a in (F, L_diag, H))
    u, noise, L_offdiag = (jnp.asarray(a, dtype=float) for a in (u, noise, L_offdiag))
    d = F.shape[0] if F.ndim == 2 else -1
    p = H.shape[0] if H.ndim == 2 else -1
    expected = {
        "F": (d, d),
        "L_diag": (d,),
        "L_offdiag": (d * (d - 1) // 2,),
        "H": (p, d),
        "u": (p,),
        "noise": (p,),
    }
    given = {"F": F, "L_diag": L_diag, "L_offdiag": L_offdiag, "H": H, "u": u, "noise": noise}
    for name, shape in expected.items():
        if d < 1 or p < 1 or given[name].shape != shape:
            raise ValueError(
                f"`{name}` must have shape {shape} (d from `F`, p from `H`); got "
                f"{given[name].shape} (F {F.shape}, H {H.shape})."
            )
    L = jnp.diag(L_diag).at[np.tril_indices(d, -1)].set(L_offdiag)
    return SDEParams(
        F=F,
        L=L,
        H=H,
        u=u,
        R=jnp.diag(noise**2),
        mu1=jnp.zeros(d, dtype=F.dtype),
        P1=jnp.eye(d, dtype=F.dtype),
    )


def from_sde(params: SDEParams) -> dict:
    r"""The named parameters of a (fitted) `SDEParams`: the inverse of `to_sde`.

    L is taken as the lower Cholesky factor of $Q = L L^\top$ (so any L, of any width m, with the
    same Q gives the same answer) and noise as $\sqrt{\mathrm{diag}\,R}$. Concrete arrays only
    (not under `jit`).

    Raises:
        ValueError: `mu1` is not 0 or `P1` not I (this model holds them fixed), `R` is not
            diagonal, `Q` is not positive definite, or the emissions are per-step.

    Examples:
        >>> import numpy as np
        >>> named = from_sde(to_sde(**TRUE_PARAMS))
        >>> all(np.allclose(named[k], v) for k, v in TRUE_PARAMS.items())
        True
    """
    params = SDEParams(*(a if a is None else np.asarray(a) for a in params)).validate()
    F, L, H, u, R, mu1, P1 = params[:7]
    if H.ndim != 2 or u.ndim != 1 or R.ndim != 2:
        raise ValueError("`from_sde` takes shared emissions; got per-step `H`, `u` or `R`.")
    d = F.shape[0]
    dtype = np.result_type(*params[:7])
    tol = _TOL_EPS * np.finfo(dtype if np.issubdtype(dtype, np.floating) else float).eps
    if np.max(np.abs(mu1), initial=0.0) > tol:
        raise ValueError(f"`mu1` must be 0 in this model (it is fixed); got {mu1.tolist()}.")
    if np.max(np.abs(P1 - np.eye(d))) > tol * max(1.0, np.max(np.abs(P1))):
        raise ValueError(f"`P1` must be I in this model (it is fixed); got {P1.tolist()}.")
    if np.max(np.abs(R - np.diag(np.diag(R)))) > tol * np.max(np.abs(R)):
        raise ValueError(f"`R` must be diagonal in this model; got {R.tolist()}.")
    try:
        chol = np.linalg.cholesky(L @ L.T)
    except np.linalg.LinAlgError:
        raise ValueError(
            "`Q = L L^T` must be positive definite for a lower-triangular L with a positive "
            f"diagonal; got Q with eigenvalues {np.linalg.eigvalsh(L @ L.T).tolist()}."
        ) from None
    return {
        "F": jnp.asarray(F),
        "L_diag": jnp.asarray(np.diag(chol).copy()),
        "L_offdiag": jnp.asarray(chol[np.tril_indices(d, -1)]),
        "H": jnp.asarray(H),
        "u": jnp.asarray(u),
        "noise": jnp.asarray(np.sqrt(np.diag(R))),
    }


def start_from_data(times, y, *, state_dim=STATE_DIM, obs_dim=None, scales=None):
    """A start in the data's units: the canonical-correlation realisation of `y`
    (`sdessm.realisation.subspace_start`, in the basis where the stationary covariance is about
    I, which is this model's P1 = I), its noise from the diagonal of the residual covariance."""
    from sdessm.realisation import subspace_start

    start = subspace_start(y, times, state_dim=int(state_dim))
    return from_sde(start._replace(R=np.diag(np.diag(start.R))))


def model(times, y=None, *, state_dim=STATE_DIM, obs_dim=None, scales=None):
    """NumPyro model: priors on the named parameters, in the units of `scales`, then `y` from
    `LTISDE` at `times`.

    Args:
        times (ArrayLike): observation times `(T,)`.
        y (ArrayLike | None): observations `(T, p)` (or `(B, T, p)`), NaN = missing; None to
            simulate.
        state_dim (int): d.
        obs_dim (int | None): p; read from the last axis of `y` when `y` is given, else `OBS_DIM`.
        scales (DataScales | None): the location, spread and time scales of the priors
            (`sdessm.priors.DataScales`); by default `sdessm.priors.data_scales(times, y)`.
    """
    d = int(state_dim)
    p = OBS_DIM if obs_dim is None else int(obs_dim)
    if y is not None:
        if obs_dim is not None and p != np.shape(y)[-1]:
            raise ValueError(f"`obs_dim` = {p} but `y` has {np.shape(y)[-1]} columns.")
        p = int(np.shape(y)[-1])
    if d < 1 or p < 1:
        raise ValueError(f"`state_dim` and `obs_dim` must be >= 1; got {d} and {p}.")
    s = priors.data_scales(times, y, obs_dim=p) if scales is None else scales
    r = 1.0 / jnp.sqrt(s.step * s.span)
    named = {
        "F": numpyro.sample("F", dist.Normal(-r * jnp.eye(d), jnp.full((d, d), r)).to_event(2)),
        "L_diag": numpyro.sample("L_diag", dist.HalfNormal(jnp.full(d, jnp.sqrt(r))).to_event(1)),
    }
    if d > 1:
        m = d * (d - 1) // 2
        named["L_offdiag"] = numpyro.sample(
            "L_offdiag", dist.Normal(jnp.zeros(m), jnp.full(m, jnp.sqrt(r))).to_event(1)
        )
    H_scale = jnp.broadcast_to(s.spread[:, None], (p, d))
    named["H"] = numpyro.sample("H", dist.Normal(jnp.zeros((p, d)), H_scale).to_event(2))
    named["u"] = numpyro.sample("u", dist.Normal(s.level, 2.5 * s.spread).to_event(1))
    named["noise"] = numpyro.sample("noise", dist.HalfNormal(s.spread).to_event(1))
    numpyro.sample("y", LTISDE(*to_sde(**named), times=times), obs=y)
