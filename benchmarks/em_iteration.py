"""One EM iteration, sdessm vs dynamax, on the same data, in one run.

    python benchmarks/em_iteration.py            # T = 100_000, d = p = 8 (the reference problem)
    python benchmarks/em_iteration.py --quick    # T = 10_000

Each side's iteration is the jitted function its own `fit_em` runs once per iteration (sdessm:
E-step + closed-form M-step; dynamax: vmapped `e_step` + `m_step`), timed after a warm-up call,
median of `--repeats` runs, float64. Prints the seconds per iteration and the ratio
dynamax / sdessm (> 1 means sdessm is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import sdessm  # noqa: E402
from sdessm.iteration import discrete_iteration as _discrete_iteration  # noqa: E402


def problem(T: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    V = rng.normal(size=(d, d)) + 2 * np.eye(d)
    F = V @ np.diag(-rng.uniform(0.2, 1.5, d)) @ np.linalg.inv(V)
    params = sdessm.SDEParams(
        F=F,
        L=0.5 * np.eye(d),
        H=rng.normal(size=(d, d)),
        u=rng.normal(size=d),
        R=0.1 * np.eye(d),
        mu1=np.zeros(d),
        P1=np.eye(d),
    )
    _, y = sdessm.simulate(jax.random.key(seed), params, dt=0.1, num_timesteps=T)
    return params.discretize(dt=0.1), jnp.asarray(y)


def timed(fn, repeats: int) -> tuple[float, float]:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), first


def sdessm_step(lg, y):
    # fixed, R, per-step, A/Sigma, no NaN, one NaN pattern
    config = (frozenset({"P1"}), "full", False, True, True, True)
    return lambda: _discrete_iteration(lg, y[None], config)


def dynamax_step(lg, y):
    from run import dynamax_model  # benchmarks/run.py, beside this script

    model, params, props = dynamax_model(lg)
    state = model.initialize_m_step_state(params, props)

    @jax.jit
    def step(params, state):
        stats, lls = jax.vmap(lambda e: model.e_step(params, e))(y[None])
        params, state = model.m_step(params, props, stats, state)
        return params, lls.sum()

    return lambda: step(params, state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="T = 10_000")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    T = 10_000 if args.quick else args.T
    lg, y = problem(T, args.d)
    results = {"T": T, "d": args.d, "float": "float64", "backend": jax.default_backend()}
    ours, compile_ours = timed(sdessm_step(lg, y), args.repeats)
    results["sdessm"] = {"seconds_per_iteration": ours, "first_call": compile_ours}
    try:
        theirs, compile_theirs = timed(dynamax_step(lg, y), args.repeats)
        results["dynamax"] = {"seconds_per_iteration": theirs, "first_call": compile_theirs}
        results["ratio_dynamax_over_sdessm"] = theirs / ours
    except ImportError:
        results["dynamax"] = "not installed (pip install -e '.[bench]')"
    print(f"EM iteration, T = {T}, d = p = {args.d}, float64, median of {args.repeats}:")
    print(f"  sdessm   {ours:9.4f} s   (first call, with compilation: {compile_ours:.2f} s)")
    if "ratio_dynamax_over_sdessm" in results:
        print(
            f"  dynamax  {theirs:9.4f} s   (first call, with compilation: {compile_theirs:.2f} s)"
        )
        print(f"  ratio dynamax / sdessm = {results['ratio_dynamax_over_sdessm']:.2f}")
    else:
        print(f"  dynamax  {results['dynamax']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
