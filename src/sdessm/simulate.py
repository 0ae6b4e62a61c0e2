"""Exact simulation of states and observations: the transitions are exact, not Euler-Maruyama."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import check_count, check_inputs, check_key, float64
from .params import LGSSMParams, SDEParams, as_arrays
from .problem import emitted, needs_inputs, response
from .recursion import scan_inputs


def psd_sqrt(M: Float[Array, "... n n"]) -> Float[Array, "... n n"]:
    """A square root `S` with `S S^T = M` for a PSD (possibly singular) `M`, via `eigh`."""
    w, V = jnp.linalg.eigh(M)
    return V * jnp.sqrt(jnp.clip(w, 0.0))[..., None, :]


def _simulate_one(key, params: LGSSMParams, T: int):
    shared, per_step, first = scan_inputs(params)
    d, p = params.state_dim, params.obs_dim
    k_x, k_y = jax.random.split(key)
    z = jax.random.normal(k_x, (T, d), dtype=params.mu1.dtype)
    e = jax.random.normal(k_y, (T, p), dtype=params.mu1.dtype)
    sqrt_sigma = psd_sqrt(params.Sigma)
    sqrt_r = psd_sqrt(params.R)
    tv = params.time_varying()

    def emit(x, H, u, sqrt_R, e_k):
        return H @ x + u + sqrt_R @ e_k

    x1 = params.mu1 + psd_sqrt(params.P1) @ z[0]
    y1 = emit(x1, first["H"], first["u"], sqrt_r[0] if tv["R"] else sqrt_r, e[0])
    xs = dict(per_step)
    if tv["Sigma"]:
        xs["sqrt_Sigma"] = sqrt_sigma
    if tv["R"]:
        xs["sqrt_R"] = sqrt_r[1:]
    fixed = shared | {"sqrt_Sigma": sqrt_sigma, "sqrt_R": sqrt_r}

    def step(x, inputs):
        k, z_k, e_k = inputs
        f = fixed | k
        x = f["A"] @ x + f["sqrt_Sigma"] @ z_k
        return x, (x, emit(x, f["H"], f["u"], f["sqrt_R"], e_k))

    _, (xs_rest, ys_rest) = jax.lax.scan(step, x1, (xs, z[1:], e[1:]))
    return jnp.concatenate([x1[None], xs_rest]), jnp.concatenate([y1[None], ys_rest])


@float64
def simulate(
    key: PRNGKeyArray,
    params: SDEParams | LGSSMParams,
    times: Float[ArrayLike, " T"] | None = None,
    num_sequences: int | None = None,
    *,
    dt: float | None = None,
    num_timesteps: int | None = None,
    inputs: Float[ArrayLike, "*B T m"] | None = None,
) -> tuple[Float[Array, "*B T d"], Float[Array, "*B T p"]]:
    r"""Draw states and observations exactly from the model.

    Args:
        key: a JAX random key.
        params: an `SDEParams` (with `times`, or `dt` and `num_timesteps`) or an `LGSSMParams`
            (with `num_timesteps`, unless it has per-step fields that fix T).
        times: observation times `(T,)`, strictly increasing.
        num_sequences: `B`; None draws a single sequence without the leading axis.
        dt: a uniform step, instead of `times`.
        num_timesteps: `T`, with `dt` or an `LGSSMParams`.
        inputs: known inputs `(T, m)`, or `(B, T, m)` one per sequence, when `params` has the
            input gains `B` or `D`: held over each step (zero-order hold). The draw is that of
            the model without inputs (the same for the same `key`) plus the inputs'
            deterministic response.

    Returns:
        `(x, y)` of shapes `(*B, T, d)` and `(*B, T, p)`.

    Raises:
        TypeError: `key` not a JAX random key, `params` of another type, or a count that is not
            a number.
        ValueError: `num_timesteps`, `num_sequences` not integers >= 1; `times` not finite and
            strictly increasing; invalid parameters (see `SDEParams.validate`); `inputs`
            missing for a model with `B` or `D`, given for one without, of a wrong shape or
            not finite.

    Examples:
        >>> import jax, jax.numpy as jnp, sdessm
        >>> ou = sdessm.SDEParams(F=-jnp.eye(1), L=jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
        ...                       R=0.1 * jnp.eye(1), mu1=jnp.zeros(1), P1=0.5 * jnp.eye(1))
        >>> x, y = sdessm.simulate(jax.random.key(0), ou, jnp.linspace(0.0, 1.0, 11), 3)
        >>> x.shape, y.shape
        ((3, 11, 1), (3, 11, 1))
    """
    check_key("key", key)
    if num_timesteps is not None:
        num_timesteps = check_count("num_timesteps", num_timesteps)
    num_sequences = check_count("num_sequences", num_sequences, or_none=True)
    if isinstance(params, SDEParams):
        if times is not None:
            if dt is not None or num_timesteps is not None:
                raise ValueError("give `times`, or `dt` with `num_timesteps`, not both.")
            lgssm = params.discretize(times)
            T = int(np.shape(times)[-1])
        elif dt is not None and num_timesteps is not None:
            lgssm = params.discretize(dt=dt)
            T = int(num_timesteps)
        else:
            raise ValueError("an `SDEParams` needs `times` (T,), or `dt` and `num_timesteps`.")
    elif isinstance(params, LGSSMParams):
        if times is not None or dt is not None:
            raise ValueError("`times`/`dt` apply to `SDEParams`; give `num_timesteps` instead.")
        tv = params.time_varying()
        implied = [np.shape(params.A)[0] + 1] if tv["A"] else []
        implied += [np.shape(getattr(params, k))[0] for k in ("H", "u", "R") if tv[k]]
        if num_timesteps is None and not implied:
            raise ValueError("an `LGSSMParams` without per-step fields needs `num_timesteps`.")
        T = int(num_timesteps if num_timesteps is not None else implied[0])
        lgssm = as_arrays(params)
    else:
        raise TypeError(f"`params` must be SDEParams or LGSSMParams; got {type(params).__name__}.")
    if T < 1:
        raise ValueError(f"`num_timesteps` must be >= 1; got {T}.")
    lgssm = lgssm.validate(num_timesteps=T)
    if not needs_inputs(lgssm, inputs):
        return _simulate(key, lgssm, T, num_sequences)
    v = check_inputs(inputs, T, lgssm.input_dim, num_sequences)
    x, y = _simulate(key, lgssm._replace(B=None, D=None), T, num_sequences)
    s = response(lgssm, v)
    if s is not None:
        x = x + jnp.broadcast_to(s, x.shape)
    return x, y + emitted(lgssm, s, v, y.shape)


@functools.partial(jax.jit, static_argnums=(2, 3))  # compiled once per shape, reused
def _simulate(key, params: LGSSMParams, T: int, num_sequences: int | None):
    if num_sequences is None:
        return _simulate_one(key, params, T)
    keys = jax.random.split(key, num_sequences)
    return jax.vmap(lambda k: _simulate_one(k, params, T))(keys)
