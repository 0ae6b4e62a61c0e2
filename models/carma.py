r"""CARMA(p, q) in companion form, with stationarity built in through the autoregressive roots.

The state x = (z, z', ..., z^(p-1)) of a p-th order linear SDE a(D) z = sigma dW/dt is observed
through the moving-average polynomial b: y = b_0 z + b_1 z' + ... + b_q z^(q) + mu + e, b_0 = 1.
F is the companion matrix of a(s) = s^p + a_{p-1} s^{p-1} + ... + a_0 (ones on the
superdiagonal, last row -a_0 .. -a_{p-1}), L = sigma e_p, H = [1, b_1, ..., b_q, 0, ..., 0],
q < p. The spectral density of the noise-free part is sigma^2 |b(i w)|^2 / |a(i w)|^2 / (2 pi).

a(s) is not sampled coefficient by coefficient: it is the product of floor(p/2) quadratic
factors s^2 + 2 zeta_j omega_j s + omega_j^2 and, for odd p, one linear factor s + lam, so every
root has a negative real part and every prior draw is stationary.

Parameters and units (time in the units of `times`, y in its own units):

- omega (radians / time), shape (floor(p/2),): natural frequencies of the quadratic factors,
  increasing. omega_1 ~ `sdessm.priors.frequency` (LogNormal with 95% of its mass between
  2 pi / span of the record and the Nyquist frequency pi / step) and each log-ratio
  log(omega_{j+1} / omega_j) ~ LogNormal(log 0.7, 0.7) (median ratio 2): positive increments of
  log omega.
- zeta (dimensionless), shape (floor(p/2),): damping ratios; LogNormal(log 0.3, 1) each
  (median 0.3; about 11% prior mass above 1, so overdamped factors, two real roots, are allowed).
- lam (1 / time), odd p only: the real root -lam; `sdessm.priors.rate` (LogNormal with 95% of
  its mass between 1 / span and 1 / step).
- sigma (y / time^(p - 1/2)): diffusion of z^(p-1); given the rest, HalfNormal with the
  stationary sd of the noise-free part ~ HalfNormal(2 spread).
- b (time^j for b_j), shape (q,): moving-average coefficients b_1 .. b_q; given omega_1,
  b_j omega_1^j ~ Normal(0, 1) each.
- mu (y): the mean of y; Normal(level, 2.5 spread).
- noise (y): observation noise sd; HalfNormal(spread).

level and spread are the median and robust sd of y (`sdessm.priors.data_scales`): the priors are
in the data's own units, so a fit reads the same in any units of y and of time.

Orders: `P` and `Q` (module constants) are the defaults of `model(times, y, p=P, q=Q)`;
`to_sde` reads p and q from the shapes of `omega`, `lam` and `b`. On the command line,
`--model carma:3` is p = 3, q = 0 and `--model carma:3:1` is p = 3, q = 1 (`ORDERS`);
`true_params(p, q)` gives values to simulate at for any orders. The initial state is the
stationary law N(0, P_inf), F P_inf + P_inf F^T + L L^T = 0. `TRUE_PARAMS` (p = 2, q = 1) is a
lightly damped oscillation (period about 4.2, decay time about 6.7) with an MA term, recoverable
from T = 1000 steps of dt = 0.1.

Identified: the data fix the spectral density and mu and noise, hence

- the AR roots, as a set, given steps short enough that the oscillations are not aliased
  (omega_j sqrt(1 - zeta_j^2) < pi / dt) and a record long against 1 / (zeta_j omega_j). Which
  quadratic factor is "first" is a label-switching symmetry, broken here by the increasing omega.
  With overdamped factors the real roots can still be grouped into factors in several ways (p = 3
  with three real roots: which one is lam), so such posteriors may stay multimodal.
- b only up to reflecting its roots across the imaginary axis (r -> -r, conjugate pairs together):
  the likelihood depends on b through |b(i w)|^2 alone. For q = 1 only |b_1| is identified, and
  with the symmetric prior the posterior of b_1 is bimodal (+/- b_1); b is unique in minimum-phase
  form (every root of b in the left half-plane; for q = 1, b_1 > 0), so compare b after
  reflecting its roots there.
- sigma, mu and noise. An MA root equal to an AR root cancels it (a lower-order process): near
  such a cancellation both are poorly identified.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints, transforms

from sdessm import priors
from sdessm.discretize import stationary_covariance
from sdessm.moments import moments, spectral_peaks
from sdessm.params import SDEParams
from sdessm.ppl import LTISDE

P = 2
Q = 1

TRUE_PARAMS = {"omega": [1.5], "zeta": [0.1], "sigma": 1.0, "b": [0.5], "mu": 0.5, "noise": 0.2}

#: The keyword arguments of `model` that `--model carma:P:Q` sets, in that order (an order not
#: given is 0: `carma:3` is p = 3, q = 0).
ORDERS = ("p", "q")


def check_orders(p, q) -> None:
    """Refuse orders that are not a CARMA(p, q): p >= 1 and 0 <= q < p, whole numbers.

    Raises:
        ValueError: orders that are not whole numbers, p < 1, or q outside [0, p).
    """
    if not all(isinstance(v, int | np.integer) for v in (p, q)):
        raise ValueError(f"CARMA(p, q) needs whole numbers p and q; got p = {p!r}, q = {q!r}.")
    if p < 1 or not 0 <= q < p:
        raise ValueError(f"CARMA(p, q) needs p >= 1 and 0 <= q < p; got p = {p}, q = {q}.")


def true_params(p=P, q=Q) -> dict:
    """Values to simulate CARMA(p, q) at: `TRUE_PARAMS` for the default orders; otherwise
    frequencies 1.5, 3, 6, ... with damping 0.1, lam = 0.5 (odd p), b_j = 0.5^j, mu = 0.5,
    noise = 0.2, and sigma set so that the noise-free part has the stationary sd of
    `TRUE_PARAMS`.

    Raises:
        ValueError: orders that are not a CARMA(p, q) (`check_orders`).

    Examples:
        >>> sorted(true_params(3, 0))
        ['lam', 'mu', 'noise', 'omega', 'sigma', 'zeta']
        >>> true_params() == TRUE_PARAMS
        True
    """
    check_orders(p, q)
    if (p, q) == (P, Q):
        return {k: list(v) if isinstance(v, list) else v for k, v in TRUE_PARAMS.items()}
    k = p // 2
    named = {"omega": [1.5 * 2.0**j for j in range(k)], "zeta": [0.1] * k} if k else {}
    if p % 2:
        named["lam"] = 0.5
    if q:
        named["b"] = [0.5**j for j in range(1, q + 1)]
    target, unit = to_sde(**TRUE_PARAMS), to_sde(1.0, 0.0, 1.0, **named)
    sd = [float(np.sqrt((s.H @ s.P1 @ s.H.T)[0, 0])) for s in (target, unit)]
    return {**named, "sigma": sd[0] / sd[1], "mu": 0.5, "noise": 0.2}


def ar_coefficients(omega, zeta, lam=None):
    r"""Coefficients $[1, a_{p-1}, \dots, a_0]$ of $a(s)$, highest power first, from its factors.

    Args:
        omega (ArrayLike): `(k,)` natural frequencies $\omega_j$ of the quadratic factors
            $s^2 + 2 \zeta_j \omega_j s + \omega_j^2$.
        zeta (ArrayLike): `(k,)` their damping ratios $\zeta_j$.
        lam (float | None): the root $-\lambda$ of the linear factor $s + \lambda$ (odd p),
            or None.

    Returns:
        (Array): `(p + 1,)`, p = 2k (+ 1 with `lam`).

    Examples:
        >>> import jax.numpy as jnp
        >>> ar_coefficients(jnp.array([2.0]), jnp.array([0.25]), lam=1.0).tolist()  # (s^2+s+4)(s+1)
        [1.0, 2.0, 5.0, 4.0]
    """
    omega, zeta = jnp.asarray(omega, dtype=float), jnp.asarray(zeta, dtype=float)
    if omega.ndim != 1 or omega.shape != zeta.shape:
        raise ValueError(
            f"`omega` and `zeta` must be vectors of one length; got {omega.shape}, {zeta.shape}."
        )
    poly = jnp.ones(1, dtype=omega.dtype)
    for j in range(omega.shape[0]):
        factor = jnp.stack([jnp.ones_like(omega[j]), 2.0 * zeta[j] * omega[j], omega[j] ** 2])
        poly = jnp.convolve(poly, factor)
    if lam is not None:
        lam = jnp.asarray(lam, dtype=float)
        if lam.ndim != 0:
            raise ValueError(f"`lam` must be a scalar; got shape {lam.shape}.")
        poly = jnp.convolve(poly, jnp.stack([jnp.ones_like(lam), lam]))
    return poly


def to_sde(sigma, mu, noise, omega=(), zeta=(), lam=None, b=()):
    r"""The named parameters as `SDEParams`; p = 2 len(omega) (+ 1 with `lam`), q = len(b).

    Raises:
        ValueError: p = 0, q >= p, or `omega` and `zeta` of different lengths.

    Examples:
        >>> import jax.numpy as jnp
        >>> sde = to_sde(**TRUE_PARAMS)  # a(s) = s^2 + 2 (0.1)(1.5) s + 1.5^2, b(s) = 1 + 0.5 s
        >>> [round(float(v), 6) for v in sde.F[-1]], sde.H.tolist()
        ([-2.25, -0.3], [[1.0, 0.5]])
        >>> bool(jnp.all(jnp.linalg.eigvals(to_sde(1.0, 0.0, 0.1, lam=2.0).F).real < 0))
        True
    """
    poly = ar_coefficients(omega, zeta, lam)
    p = poly.shape[0] - 1
    b = jnp.asarray(b, dtype=float)
    if p == 0:
        raise ValueError("CARMA needs p >= 1: give `omega` and `zeta`, or `lam`.")
    if b.ndim != 1 or b.shape[0] >= p:
        raise ValueError(f"`b` must be a vector of length q < p = {p}; got shape {b.shape}.")
    q = b.shape[0]
    dtype = poly.dtype
    F = jnp.eye(p, k=1, dtype=dtype).at[-1].set(-poly[:0:-1])  # last row -a_0 .. -a_{p-1}
    L = jnp.zeros((p, 1), dtype=dtype).at[-1, 0].set(jnp.asarray(sigma, dtype=dtype))
    H = jnp.concatenate([jnp.ones(1, dtype=dtype), b.astype(dtype), jnp.zeros(p - 1 - q, dtype)])
    return SDEParams(
        F=F,
        L=L,
        H=H[None, :],
        u=jnp.reshape(jnp.asarray(mu, dtype=dtype), (1,)),
        R=jnp.asarray(noise, dtype=dtype) ** 2 * jnp.eye(1, dtype=dtype),
        mu1=jnp.zeros(p, dtype=dtype),
        P1=stationary_covariance(F, L @ L.T),
    )


def start_from_data(times, y, *, p=P, q=Q):
    """A start in the data's units: omega at the floor(p/2) highest peaks of the periodogram,
    zeta = 0.3, lam (odd p) from the lag-one autocorrelation, b = 0, mu the mean, the noise with a
    tenth of the variance and sigma scaled so that the stationary variance holds the rest."""
    p, q = int(p), int(q)
    m = moments(times, y, lags=1)
    named = _start_base(m, q)
    k = p // 2
    if k:
        named["omega"] = spectral_peaks(times, y, k)
        named["zeta"] = np.full(k, 0.3)
    if p % 2:
        rho = np.clip(np.nan_to_num(m.autocorrelation[1, 0], nan=0.5), 0.05, 0.98)
        named["lam"] = -np.log(rho) / m.step
    return _with_sigma(named, m)


def more_starts_from_data(times, y, *, p=P, q=Q):
    """Starts in other basins, from which EM runs too (the best final fit is kept): the roots of
    a least-squares AR(p) fit mapped to continuous time (`_ar_roots`; uniform steps and p >= 2
    only), with the rest as in `start_from_data`.

    The periodogram alone can put a second frequency beside the first on one broad peak: on the
    yearly sunspots (square root) with p = 4, 0.57 and 0.60 rad/year, from where EM ends at a
    local maximum, log-likelihood -513.3, below CARMA(2, 0)'s -485.8 although CARMA(4, 0) nests
    it. The AR(4) roots give one oscillation and one overdamped pair (0.58 and 1.70 rad/year),
    from where EM reaches -483.97, certified."""
    p, q = int(p), int(q)
    roots = _ar_roots(times, y, p) if p >= 2 else None
    if roots is None:
        return []
    m = moments(times, y, lags=1)
    return [_with_sigma({**_start_base(m, q), **roots}, m)]


def _start_base(m, q: int) -> dict:
    """mu the mean, the noise with a tenth of the variance, b = 0."""
    named = {"mu": float(m.mean[0]), "noise": np.sqrt(0.1 * float(m.variance[0]))}
    if q:
        named["b"] = np.zeros(q)
    return named


def _with_sigma(named: dict, m) -> dict:
    """`named` with sigma such that the stationary variance of the noise-free part is nine
    tenths of the sample variance."""
    unit = to_sde(1.0, **named)
    variance = float((unit.H @ unit.P1 @ unit.H.T)[0, 0])
    return {**named, "sigma": np.sqrt(0.9 * float(m.variance[0]) / variance)}


def _ar_roots(times, y, p: int) -> dict | None:
    """omega, zeta (and lam, odd p) from the roots of an AR(p) with an intercept fitted by least
    squares to one uniformly sampled series (rows with a missing value among their p lags left
    out): a discrete root z is the continuous root log(z) / step (log|z| / step for a negative
    real z, which has no real continuous counterpart), its real part kept below -0.01 / step
    (and its rate below 50 / step). Complex pairs give
    (omega, zeta) = (|root|, -Re root / |root|); real roots, in increasing size, pair into
    overdamped factors (omega^2 = r_1 r_2, 2 zeta omega = r_1 + r_2 for the rates r); an odd one
    left is lam. None for irregular steps, several sequences or fewer than 5p usable rows."""
    t = np.asarray(times, dtype=float)
    x = np.asarray(y, dtype=float)
    if t.ndim != 1 or x.ndim != 2 or x.shape[1] != 1 or len(t) < 2:
        return None
    steps = np.diff(t)
    if not np.allclose(steps, steps[0], rtol=1e-6, atol=0.0):
        return None
    x = x[:, 0]
    lagged = np.column_stack([x[p - j : len(x) - j] for j in range(p + 1)])  # x_t, x_{t-1}, ...
    lagged = lagged[np.isfinite(lagged).all(axis=1)]
    if len(lagged) < 5 * p:
        return None
    design = np.column_stack([lagged[:, 1:], np.ones(len(lagged))])  # lags and an intercept
    phi = np.linalg.lstsq(design, lagged[:, 0], rcond=None)[0][:p]
    z = np.roots(np.r_[1.0, -phi])
    dt = float(steps[0])
    floor = 0.01 / dt
    pairs, rates = [], []
    for root in z:
        rate = min(-np.log(max(abs(root), 1e-12)) / dt, 1.0 / dt * 50.0)
        rate = max(rate, floor)
        if root.imag > 1e-12:
            omega = np.hypot(rate, np.angle(root) / dt)
            pairs.append((omega, rate / omega))
        elif abs(root.imag) <= 1e-12:
            rates.append(rate)
    rates.sort()
    while len(rates) >= 2:
        r1, r2 = rates.pop(0), rates.pop(0)
        omega = np.sqrt(r1 * r2)
        pairs.append((omega, (r1 + r2) / (2.0 * omega)))
    pairs.sort()
    named = {}
    if pairs:
        omega = np.array([w for w, _ in pairs])
        for j in range(1, len(omega)):  # strictly increasing, as the prior's support
            omega[j] = max(omega[j], omega[j - 1] * (1.0 + 1e-6))
        named["omega"], named["zeta"] = omega, np.array([c for _, c in pairs])
    if rates:
        named["lam"] = rates[0]
    return named


def _ordered_frequencies(k, first):
    """Prior of k increasing positive frequencies: log omega_1 ~ log of the LogNormal `first`,
    and log log-ratios are Normal."""
    loc = jnp.concatenate([jnp.reshape(first.loc, (1,)), jnp.full(k - 1, jnp.log(0.7))])
    scale = jnp.concatenate([jnp.reshape(first.scale, (1,)), jnp.full(k - 1, 0.7)])
    base = dist.Normal(loc, scale).to_event(1)
    ordered = [transforms.OrderedTransform(), transforms.ExpTransform(constraints.ordered_vector)]
    return dist.TransformedDistribution(base, ordered)


def model(times, y=None, *, p=P, q=Q, scales=None):
    """NumPyro model: priors on the named parameters, in the units of `scales`, then `y` from
    `LTISDE` at `times`.

    Args:
        times (ArrayLike): observation times `(T,)`.
        y (ArrayLike | None): observations `(T, 1)` (or `(B, T, 1)`), NaN = missing; None to
            simulate.
        p (int): the AR order, >= 1.
        q (int): the MA order, 0 <= q < p.
        scales (DataScales | None): the location, spread and time scales of the priors
            (`sdessm.priors.DataScales`); by default `sdessm.priors.data_scales(times, y)`.
    """
    p, q = int(p), int(q)
    check_orders(p, q)
    k = p // 2
    s = priors.data_scales(times, y) if scales is None else scales
    named = {}
    if k:
        named["omega"] = numpyro.sample("omega", _ordered_frequencies(k, priors.frequency(s)))
        named["zeta"] = numpyro.sample(
            "zeta", dist.LogNormal(jnp.full(k, jnp.log(0.3)), jnp.ones(k)).to_event(1)
        )
    if p % 2:
        named["lam"] = numpyro.sample("lam", priors.rate(s))
    if q:
        time = 1.0 / jnp.asarray(named["omega"])[0]  # b_j has units time^j
        b_scale = time ** jnp.arange(1, q + 1, dtype=time.dtype)
        named["b"] = numpyro.sample("b", dist.Normal(jnp.zeros(q), b_scale).to_event(1))
    unit = to_sde(1.0, 0.0, 1.0, **named)  # sigma = 1: the stationary variance per sigma^2
    sd_per_sigma = jnp.sqrt((unit.H @ unit.P1 @ unit.H.T)[0, 0])
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0 * s.spread[0] / sd_per_sigma))
    mu = numpyro.sample("mu", priors.location(s))
    noise = numpyro.sample("noise", priors.scale(s))
    # to_sde(sigma, mu, noise, **named), without solving for the stationary law a second time
    params = unit._replace(
        L=sigma * unit.L,
        u=jnp.reshape(mu, (1,)).astype(unit.u.dtype),
        R=noise**2 * unit.R,
        P1=sigma**2 * unit.P1,
    )
    numpyro.sample("y", LTISDE(*params, times=times), obs=y)
