"""Simulation-based calibration of NUTS on the marginalised damped-oscillator model of the zoo.

    python benchmarks/sbc.py                        # 100 data sets (T = 200, dt = 0.1), 20 a batch
    python benchmarks/sbc.py --quick                # 20 data sets, in batches of 10
    python benchmarks/sbc.py --out-dir sbc-output   # also sbc_ranks.png and sbc.json there

Talts et al. (2018), "Validating Bayesian inference algorithms with simulation-based
calibration": draw parameters from the prior and data from the model given them
(`numpyro.infer.Predictive` on `sdessm.models.load("damped_oscillator").model`), fit each data
set by NUTS (one chain, `--warmup` adaptation steps, then `L * thin` draws thinned to `L`), and
record the rank of the true value among the `L` draws, `#{draws < truth}` in `0..L`. If the
posterior is computed correctly the ranks are uniform on `0..L`; per parameter, a chi-square test
of the counts in `--bins` equal bins gives a p-value (small: miscalibrated; with 5 parameters
expect one below 0.05 about one run in four even when all is well).

Each fit is NumPyro's NUTS kernel (its functional form, `numpyro.infer.hmc.hmc`, with the
defaults of `numpyro.infer.NUTS`: diagonal mass matrix, target acceptance 0.8, tree depth <= 10,
initial values uniform in (-2, 2) on the unconstrained scale), each data set with its own warmup
adaptation. One jitted function, vmapped over `--batch` data sets, fits a batch: all data sets
have one shape, so they share one compilation, and the batch amortises the per-operation cost of
the small Kalman-filter steps (the batch advances in lockstep, each NUTS iteration as long as
its longest tree). Prints a line per data set as each batch finishes, and the p-values; float64.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import scipy.stats
from numpyro.infer import Predictive
from numpyro.infer.hmc import hmc
from numpyro.infer.util import initialize_model

jax.config.update("jax_enable_x64", True)

import sdessm.models  # noqa: E402

from sdessm.outputs import atomic_path  # noqa: E402

zoo = sdessm.models.load("damped_oscillator")
PARAMS = ("omega", "zeta", "sigma", "u", "noise")


def _model(times):
    """The zoo model with its priors' scales fixed by the times alone (y in standard units): the
    default scales come from the data, and calibration needs one prior for drawing and fitting."""
    from sdessm.priors import data_scales

    return functools.partial(zoo.model, times, scales=data_scales(times))


def prior_draws(key, times, n: int) -> dict[str, np.ndarray]:
    """`n` parameter sets from the prior and one data set `(T, 1)` from each."""
    draws = Predictive(_model(times), num_samples=n)(key)
    return {k: np.asarray(v) for k, v in draws.items()}


def nuts_fitter(times, y_example, *, warmup: int, L: int, thin: int):
    """A jitted `fit(keys (B,), ys (B, T, 1)) -> (draws {name: (B, L)}, divergences, steps)`.

    Per data set: NUTS from a uniform(-2, 2) unconstrained start, `warmup` adaptation
    iterations, then `L * thin` iterations of which every `thin`-th is kept. `divergences`
    `(B, 2)` counts the divergent transitions in warmup and after it; `steps` `(B,)` the leapfrog
    steps of all `warmup + L * thin` iterations.
    """
    model = _model(times)
    init = initialize_model(
        jax.random.key(0), model, model_kwargs={"y": y_example}, dynamic_args=True
    )
    init_kernel, sample_kernel = hmc(potential_fn_gen=init.potential_fn, algo="NUTS")
    prototype = init.param_info.z  # unconstrained sites, name -> array

    def fit_one(key, y):
        k_init, k_run = jax.random.split(key)
        keys = jax.random.split(k_init, len(prototype))
        z0 = {
            name: jax.random.uniform(k, jnp.shape(v), minval=-2.0, maxval=2.0)
            for k, (name, v) in zip(keys, prototype.items(), strict=True)
        }
        state = init_kernel(z0, warmup, model_kwargs={"y": y}, rng_key=k_run)

        def step(state, _):
            state = sample_kernel(state, model_kwargs={"y": y})
            return state, (state.z, state.diverging, state.num_steps)

        state, (_, div_warmup, steps_warmup) = jax.lax.scan(step, state, None, length=warmup)

        def thinned(state, _):
            state, (zs, div, steps) = jax.lax.scan(step, state, None, length=thin)
            return state, (jax.tree.map(lambda a: a[-1], zs), div.sum(), steps.sum())

        _, (z, div, steps) = jax.lax.scan(thinned, state, None, length=L)
        draws = jax.vmap(init.postprocess_fn(y=y))(z)
        divergences = jnp.stack([div_warmup.sum(), div.sum()])
        return draws, divergences, steps.sum() + steps_warmup.sum()

    return jax.jit(jax.vmap(fit_one))


def rank_counts(ranks: np.ndarray, L: int, bins: int) -> np.ndarray:
    """Counts of ranks `0..L` in `bins` equal bins (`(L + 1) % bins == 0`)."""
    return np.bincount(ranks * bins // (L + 1), minlength=bins)


def plot_ranks(path, ranks: dict[str, np.ndarray], L: int, bins: int, pvalues: dict) -> None:
    """Rank histograms with the central 99% band of a bin count under uniform ranks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(next(iter(ranks.values())))
    lo, hi = scipy.stats.binom.ppf([0.005, 0.995], n, 1.0 / bins)
    fig, axes = plt.subplots(1, len(ranks), figsize=(3.2 * len(ranks), 2.8), sharey=True)
    edges = np.linspace(0, L + 1, bins + 1)
    for ax, (name, r) in zip(axes, ranks.items(), strict=True):
        ax.axhspan(lo, hi, color="0.85", zorder=0)
        ax.axhline(n / bins, color="0.5", lw=1, zorder=1)
        ax.hist(r, bins=edges, color="C0", edgecolor="white", zorder=2)
        ax.set_title(f"{name}  (p = {pvalues[name]:.2f})")
        ax.set_xlabel(f"rank among {L} draws")
    axes[0].set_ylabel("data sets")
    fig.suptitle(f"SBC, damped oscillator: {n} data sets, {bins} bins, band: 99% if uniform")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="number of data sets")
    parser.add_argument("--T", type=int, default=200)
    parser.add_argument("--dt", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--L", type=int, default=99, help="thinned draws per data set")
    parser.add_argument("--thin", type=int, default=5, help="keep every `thin`-th draw")
    parser.add_argument("--bins", type=int, default=10, help="must divide L + 1")
    parser.add_argument("--batch", type=int, default=20, help="data sets per jitted batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="20 data sets, batches of 10")
    parser.add_argument("--out-dir", help="write sbc_ranks.png and sbc.json here")
    args = parser.parse_args()
    if args.quick:
        args.n, args.batch = 20, 10
    args.batch = max(1, min(args.batch, args.n))
    if (args.L + 1) % args.bins:
        raise SystemExit(f"--bins ({args.bins}) must divide L + 1 ({args.L + 1}).")
    out_dir = None
    if args.out_dir:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)

    times = args.dt * np.arange(args.T)
    key_prior, key_fit = jax.random.split(jax.random.key(args.seed))
    sims = prior_draws(key_prior, times, args.n)
    fit = nuts_fitter(times, sims["y"][0], warmup=args.warmup, L=args.L, thin=args.thin)
    print(
        f"SBC: {args.n} data sets, T = {args.T}, dt = {args.dt}, NUTS {args.warmup} warmup + "
        f"{args.L * args.thin} draws thinned by {args.thin} to L = {args.L}, batches of "
        f"{args.batch}, float64"
    )
    ranks = {p: np.zeros(args.n, dtype=int) for p in PARAMS}
    divergences = np.zeros((args.n, 2), dtype=int)  # in warmup, after warmup
    steps = np.zeros(args.n, dtype=int)
    min_ess = np.zeros(args.n)
    batch_seconds = []
    keys = jax.random.split(key_fit, args.n)
    start_all = time.perf_counter()
    for lo in range(0, args.n, args.batch):
        idx = np.arange(lo, lo + args.batch)
        idx = np.minimum(idx, args.n - 1)  # pad the last batch (same shape, no recompilation)
        start = time.perf_counter()
        draws, div, n_steps = jax.block_until_ready(fit(keys[idx], sims["y"][idx]))
        batch_seconds.append(time.perf_counter() - start)
        draws = {p: np.asarray(v) for p, v in draws.items()}
        for j, i in enumerate(range(lo, min(lo + args.batch, args.n))):
            divergences[i], steps[i] = np.asarray(div[j]), int(n_steps[j])
            for p in PARAMS:
                ranks[p][i] = int(np.sum(draws[p][j] < sims[p][i]))
            ess = [float(np.asarray(az.ess(draws[p][j][None], method="bulk"))) for p in PARAMS]
            min_ess[i] = min(ess)
            truth = " ".join(f"{p}={sims[p][i]:.3g}" for p in PARAMS)
            rank_text = " ".join(f"{ranks[p][i]:2d}" for p in PARAMS)
            print(
                f"[{i + 1:3d}/{args.n}] ranks {rank_text}  min ESS {min_ess[i]:4.0f}/{args.L}  "
                f"div {divergences[i, 1]:3d} (warmup {divergences[i, 0]:3d})  steps/iter "
                f"{steps[i] / (args.warmup + args.L * args.thin):5.1f}  ({truth})"
            )
        print(f"  batch of {args.batch} in {batch_seconds[-1]:.1f} s", flush=True)
    total = time.perf_counter() - start_all

    pvalues = {}
    print(f"\nSBC, {args.n} data sets, ranks in 0..{args.L}, {args.bins} bins:")
    print(f"  {'param':6s} {'chi2':>7s} {'p-value':>8s}  counts")
    for p in PARAMS:
        counts = rank_counts(ranks[p], args.L, args.bins)
        chi2, pvalues[p] = (float(v) for v in scipy.stats.chisquare(counts))
        print(f"  {p:6s} {chi2:7.2f} {pvalues[p]:8.3f}  {counts.tolist()}")
    later = (
        f", {np.mean(batch_seconds[1:]):.1f} s per batch after" if len(batch_seconds) > 1 else ""
    )
    print(
        f"  {total:.0f} s in all (first batch, with compilation: {batch_seconds[0]:.1f} s{later}); "
        f"{int(np.sum(divergences[:, 1] > 0))} data sets with divergences after warmup "
        f"({int(divergences[:, 1].sum())} in all); thinned draws' min bulk "
        f"ESS: median {np.median(min_ess):.0f}, lowest {np.min(min_ess):.0f} of {args.L}"
    )
    if out_dir is not None:
        plot_ranks(out_dir / "sbc_ranks.png", ranks, args.L, args.bins, pvalues)
        results = {
            "n": args.n,
            "T": args.T,
            "dt": args.dt,
            "warmup": args.warmup,
            "L": args.L,
            "thin": args.thin,
            "bins": args.bins,
            "seed": args.seed,
            "numpyro": numpyro.__version__,
            "pvalues": pvalues,
            "ranks": {p: r.tolist() for p, r in ranks.items()},
            "truth": {p: sims[p].tolist() for p in PARAMS},
            "batch": args.batch,
            "divergences_warmup": divergences[:, 0].tolist(),
            "divergences": divergences[:, 1].tolist(),
            "leapfrog_steps": steps.tolist(),
            "min_ess_bulk_thinned": min_ess.tolist(),
            "batch_seconds": batch_seconds,
            "total_seconds": total,
        }
        with atomic_path(out_dir / "sbc.json") as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")
        print(f"  wrote {out_dir / 'sbc_ranks.png'} and {out_dir / 'sbc.json'}")


if __name__ == "__main__":
    main()
