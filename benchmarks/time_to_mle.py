"""Time to the maximum-likelihood estimate: sdessm's `fit_em` against what a user would otherwise
run, on the same data, each method in its own process pinned to one core, methods interleaved.

    python benchmarks/time_to_mle.py              # the full set (about 20 minutes on one core)
    python benchmarks/time_to_mle.py --quick      # smaller problems, one repeat (a few minutes)
    python benchmarks/time_to_mle.py --only nile  # problems whose name matches a pattern

Methods (each with its own default stopping rule, from the same start where they share one):

- `sdessm`: `sdessm.fit_em` with its defaults (EM, then the Newton finish that certifies the
  maximum); a zoo model by name for the structured problems, `SDEParams` with `fixed=("P1", "H")`
  for the others.
- `lbfgs`: SciPy's L-BFGS-B on `sdessm.log_likelihood` with its gradient (jitted; the compiled
  kernel's gradient where it applies), in the unconstrained coordinates of the zoo model, or in
  (F, a factor of Q, u, a factor of R, mu1): a user who writes the objective by hand but takes
  sdessm's log-likelihood.
- `lbfgs-jax`: the same with `method="sequential"`, a Kalman filter in pure JAX differentiated by
  reverse mode: what a user of a hand-written JAX model does.
- `dynamax`: dynamax's EM for the linear-Gaussian SSM from the same start (no dynamics bias).
  Its `fit_em` fits every field or none, so H and P1 are free there: a larger family, and a row
  judged against its own maximum. It has no stopping rule: it runs `DYNAMAX_ITERS` iterations,
  and its time to its maximum is its time per iteration times the iterations it needed. It
  takes no NaN.
- `statsmodels`: `UnobservedComponents(y, "llevel").fit()` for the local level. Its likelihood
  is not the same function: the first level is diffuse there and a parameter here, so its row is
  judged against its own maximum (and says so).

A run counts as reaching the maximum when its log-likelihood ends within `REACH` = 1e-3 of the
best any method found on that objective. Times are medians over repeats: with compilation (the
first call in a fresh process with an empty persistent compilation cache), with a warm cache
(the first call in a second fresh process that finds what the first one compiled, as a second
`sdessm fit` on the command line does; every method gets the same JAX cache settings), and
without compilation (a second call in the same process).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

REACH = 1e-3
DYNAMAX_ITERS = 3000
DT = 0.1
PROBLEMS = {  # name: (kind, sizes, quick sizes)
    "oscillator-1e3": ("oscillator", {"T": 1000}, {"T": 1000}),
    "oscillator-1e4": ("oscillator", {"T": 10_000}, None),
    "ou4-1e4": ("ou", {"T": 10_000, "d": 4}, {"T": 2000, "d": 4}),
    "panel-256x1e3": ("ou", {"T": 1000, "d": 2, "B": 256}, {"T": 200, "d": 2, "B": 32}),
    "missing20-ou4-1e4": (
        "missing",
        {"T": 10_000, "d": 4, "missing": 0.2},
        {"T": 2000, "d": 4, "missing": 0.2},
    ),
    "nile-local-level": ("nile", {}, {}),
}
METHODS = {
    "oscillator": ("sdessm", "lbfgs", "lbfgs-jax"),
    "ou": ("sdessm", "lbfgs", "lbfgs-jax", "dynamax"),
    "missing": ("sdessm", "lbfgs", "lbfgs-jax"),  # dynamax takes no NaN
    "nile": ("sdessm", "lbfgs", "lbfgs-jax", "statsmodels"),
}


# --------------------------------------------------------------------------- the worker


def make_data(kind: str, sizes: dict):
    """(y, times, start) of a problem; `start` None where the zoo model starts from the data."""
    import jax

    import sdessm

    if kind == "nile":
        import statsmodels.api as sm

        nile = sm.datasets.nile.load_pandas().data
        return nile["volume"].to_numpy(float)[:, None], nile["year"].to_numpy(float), None
    T = sizes["T"]
    times = np.arange(T) * DT
    if kind == "oscillator":
        from sdessm.models import load

        osc = load("damped_oscillator")
        _, y = sdessm.simulate(jax.random.key(0), osc.to_sde(**osc.TRUE_PARAMS), times)
        return np.asarray(y), times, None
    d, B = sizes["d"], sizes.get("B")
    rng = np.random.default_rng(0)
    V = rng.normal(size=(d, d)) + 2 * np.eye(d)
    F = V @ np.diag(-rng.uniform(0.2, 1.5, d)) @ np.linalg.inv(V)
    truth = sdessm.SDEParams(
        F=F, L=0.5 * np.eye(d), H=np.eye(d), u=rng.normal(size=d), R=0.1 * np.eye(d),
        mu1=np.zeros(d), P1=np.eye(d),
    )  # fmt: skip
    _, y = sdessm.simulate(jax.random.key(0), truth, times, num_sequences=B)
    y = np.array(y)
    if sizes.get("missing"):
        y[rng.uniform(size=y.shape) < sizes["missing"]] = np.nan
    start = truth._replace(F=-np.eye(d), L=np.eye(d), u=np.zeros(d), R=np.eye(d))
    return y, times, start


def _zoo(kind: str):
    from sdessm.models import load

    return load({"oscillator": "damped_oscillator", "nile": "local_level"}[kind])


def run_sdessm(kind, y, times, start):
    import sdessm

    if start is None:
        fit = sdessm.fit_em(_zoo(kind).model, y, times, progress=False)
    else:
        fit = sdessm.fit_em(start, y, times, fixed=("P1", "H"), progress=False)
    return {
        "loglik": float(fit.log_likelihoods[-1]),
        "iterations": int(fit.num_iters),
        "certified": bool(fit.converged),
    }


def run_lbfgs(kind, y, times, start, method="auto"):
    import jax
    import jax.numpy as jnp
    import scipy.optimize

    import sdessm

    if start is None:
        from sdessm.model_em import trace_model

        module = _zoo(kind)
        tm = trace_model(module.model, y, times)
        z0 = tm.unconstrain(module.start_from_data(times, y))
        flat0, unravel = jax.flatten_util.ravel_pytree(z0)

        def params_of(v):
            return tm.sde_at(unravel(v))
    else:
        d, p = start.F.shape[0], start.H.shape[0]
        rows, cols = np.tril_indices(d)
        prow, pcol = np.tril_indices(p)

        def params_of(v):
            F = v[: d * d].reshape(d, d)
            k = d * d
            L = jnp.zeros((d, d)).at[rows, cols].set(v[k : k + len(rows)])
            k += len(rows)
            u = v[k : k + p]
            k += p
            C = jnp.zeros((p, p)).at[prow, pcol].set(v[k : k + len(prow)])
            k += len(prow)
            return start._replace(F=F, L=L, u=u, R=C @ C.T, mu1=v[k : k + d])

        flat0 = np.concatenate([
            np.ravel(start.F), np.linalg.cholesky(start.Q)[rows, cols], start.u,
            np.linalg.cholesky(start.R)[prow, pcol], start.mu1,
        ])  # fmt: skip
    yj = jnp.asarray(y)
    loss = jax.jit(
        jax.value_and_grad(
            lambda v: -jnp.sum(sdessm.log_likelihood(params_of(v), yj, times, method=method))
        )
    )

    def fun(v):
        value, grad = loss(jnp.asarray(v))
        return float(value), np.asarray(grad, dtype=float)

    res = scipy.optimize.minimize(
        fun, np.asarray(flat0, float), jac=True, method="L-BFGS-B", options={"maxiter": 20_000}
    )
    return {"loglik": -float(res.fun), "iterations": int(res.nit), "message": str(res.message)}


def run_lbfgs_jax(kind, y, times, start):
    return run_lbfgs(kind, y, times, start, method="sequential")


def run_dynamax(kind, y, times, start):
    from dynamax.linear_gaussian_ssm import LinearGaussianSSM

    import sdessm

    lg = sdessm.discretize_params(start, dt=DT)
    d, p = start.F.shape[0], start.H.shape[0]
    model = LinearGaussianSSM(d, p, has_dynamics_bias=False, has_emissions_bias=True)
    params, props = model.initialize(
        initial_mean=lg.mu1, initial_covariance=lg.P1, dynamics_weights=lg.A,
        dynamics_covariance=lg.Sigma, emission_weights=lg.H, emission_bias=lg.u,
        emission_covariance=lg.R,
    )  # fmt: skip
    _, log_probs = model.fit_em(params, props, y, num_iters=DYNAMAX_ITERS, verbose=False)
    lls = np.asarray(log_probs, dtype=float)
    bad = np.flatnonzero(~np.isfinite(lls))
    objective = "dynamax (every field free: its EM fits all fields or none)"
    if bad.size:  # its free initial covariance collapses on B sequences: NaN from there on
        objective += f"; NaN from iteration {bad[0]}"
        lls = lls[: bad[0]]
    return {
        "loglik": float(np.max(lls)) if lls.size else float("nan"),
        "iterations": DYNAMAX_ITERS,
        "trajectory": lls.tolist(),
        "objective": objective,
    }


def run_statsmodels(kind, y, times, start):
    import statsmodels.api as sm

    fit = sm.tsa.UnobservedComponents(y[:, 0], "llevel").fit(disp=False)
    return {
        "loglik": float(fit.llf),
        "iterations": int(fit.mle_retvals.get("iterations", -1)),
        "objective": "statsmodels (diffuse first level)",
        "sigma2": [float(x) for x in fit.params],
    }


def worker(problem: str, method: str, quick: bool, cache: str) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_compilation_cache_dir", cache)  # the same for every method
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    warnings.filterwarnings("ignore")
    kind, full, small = PROBLEMS[problem]
    y, times, start = make_data(kind, small if quick else full)
    run = globals()[f"run_{method.replace('-', '_')}"]
    seconds = []
    for _ in range(2):  # in a fresh process: compilation included, then excluded
        begin = time.perf_counter()
        out = run(kind, y, times, start)
        seconds.append(time.perf_counter() - begin)
    return dict(out, first_seconds=seconds[0], seconds=seconds[1])


# --------------------------------------------------------------------------- the parent


def run_one(problem: str, method: str, quick: bool, cpu: int) -> dict:
    """Two fresh processes on one empty compilation cache: the first compiles (cold), the
    second finds its programs there (warm)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if hasattr(os, "sched_setaffinity") else None
    outs = []
    with tempfile.TemporaryDirectory() as cache:
        cmd = [sys.executable, __file__, "--worker", problem, method, "--cache", cache]
        for _ in range(2):
            proc = subprocess.run(
                cmd + (["--quick"] if quick else []),
                capture_output=True, text=True, env=env, preexec_fn=pin,
            )  # fmt: skip
            if proc.returncode != 0:
                err = proc.stderr.strip()
                return {"error": err.splitlines()[-1] if err else "failed"}
            outs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return dict(outs[0], warm_seconds=outs[1]["first_seconds"])


def summarise(problem: str, runs: dict[str, list[dict]]) -> list[dict]:
    """One row per method: median times, whether it reached the best log-likelihood of its
    objective, and for dynamax the time to the iteration that did."""
    ok = {m: [r for r in rs if "error" not in r] for m, rs in runs.items()}
    shared = [r["loglik"] for m, rs in ok.items() for r in rs if "objective" not in r]
    best = max(shared) if shared else float("nan")
    rows = []
    for method, rs in runs.items():
        if not ok[method]:
            rows.append({"problem": problem, "method": method, "error": rs[0].get("error")})
            continue
        r0 = ok[method][0]
        target = best
        if r0.get("objective", "").startswith("dynamax"):  # a larger family: at least as high
            target = max(best, r0["loglik"])
        elif "objective" in r0:  # another function altogether
            target = r0["loglik"]
        first = statistics.median(r["first_seconds"] for r in ok[method])
        warm = statistics.median(r["warm_seconds"] for r in ok[method])
        steady = statistics.median(r["seconds"] for r in ok[method])
        if "trajectory" in r0:  # time per iteration x the iterations needed
            lls = np.asarray(r0["trajectory"])
            hit = np.flatnonzero(lls >= target - REACH)
            fraction = (hit[0] + 1) / r0["iterations"] if hit.size else 1.0  # or all of it
            compile_s, load_s = max(first - steady, 0.0), max(warm - steady, 0.0)
            steady, first, warm = (
                steady * fraction,
                compile_s + steady * fraction,
                load_s + steady * fraction,
            )
        reached = bool(r0["loglik"] >= target - REACH) and "NaN" not in r0.get("objective", "")
        rows.append({
            "problem": problem, "method": method, "loglik": r0["loglik"], "best": target,
            "reached": reached, "seconds_with_compilation": first, "seconds_warm_cache": warm,
            "seconds": steady,
            "iterations": r0.get("iterations"), "note": r0.get("objective", r0.get("message", "")),
        })  # fmt: skip
    ours = next((r for r in rows if r["method"] == "sdessm" and "seconds" in r), None)
    for r in rows:
        if ours and "seconds" in r and r["method"] != "sdessm":
            for key in ("seconds_with_compilation", "seconds_warm_cache", "seconds"):
                r[key.replace("seconds", "ratio")] = r[key] / ours[key]
    return rows


def table(rows: list[dict]) -> str:
    """Seconds cold (compiling), with a warm cache and without compilation, then the same as
    multiples of sdessm's."""
    head = "| problem | method | log-likelihood | reached | s cold | s warm | s | "
    lines = [head + "x sdessm cold | x warm | x |", "|" + "---|" * 10]
    keys = ("ratio_with_compilation", "ratio_warm_cache", "ratio")
    for r in rows:
        if "error" in r:
            error = r["error"][:60]
            lines.append(f"| {r['problem']} | {r['method']} | error: {error} |" + " |" * 7)
            continue
        ratios = " | ".join(f"{r[k]:.2f}" if k in r else "-" for k in keys)
        lines.append(
            f"| {r['problem']} | {r['method']} | {r['loglik']:.4f} | "
            f"{'yes' if r['reached'] else 'NO'} | {r['seconds_with_compilation']:.2f} | "
            f"{r['seconds_warm_cache']:.2f} | {r['seconds']:.2f} | {ratios} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller problems, one repeat")
    parser.add_argument("--only", help="a regular expression on the problem names")
    parser.add_argument("--repeats", type=int, help="runs per method (default 3, 1 with --quick)")
    parser.add_argument("--out", help="a JSON file for the rows (default: print only)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.quick, args.cache)))
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    rows = []
    for problem, (kind, _, small) in PROBLEMS.items():
        if (args.only and not re.search(args.only, problem)) or (args.quick and small is None):
            continue
        runs = {m: [] for m in METHODS[kind]}
        for rep in range(repeats):
            order = list(METHODS[kind])
            order = order[rep % len(order) :] + order[: rep % len(order)]  # interleaved
            for method in order:
                runs[method].append(run_one(problem, method, args.quick, cpus[-1]))
                print(f"{problem} {method}: {runs[method][-1].get('loglik', 'error')}", flush=True)
        rows += summarise(problem, runs)
    print(table(rows))
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
