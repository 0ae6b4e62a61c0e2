"""NUTS effective samples per second: Kalman-marginalised states vs explicitly sampled states.

    python benchmarks/nuts_marginal.py                  # T = 1000, 4 chains x (500 warmup + 500)
    python benchmarks/nuts_marginal.py --quick          # T = 200, 4 chains x (100 warmup + 100)
    python benchmarks/nuts_marginal.py --out nuts.json  # also write the numbers as JSON

Both models are the zoo's damped oscillator (position observed every `dt`), with the same priors
(in the data's units, `sdessm.priors`) on omega, zeta, sigma, u and noise, on the same simulated
data (`TRUE_PARAMS`, float64):

- marginal: `sdessm.models.load("damped_oscillator").model`, whose `LTISDE` likelihood
  integrates the states out with the Kalman filter;
- explicit: the states are sampled too, non-centred: innovations `eps ~ N(0, I)` of shape
  `(T, 2)`, `x_1 = chol(P1) eps_1` (the stationary initial state of the zoo model),
  `x_k = A x_{k-1} + chol(Sigma) eps_k` by `jax.lax.scan` with `(A, Sigma)` from
  `sdessm.discretize`, and `y_k ~ Normal(x_k[0], noise)`.

Each runs NumPyro NUTS with the same chains, warmup, draws and seed. The wall time of warmup +
sampling is split into compilation (the union of the intervals JAX reports as tracing, lowering
and backend compilation, via `jax.monitoring`) and the rest ("run"). ESS is the minimum over the
five parameters of ArviZ's bulk ESS on the `(chain, draw)` arrays; ESS/s divides it by the run
time. Prints a table and the ratio marginal / explicit of ESS/s (> 1 means marginalising wins).
"""

from __future__ import annotations

import argparse
import json
import time

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

jax.config.update("jax_enable_x64", True)

import sdessm.models  # noqa: E402

import sdessm  # noqa: E402
from sdessm import priors  # noqa: E402
from sdessm.outputs import atomic_path  # noqa: E402

zoo = sdessm.models.load("damped_oscillator")
PARAMS = ("omega", "zeta", "sigma", "u", "noise")


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling, as the union of reported intervals.

    JAX reports each phase's duration when it ends; nested phases (a jit traced inside another's
    trace) overlap, so the intervals are merged rather than their durations summed.
    """

    def __init__(self) -> None:
        self.intervals: list[tuple[float, float]] = []
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **_) -> None:
        if event.startswith("/jax/core/compile/"):
            end = time.perf_counter()
            self.intervals.append((end - duration, end))

    def seconds(self, start: float, stop: float) -> float:
        """Compilation seconds inside the wall-clock window `[start, stop]`."""
        total, reach = 0.0, start
        for lo, hi in sorted(self.intervals):
            lo, hi = max(lo, reach), min(hi, stop)
            if hi > lo:
                total += hi - lo
                reach = hi
        return total


def explicit_model(times, y=None):
    """The zoo model with the states sampled (non-centred) instead of marginalised; its priors
    are the zoo model's, line for line."""
    s = priors.data_scales(times, y)
    omega = numpyro.sample("omega", priors.frequency(s))
    zeta = numpyro.sample("zeta", dist.Beta(2.0, 8.0))
    amplitude = jnp.sqrt(4.0 * zeta * omega**3)
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0 * s.spread[0] * amplitude))
    u = numpyro.sample("u", priors.location(s))
    noise = numpyro.sample("noise", priors.scale(s))
    sde = zoo.to_sde(omega, zeta, sigma, noise, u)
    T, d = len(times), sde.F.shape[0]
    dt = float(times[1] - times[0])  # `main` builds a uniform grid
    A, Sigma = sdessm.discretize(sde.F, sde.L, dt)
    chol_sigma = jnp.linalg.cholesky(Sigma)
    eps = numpyro.sample("eps", dist.Normal(0.0, 1.0).expand([T, d]).to_event(2))
    x1 = sde.mu1 + jnp.linalg.cholesky(sde.P1) @ eps[0]

    def step(x, e):
        x = A @ x + chol_sigma @ e
        return x, x

    _, rest = jax.lax.scan(step, x1, eps[1:])
    x = jnp.concatenate([x1[None], rest])
    mean = x @ sde.H.T + sde.u  # (T, 1): the position
    numpyro.sample(
        "y", dist.Normal(mean[:, 0], noise).to_event(1), obs=None if y is None else y[:, 0]
    )


def run_nuts(name, model, times, y, args, clock: CompileClock) -> dict:
    mcmc = MCMC(
        NUTS(model),
        num_warmup=args.warmup,
        num_samples=args.samples,
        num_chains=args.chains,
        chain_method=args.chain_method,
        progress_bar=not args.no_progress,
    )
    print(f"{name}: {args.chains} chains x ({args.warmup} warmup + {args.samples} draws)")
    start = time.perf_counter()
    mcmc.run(jax.random.key(args.seed), times, y, extra_fields=("diverging", "num_steps"))
    draws = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    wall = time.perf_counter() - start
    compile_s = clock.seconds(start, start + wall)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    ess = {p: float(np.asarray(az.ess(np.asarray(draws[p]), method="bulk"))) for p in PARAMS}
    rhat = {p: float(np.asarray(az.rhat(np.asarray(draws[p])))) for p in PARAMS}
    run_s = wall - compile_s
    out = {
        "wall_s": wall,
        "compile_s": compile_s,
        "run_s": run_s,
        "ess_bulk": ess,
        "min_ess_bulk": min(ess.values()),
        "ess_per_s": min(ess.values()) / run_s,
        "ess_per_s_with_compile": min(ess.values()) / wall,
        "rhat": rhat,
        "max_rhat": max(rhat.values()),
        "divergences": int(np.sum(extra["diverging"])),
        "mean_leapfrog_steps": float(np.mean(extra["num_steps"])),
        "posterior_mean": {p: float(np.mean(draws[p])) for p in PARAMS},
    }
    print(
        f"{name}: {wall:.1f} s ({compile_s:.1f} s compiling), min bulk ESS "
        f"{out['min_ess_bulk']:.0f}, max R-hat {out['max_rhat']:.3f}, "
        f"{out['divergences']} divergences, {out['mean_leapfrog_steps']:.0f} leapfrog steps/draw"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--dt", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument(
        "--chain-method",
        choices=("sequential", "vectorized"),
        default="sequential",
        help="how NumPyro runs the chains (`parallel` needs one device per chain)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="T = 200, 100 warmup + 100 draws")
    parser.add_argument("--no-progress", action="store_true", help="no NumPyro progress bars")
    parser.add_argument("--out", help="also write the results as JSON to this file")
    args = parser.parse_args()
    if args.quick:
        args.T, args.warmup, args.samples = 200, 100, 100
    if args.T < 2:
        raise SystemExit(f"--T must be >= 2; got {args.T}.")

    clock = CompileClock()
    times = args.dt * np.arange(args.T)
    _, y = sdessm.simulate(jax.random.key(args.seed), zoo.to_sde(**zoo.TRUE_PARAMS), times)
    y = jnp.asarray(y)
    results = {
        "T": args.T,
        "dt": args.dt,
        "true_params": zoo.TRUE_PARAMS,
        "chains": args.chains,
        "chain_method": args.chain_method,
        "warmup": args.warmup,
        "samples": args.samples,
        "seed": args.seed,
        "float": "float64",
        "backend": jax.default_backend(),
        "numpyro": numpyro.__version__,
        "arviz": az.__version__,
    }
    results["marginal"] = run_nuts("marginal", zoo.model, times, y, args, clock)
    results["explicit"] = run_nuts("explicit", explicit_model, times, y, args, clock)
    m, e = results["marginal"], results["explicit"]
    results["ratio_ess_per_s_marginal_over_explicit"] = m["ess_per_s"] / e["ess_per_s"]
    results["ratio_with_compile"] = m["ess_per_s_with_compile"] / e["ess_per_s_with_compile"]

    print(
        f"\nNUTS on the damped oscillator, T = {args.T}, dt = {args.dt}, {args.chains} chains "
        f"({args.chain_method}) x ({args.warmup} warmup + {args.samples} draws), float64, "
        f"{jax.default_backend()}:"
    )
    header = (
        f"  {'model':9s} {'wall s':>8s} {'compile s':>10s} {'run s':>8s} {'min ESS':>8s} "
        f"{'ESS/s':>9s} {'R-hat max':>10s} {'diverg.':>8s} {'steps':>6s}"
    )
    print(header)
    for name in ("marginal", "explicit"):
        r = results[name]
        print(
            f"  {name:9s} {r['wall_s']:8.1f} {r['compile_s']:10.1f} {r['run_s']:8.1f} "
            f"{r['min_ess_bulk']:8.0f} {r['ess_per_s']:9.2f} {r['max_rhat']:10.3f} "
            f"{r['divergences']:8d} {r['mean_leapfrog_steps']:6.0f}"
        )
    ratio = results["ratio_ess_per_s_marginal_over_explicit"]
    print(
        f"  ratio marginal / explicit of ESS/s = {ratio:.1f}"
        f" (with compilation in the time: {results['ratio_with_compile']:.1f})"
    )
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
