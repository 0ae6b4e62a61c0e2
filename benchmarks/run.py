"""sdessm side by side with dynamax, pykalman and statsmodels, same problems, same data, one run.

    python benchmarks/run.py                   # every problem (about 15 minutes on 2 cores)
    python benchmarks/run.py --quick           # a subset with fewer repeats (under 2 minutes)
    python benchmarks/run.py --only missing    # problems whose name matches a regular expression
    python benchmarks/run.py --out FILE.json   # where the results go (default below)

Operations: Kalman filter, RTS smoother, the value and gradient of the log-likelihood with respect
to all the discrete model parameters (jitted `jax.value_and_grad`, what NUTS calls), one EM
iteration (E-step + closed-form M-step), and a whole fit of 50 EM iterations including compilation
(`sdessm.fit_em` with `fixed=()`, `tol=0`, `finish="none"`, `accelerate=False`: plain EM iterations;
dynamax `fit_em(num_iters=50)`). sdessm runs with its defaults (`method="auto"`: the compiled kernel
where it is built); `sdessm-scan` is the same filter, smoother and gradient on the pure-JAX path
(`method="sequential"`).
Each (problem, library) is timed after a warm-up call (the first call, compilation included, is
reported separately): the median of a number of repeats scaled to the call time. Each problem
runs in a fresh subprocess pinned to `--cpus` cores, which reports the peak resident memory of
each library's calls (VmHWM, reset before each library). A peer that cannot take the problem as
it is (dynamax and pykalman with NaN, an SDE fit on irregular steps) runs on the complete /
uniform-step version of the same data, and its ratio is marked `*`. Skipped, with the reason in
the table: libraries that are not installed, pure-Python calls estimated to take more than
`--slow-limit` seconds (pykalman on long series), calls expected to take more than 30 s (10 s
with `--quick`) or fits more than 150 s (20 s) from the same problem at a smaller T, and
libraries whose results would not fit in memory.

Correctness first: each peer's log-likelihood, filtered and smoothed means, log-likelihood
gradient, one-iteration M-step and EM log-likelihood path are compared with sdessm's on the same
data; a relative difference above 1e-6 prints a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: "sdessm-scan": sdessm's pure-JAX recursions (`method="sequential"`), in a process of its own
LIBRARIES = ("sdessm", "sdessm-scan", "dynamax", "pykalman", "statsmodels")
OPERATIONS = ("filter", "smoother", "loglik_grad", "em_iteration", "fit_em_50")
DT = 0.1
NUM_FIT_ITERS = 50
CHECK_RTOL = 1e-6
EM_FIELDS = ("A", "Sigma", "H", "u", "R", "mu1")  # updated by the one-iteration M-step; P1 fixed
GRAD_FIELDS = ("A", "Sigma", "H", "u", "R", "mu1", "P1")  # loglik_grad differentiates them all
COV_FIELDS = ("Sigma", "R", "P1")  # their gradients are compared symmetrised
PYKALMAN_MSTEP = (
    "pykalman's M-step updates H with the old offset u, then u with the new H (coordinatewise), "
    "not (H, u) jointly as sdessm and dynamax do"
)


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    d: int  # state dimension = observation dimension p
    T: int
    B: int = 1
    kind: str = "uniform"  # "uniform", "irregular", "missing" or "memory"
    quick: bool = False  # part of --quick
    quick_ops: tuple[str, ...] = OPERATIONS  # what --quick runs of it (compilation dominates)


def _e(n: int) -> str:
    return f"1e{round(math.log10(n))}"


PROBLEMS = [
    *(
        Problem(f"d{d}-T{_e(T)}", d, T, quick=(d, T) == (8, 10_000))
        for d in (2, 8, 32)
        for T in (1_000, 10_000, 100_000)
    ),
    Problem(
        "d4-B256-T1e3",
        4,
        1_000,
        B=256,
        quick=True,
        quick_ops=("filter", "smoother", "em_iteration"),
    ),
    Problem(
        "irregular-d2-T1e4",
        2,
        10_000,
        kind="irregular",
        quick=True,
        quick_ops=("filter", "smoother"),
    ),
    Problem("irregular-d8-T1e4", 8, 10_000, kind="irregular"),
    Problem("missing-d2-T1e4", 2, 10_000, kind="missing"),
    Problem(
        "missing-d8-T1e4",
        8,
        10_000,
        kind="missing",
        quick=True,
        quick_ops=("filter", "smoother", "loglik_grad"),
    ),
    Problem("memory-stats-d8-T1e6", 8, 1_000_000, kind="memory"),
]


# --------------------------------------------------------------------------- child: one problem


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


#: Peak resident bytes per d^2 T B of each library's filter and smoother (they keep T d x d
#: covariances), measured here at d = 8, 32 and T = 1e4, 1e5: a problem that would need more
#: than 60% of the available memory is skipped for that library rather than swapped or killed.
RESIDENT_BYTES = {
    "sdessm": 80,
    "sdessm-scan": 80,
    "dynamax": 80,
    "pykalman": 80,
    "statsmodels": 450,
}
#: loglik_grad by reverse mode keeps the scan's residuals: measured peak bytes per d^2 T B
#: (dynamax), per p d^2 T B (sdessm-scan conditions on one observation at a time, keeping a
#: covariance per observation; 9.6 GB at d = 32, T = 1e4); sdessm's compiled gradient: as above.
GRAD_BYTES = {"dynamax": lambda d: 130 * d**2, "sdessm-scan": lambda d: 35 * d**3}
IMPLEMENTED = {  # others: all
    "sdessm-scan": ("filter", "smoother", "loglik_grad"),  # shown blank elsewhere
    "pykalman": ("filter", "smoother", "em_iteration"),
    "statsmodels": ("filter", "smoother"),
}


def mem_available_gib() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def reset_peak() -> bool:
    """Reset the peak resident set size (VmHWM) to the current one (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    try:
        return _rss_mb("VmHWM")
    except (OSError, KeyError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_data(prob: Problem, seed: int = 0) -> dict:
    """The problem's parameters and data: a stable random F, exact discretisation, float64."""
    import jax
    import numpy as np

    import sdessm

    d = p = prob.d
    rng = np.random.default_rng([seed, d])
    M = rng.normal(size=(d, d))
    K = rng.normal(size=(d, d))
    F = -(0.2 * np.eye(d) + M @ M.T / d) + 0.5 * (K - K.T) / np.sqrt(d)  # F + F^T < 0: stable
    W = rng.normal(size=(p, p))
    sde = sdessm.SDEParams(
        F=F,
        L=0.5 * np.eye(d),
        H=rng.normal(size=(p, d)) / np.sqrt(d),
        u=rng.normal(size=p),
        R=0.1 * (np.eye(p) + W @ W.T / p),
        mu1=np.zeros(d),
        P1=np.eye(d),
    )
    init = sdessm.SDEParams(  # where EM starts (the same for every library)
        F=F - 0.2 * np.eye(d),
        L=0.6 * np.eye(d),
        H=sde.H + 0.1 * rng.normal(size=(p, d)),
        u=sde.u + 0.1,
        R=2.0 * sde.R,
        mu1=sde.mu1 + 0.1,
        P1=sde.P1,
    )
    key = jax.random.key(seed)
    times = None
    if prob.kind == "irregular":
        steps = rng.uniform(0.5 * DT, 1.5 * DT, prob.T - 1)
        times = np.concatenate([[0.0], np.cumsum(steps)])
        _, y = sdessm.simulate(key, sde, times, None if prob.B == 1 else prob.B)
        lg = sde.discretize(times)  # per-step A, Sigma: (T-1, d, d)
    else:
        _, y = sdessm.simulate(
            key, sde, dt=DT, num_timesteps=prob.T, num_sequences=None if prob.B == 1 else prob.B
        )
        lg = sde.discretize(dt=DT)
    y_complete = np.asarray(y, dtype=np.float64)
    y = y_complete
    if prob.kind in ("missing", "memory"):
        y = np.where(rng.random(y.shape) < 0.2, np.nan, y_complete)

    def as_np(params):  # no input gains here: B, D stay None
        return type(params)(*(None if v is None else np.asarray(v, np.float64) for v in params))

    return dict(
        sde=as_np(sde),
        lg=as_np(lg),
        sde_init=as_np(init),
        lg_init=as_np(init.discretize(dt=DT)),
        times=times,
        y=y,  # what sdessm gets: NaN = missing, (T, p) or (B, T, p)
        y_complete=y_complete,  # the same draw before values were removed
    )


def call_limit(quick: bool) -> float:
    """Seconds one call may be expected to take; longer ones are skipped as too slow."""
    return 10.0 if quick else 30.0


def fit_limit(quick: bool) -> float:
    """Seconds a 50-iteration fit may be expected to take."""
    return 20.0 if quick else 150.0


def _ready(out):
    import jax

    return jax.block_until_ready(out)


def measure(fn, quick: bool) -> tuple[dict, object]:
    """First call (compilation included), then the median of repeats scaled to the call time."""
    start = time.perf_counter()
    out = _ready(fn())
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = _ready(fn())
    runs = [time.perf_counter() - start]
    budget, high = (0.3, 5) if quick else (3.0, 15)
    n = min(high, math.ceil(budget / max(runs[0], 1e-9)))  # at least 1; 3 below 1 s (full)
    n = n if quick or runs[0] > 1.0 else max(n, 3)
    for _ in range(n - 1):
        start = time.perf_counter()
        _ready(fn())
        runs.append(time.perf_counter() - start)
    return {"median": statistics.median(runs), "first_call": first, "repeats": len(runs)}, out


def once(fn) -> tuple[dict, object]:
    """A single timed call (a whole fit, compilation included)."""
    start = time.perf_counter()
    out = _ready(fn())
    elapsed = time.perf_counter() - start
    return {"median": elapsed, "first_call": elapsed, "repeats": 1}, out


def grad_fields(value, grads: dict) -> dict:
    """The log-likelihood and its gradient by field, covariance gradients symmetrised (a
    library may differentiate through either triangle), as float64 NumPy arrays."""
    import numpy as np

    out = {"log-likelihood": np.asarray(value, dtype=np.float64)}
    for k, g in grads.items():
        g = np.asarray(g, dtype=np.float64)
        out[k] = 0.5 * (g + np.swapaxes(g, -1, -2)) if k in COV_FIELDS else g
    return out


def rel_diff(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


class Child:
    """Runs the operations of one problem for the libraries asked, and collects the results."""

    def __init__(
        self,
        prob: Problem,
        quick: bool,
        slow_limit: float,
        partial: str | None,
        skip: dict | None = None,
    ):
        self.prob, self.quick, self.slow_limit, self.partial = prob, quick, slow_limit, partial
        self.skip = skip or {}  # lib -> op -> seconds the parent expects a call to take
        self.ops = prob.quick_ops if quick else OPERATIONS
        self.results: dict[str, dict] = {}  # op -> lib -> {"median", "first_call", ...}
        self.notes: list[str] = []
        self.checks: list[dict] = []
        self.memory: dict[str, float] = {}
        self.ref: dict = {}  # sdessm's values, for the checks

    def output(self) -> dict:
        return dict(
            problem=dataclasses.asdict(self.prob),
            results=self.results,
            notes=self.notes,
            checks=self.checks,
            peak_rss_mb=self.memory,
        )

    def record(self, op, lib, timing=None, *, status=None, on_complete=False, **extra):
        entry = dict(timing or {}, **extra)
        if status:
            entry["status"] = status
        if on_complete:
            entry["on_complete_data"] = True
        self.results.setdefault(op, {})[lib] = entry
        if self.partial:  # what a parent that times out still gets
            Path(self.partial + ".tmp").write_text(json.dumps(self.output()))
            os.replace(self.partial + ".tmp", self.partial)

    def check(self, lib, quantity, value, ref, known: str | None = None):
        """Compare a peer's value with sdessm's; `known` explains an expected difference."""
        if ref is None:
            return
        entry = {"library": lib, "quantity": quantity, "rel_diff": rel_diff(value, ref)}
        if known:
            entry["known"] = known
        self.checks.append(entry)

    def check_grad(self, lib, got: dict):
        """Compare the value and gradient of the log-likelihood, field by field (`grad_fields`),
        with sdessm's: one check, the largest relative difference, naming its field."""
        ref = self.ref.get("loglik_grad")
        if ref is None:
            return
        diffs = {k: rel_diff(got[k], ref[k]) for k in ref}
        worst = max(diffs, key=lambda k: diffs[k])
        self.checks.append(
            {
                "library": lib,
                "quantity": "log-likelihood and gradient",
                "rel_diff": diffs[worst],
                "worst_field": worst,
                "by_field": diffs,
            }
        )

    def grad_too_big(self, lib: str) -> bool:
        """Skip a gradient whose reverse-mode residuals would not fit in memory."""
        prob = self.prob
        per_step = GRAD_BYTES.get(lib, lambda d: RESIDENT_BYTES[lib] * d**2)(prob.d)
        need = per_step * prob.T * prob.B / 2**30
        if need > 0.6 * mem_available_gib():
            self.record("loglik_grad", lib, status="too big", estimate_gib=need)
            return True
        return False

    def too_slow(self, lib: str, op: str) -> bool:
        """Skip a call that the parent expects, from a smaller problem, to take too long."""
        estimate = self.skip.get(lib, {}).get(op)
        if estimate is not None:
            self.record(op, lib, status="too slow", estimate=estimate)
        return estimate is not None

    def fit_too_slow(self, lib: str, iteration: dict | None) -> bool:
        """Skip a 50-iteration fit estimated (from one iteration) to take too long."""
        if self.too_slow(lib, "fit_em_50"):
            return True
        if iteration is None:  # the iteration was skipped: so is the fit
            iteration = {
                "median": self.results.get("em_iteration", {}).get(lib, {}).get("estimate", 0.0)
            }
        estimate = NUM_FIT_ITERS * iteration.get("median", 0.0)
        if estimate > fit_limit(self.quick):
            self.record("fit_em_50", lib, status="too slow", estimate=estimate)
        return estimate > fit_limit(self.quick)

    # ------------------------------------------------------------------ sdessm
    def run_sdessm(self, data):
        import jax
        import jax.numpy as jnp
        import numpy as np

        import sdessm
        from sdessm.stats import expected_stats

        prob = self.prob
        y = jnp.asarray(data["y"])
        yb = y if y.ndim == 3 else y[None]
        complete = not bool(np.isnan(data["y"]).any())
        if prob.kind == "memory":
            stats_fn = jax.jit(expected_stats, static_argnames=("complete",))
            timing, out = once(lambda: stats_fn(data["lg"], yb, complete=complete))
            self.record("expected_stats", "sdessm", timing)
            return
        self.recursions("sdessm", "auto", data)
        if "em_iteration" not in self.ops:
            return

        timing = None
        try:
            step = None
            if not self.too_slow("sdessm", "em_iteration"):
                step = self.sdessm_em_step(data, yb, complete)
            if step is not None:
                timing, out = measure(step, self.quick)
                self.record("em_iteration", "sdessm", timing)
                if prob.kind != "irregular":
                    self.ref["em_new"] = {k: np.asarray(getattr(out[0], k)) for k in EM_FIELDS}
                    self.ref["em_loglik"] = float(out[1])
        except (TypeError, ValueError, AttributeError) as err:  # the internal API moved
            self.record("em_iteration", "sdessm", status="error")
            self.notes.append(f"sdessm em_iteration: internal API changed? {err!r}"[:300])

        if "fit_em_50" not in self.ops or self.fit_too_slow("sdessm", timing):
            return
        args = (
            (data["sde_init"], y, data["times"])
            if prob.kind == "irregular"
            else (data["lg_init"], y)
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                timing, out = once(
                    lambda: (
                        sdessm.fit_em(
                            *args,
                            num_iters=NUM_FIT_ITERS,
                            tol=0.0,
                            fixed=(),
                            finish="none",  # plain EM iterations, as dynamax's
                            accelerate=False,
                            progress=False,
                        ).log_likelihoods
                    )
                )
            self.record("fit_em_50", "sdessm", timing)
            if len(out) != NUM_FIT_ITERS + 1:
                self.notes.append(f"sdessm fit_em stopped after {len(out) - 1} iterations")
            elif prob.kind != "irregular":
                self.ref["fit_lls"] = np.asarray(out)
        except Exception as err:  # noqa: BLE001  a failed fit is a result, not a crash
            self.record("fit_em_50", "sdessm", status="error")
            self.notes.append(f"sdessm fit_em: {err!r}"[:300])

    def run_sdessm_scan(self, data):
        """The same filter, smoother and gradient on sdessm's pure-JAX path (`lax.scan`)."""
        if self.prob.kind != "memory":
            self.recursions("sdessm-scan", "sequential", data)

    def recursions(self, lib: str, method: str, data):
        """sdessm's filter, smoother and log-likelihood gradient with `method`: sdessm's values
        are the reference of the checks; sdessm-scan's are checked against them."""
        import jax
        import jax.numpy as jnp
        import numpy as np

        import sdessm

        lg = data["lg"]  # irregular: per-step A, Sigma, the same input every library gets
        y = jnp.asarray(data["y"])

        def loglik(lg, y):
            return jnp.sum(sdessm.log_likelihood(lg, y, method=method))

        calls = {
            "filter": lambda: sdessm.kalman_filter(lg, y, method=method),
            "smoother": lambda: sdessm.rts_smoother(lg, y, method=method),
            "loglik_grad": functools.partial(jax.jit(jax.value_and_grad(loglik)), lg, y),
        }
        for op, call in calls.items():
            if op not in self.ops or self.too_slow(lib, op):
                continue
            if op == "loglik_grad" and self.grad_too_big(lib):
                continue
            timing, out = measure(call, self.quick)
            self.record(op, lib, timing)
            if op == "filter":
                got = {
                    "loglik": float(jnp.sum(out.log_likelihood)),
                    "filtered_means": np.asarray(out.filtered_means),
                }
            elif op == "smoother":
                got = {"smoothed_means": np.asarray(out.smoothed_means)}
            else:
                value, grad = out
                got = {
                    "loglik_grad": grad_fields(value, {k: getattr(grad, k) for k in GRAD_FIELDS})
                }
            del out
            if lib == "sdessm":
                self.ref.update(got)
                continue
            for key, value in got.items():
                if key == "loglik_grad":
                    self.check_grad(lib, value)
                else:
                    quantity = "log-likelihood" if key == "loglik" else key.replace("_", " ")
                    self.check(lib, quantity, value, self.ref.get(key))

    def sdessm_em_step(self, data, yb, complete):
        """The jitted iteration `sdessm.fit_em` runs (E-step + M-step, P1 fixed), or None."""
        import jax.numpy as jnp

        import sdessm.em_problem as em_problem
        import sdessm.iteration as iteration
        from sdessm.problem import mask_flags

        fixed, prob = frozenset({"P1"}), self.prob
        if prob.kind != "irregular":
            config = (fixed, "full", False, True, *mask_flags(yb))
            return lambda: iteration.discrete_iteration(data["lg_init"], yb, config)

        def step_on(n):  # the SDE's generalized EM (numerical F, L step) on the first n steps
            reps, groups = em_problem.step_groups(yb[:, :n], data["times"][:n], None)
            config = (fixed, "full", False, 30, *mask_flags(yb))
            args = (jnp.asarray(reps), jnp.asarray(groups), config)
            return lambda: iteration.continuous_iteration(data["sde_init"], yb[:, :n], *args)

        # its cost grows with the number of distinct steps: estimate it on a prefix
        n = min(prob.T, 1_000)
        probe = step_on(n)
        _ready(probe())
        estimate = once(probe)[0]["median"] * prob.T / n
        if estimate > call_limit(self.quick):
            self.record("em_iteration", "sdessm", status="too slow", estimate=estimate)
            return None
        return step_on(prob.T)

    # ------------------------------------------------------------------ dynamax
    def run_dynamax(self, data):
        import jax
        import jax.numpy as jnp
        import numpy as np
        from dynamax.linear_gaussian_ssm import lgssm_filter, lgssm_smoother
        from dynamax.linear_gaussian_ssm.inference import make_lgssm_params

        prob = self.prob
        d = prob.d
        na = prob.kind in ("missing", "memory")  # dynamax takes no NaN
        y = jnp.asarray(data["y_complete"] if na else data["y"])
        yb = y if y.ndim == 3 else y[None]

        if prob.kind == "memory":  # the E-step of dynamax's fit_em
            model, params, props = dynamax_model(data["lg"])
            e_step = jax.jit(jax.vmap(model.e_step, in_axes=(None, 0)))
            timing, _ = once(lambda: e_step(params, yb))
            self.record("expected_stats", "dynamax", timing, on_complete=True)
            return

        lg = data["lg"]
        A, Sigma = lg.A, lg.Sigma
        if A.ndim == 3:  # dynamax reads weights[t] as the step into t: shape (T, d, d)
            A = np.concatenate([np.eye(d)[None], A])
            Sigma = np.concatenate([np.eye(d)[None], Sigma])
        params = make_lgssm_params(
            jnp.asarray(lg.mu1),
            jnp.asarray(lg.P1),
            jnp.asarray(A),
            jnp.asarray(Sigma),
            jnp.asarray(lg.H),
            jnp.asarray(lg.R),
            emissions_bias=jnp.asarray(lg.u),
        )
        batched = y.ndim == 3
        filt = jax.jit(jax.vmap(lgssm_filter, in_axes=(None, 0)) if batched else lgssm_filter)
        if not self.too_slow("dynamax", "filter"):
            timing, out = measure(lambda: filt(params, y), self.quick)
            self.record("filter", "dynamax", timing, on_complete=na)
            if not na:
                loglik = jnp.sum(out.marginal_loglik)
                self.check("dynamax", "log-likelihood", loglik, self.ref.get("loglik"))
                means = out.filtered_means
                self.check("dynamax", "filtered means", means, self.ref.get("filtered_means"))
            del out
        smooth = jax.jit(jax.vmap(lgssm_smoother, in_axes=(None, 0)) if batched else lgssm_smoother)
        if not self.too_slow("dynamax", "smoother"):
            timing, out = measure(lambda: smooth(params, y), self.quick)
            self.record("smoother", "dynamax", timing, on_complete=na)
            if not na:
                means = out.smoothed_means
                self.check("dynamax", "smoothed means", means, self.ref.get("smoothed_means"))
            del out
        grad = "loglik_grad" in self.ops and not self.too_slow("dynamax", "loglik_grad")
        if grad and not self.grad_too_big("dynamax"):

            def loglik(params, y):
                run = jax.vmap(lgssm_filter, in_axes=(None, 0)) if batched else lgssm_filter
                return jnp.sum(run(params, y).marginal_loglik)

            value_and_grad = jax.jit(jax.value_and_grad(loglik))
            timing, out = measure(lambda: value_and_grad(params, y), self.quick)
            self.record("loglik_grad", "dynamax", timing, on_complete=na)
            if not na:
                value, g = out
                skip = 1 if A.ndim == 3 else 0  # weights[0], cov[0]: unused
                grads = dict(
                    A=g.dynamics.weights[skip:],
                    Sigma=g.dynamics.cov[skip:],
                    H=g.emissions.weights,
                    u=g.emissions.bias,
                    R=g.emissions.cov,
                    mu1=g.initial.mean,
                    P1=g.initial.cov,
                )
                self.check_grad("dynamax", grad_fields(value, grads))
            del out
        if "em_iteration" not in self.ops:
            return

        # EM from the common start, time-invariant (irregular data: as if the steps were equal)
        model, params, props = dynamax_model(data["lg_init"])
        other = na or prob.kind == "irregular"

        @jax.jit
        def step(params, yb):
            stats, lls = jax.vmap(lambda e: model.e_step(params, e))(yb)
            new, _ = model.m_step(params, props, stats, None)
            return new, lls.sum()

        timing = out = None
        if not self.too_slow("dynamax", "em_iteration"):
            timing, out = measure(lambda: step(params, yb), self.quick)
            self.record("em_iteration", "dynamax", timing, on_complete=other)
        if out is not None and not other and "em_new" in self.ref:
            new = out[0]
            got = dict(
                A=new.dynamics.weights,
                Sigma=new.dynamics.cov,
                H=new.emissions.weights,
                u=new.emissions.bias,
                R=new.emissions.cov,
                mu1=new.initial.mean,
            )
            self.check("dynamax", "EM log-likelihood", out[1], self.ref["em_loglik"])
            for k in EM_FIELDS:
                self.check("dynamax", f"EM new {k}", got[k], self.ref["em_new"][k])
        if "fit_em_50" not in self.ops or self.fit_too_slow("dynamax", timing):
            return
        timing, (fitted, lps) = once(
            lambda: model.fit_em(params, props, y, num_iters=NUM_FIT_ITERS, verbose=False)
        )
        self.record("fit_em_50", "dynamax", timing, on_complete=other)
        lps, P1 = np.asarray(lps), np.asarray(fitted.initial.cov)
        finite = np.isfinite(lps)
        ok = finite.all() and np.isfinite(P1).all()
        ok = ok and np.linalg.eigvalsh(0.5 * (P1 + P1.T)).min() > 0
        last = NUM_FIT_ITERS - 1
        if not ok:
            first_bad = int(np.argmin(finite)) if not finite.all() else NUM_FIT_ITERS
            self.results["fit_em_50"]["dynamax"]["nan_at"] = first_bad
            self.notes.append(
                f"dynamax fit_em: log-likelihood NaN from iteration {first_bad} (its initial "
                f"covariance update, B = {prob.B}, turns indefinite)"
                if first_bad < NUM_FIT_ITERS
                else "dynamax fit_em: the fitted initial covariance is not positive definite"
            )
            last = first_bad - 1
        fit_lls = self.ref.get("fit_lls")
        if other or fit_lls is None or last < 0:
            return
        # the same EM from the same start (sdessm with fixed=()): the same log-likelihoods
        first = min(10, last + 1)
        self.check("dynamax", f"fit log-likelihoods 0-{first - 1}", lps[:first], fit_lls[:first])
        diffs = np.abs(lps[: last + 1] - fit_lls[: last + 1]) / np.abs(fit_lls[: last + 1])
        if (diffs > CHECK_RTOL).any():
            k = int(np.argmax(diffs > CHECK_RTOL))
            agree = f"{diffs[:k].max():.0e}" if k else "-"
            self.notes.append(
                f"dynamax fit_em: log-likelihoods equal sdessm's (fixed=()) to {agree} through "
                f"iteration {k - 1}, then drift ({diffs[last]:.0e} at iteration {last}) as its "
                "initial covariance loses precision"
            )

    # ------------------------------------------------------------------ pykalman
    def run_pykalman(self, data):
        import numpy as np
        from pykalman import KalmanFilter

        prob = self.prob
        if prob.kind == "memory":
            return
        d = prob.d
        na = prob.kind == "missing"  # pykalman drops a whole row if any entry is masked
        y = data["y_complete"] if na else data["y"]
        seqs = [y] if y.ndim == 2 else list(y)

        def kf_of(lg, n=None):  # n: the first n steps only
            A, Sigma = lg.A, lg.Sigma
            if n is not None and A.ndim == 3:
                A, Sigma = A[: n - 1], Sigma[: n - 1]
            return KalmanFilter(
                transition_matrices=A,
                observation_matrices=lg.H,
                transition_covariance=Sigma,
                observation_covariance=lg.R,
                transition_offsets=np.zeros(d),
                observation_offsets=lg.u,
                initial_state_mean=lg.mu1,
                initial_state_covariance=lg.P1,
            )

        em_vars = [
            "transition_matrices",
            "observation_matrices",
            "transition_covariance",
            "observation_covariance",
            "observation_offsets",
            "initial_state_mean",
        ]
        calls = {
            "filter": (lambda kf, s: kf.filter(s), data["lg"], na),
            "smoother": (lambda kf, s: kf.smooth(s), data["lg"], na),
            "em_iteration": (
                lambda kf, s: kf.em(s, n_iter=1, em_vars=em_vars),
                data["lg_init"],
                na or prob.kind == "irregular",
            ),
        }
        for op in self.ops:
            if op not in IMPLEMENTED["pykalman"]:
                self.record(op, "pykalman", status="n/a")
                continue
            call, lg, other = calls[op]
            if self.too_slow("pykalman", op):
                continue
            if op == "em_iteration" and prob.B > 1:
                self.record(op, "pykalman", status="n/a (B>1)")
                continue
            # pykalman is a Python loop over time: estimate one call from the first steps
            n = min(prob.T, 500)
            start = time.perf_counter()
            call(kf_of(lg, n), seqs[0][:n])
            estimate = (time.perf_counter() - start) * prob.T / n * len(seqs)
            if estimate > self.slow_limit:
                self.record(op, "pykalman", status="too slow", on_complete=other, estimate=estimate)
                continue
            fresh = op == "em_iteration"  # em() changes its filter: a fresh one each call
            kf = kf_of(lg)

            def fn(call=call, lg=lg, kf=kf, fresh=fresh):
                return [call(kf_of(lg) if fresh else kf, s) for s in seqs]

            timing, out = measure(fn, self.quick)
            self.record(op, "pykalman", timing, on_complete=other)
            if other:
                continue
            key = "filtered_means" if op == "filter" else "smoothed_means"
            if op in ("filter", "smoother") and key in self.ref:
                means = np.stack([o[0] for o in out]).reshape(self.ref[key].shape)
                self.check("pykalman", key.replace("_", " "), means, self.ref[key])
            elif op == "em_iteration" and "em_new" in self.ref:
                new = out[0]
                got = dict(
                    A=new.transition_matrices,
                    Sigma=new.transition_covariance,
                    H=new.observation_matrices,
                    u=new.observation_offsets,
                    R=new.observation_covariance,
                    mu1=new.initial_state_mean,
                )
                for k in EM_FIELDS:
                    known = PYKALMAN_MSTEP if k in ("H", "u", "R") else None
                    self.check("pykalman", f"EM new {k}", got[k], self.ref["em_new"][k], known)

    # ------------------------------------------------------------------ statsmodels
    def run_statsmodels(self, data):
        import numpy as np
        from statsmodels.tsa.statespace.kalman_smoother import KalmanSmoother

        prob = self.prob
        if prob.kind == "memory":
            return
        d, lg, y = prob.d, data["lg"], data["y"]  # NaN = missing, as for sdessm
        A, Sigma = lg.A, lg.Sigma
        if A.ndim == 3:  # time-varying: (d, d, T), transition[..., t] maps state t to t + 1
            A = np.concatenate([A, np.eye(d)[None]]).transpose(1, 2, 0).copy()
            Sigma = np.concatenate([Sigma, np.eye(d)[None]]).transpose(1, 2, 0).copy()

        def smoother_of(seq):  # one per sequence: a re-bound one keeps filtering the old data
            ks = KalmanSmoother(k_endog=d, k_states=d, k_posdef=d)
            ks.bind(np.ascontiguousarray(seq))
            ks["design"], ks["obs_intercept"], ks["obs_cov"] = lg.H, lg.u, lg.R
            ks["transition"], ks["selection"], ks["state_cov"] = A, np.eye(d), Sigma
            ks.initialize_known(lg.mu1, lg.P1)
            ks.set_smoother_output(  # what the others compute: means, covs, lag-one covs
                smoother_state=True,
                smoother_state_cov=True,
                smoother_state_autocov=True,
                smoother_disturbance=False,
                smoother_disturbance_cov=False,
            )
            return ks

        kss = [smoother_of(s) for s in ([y] if y.ndim == 2 else y)]
        for op in self.ops:
            if op not in IMPLEMENTED["statsmodels"]:  # no analytic score: no loglik_grad
                self.record(op, "statsmodels", status="n/a")
        if not self.too_slow("statsmodels", "filter"):
            timing, _ = measure(lambda: [ks.filter() for ks in kss], self.quick)
            self.record("filter", "statsmodels", timing)
        if self.too_slow("statsmodels", "smoother"):
            return
        timing, _ = measure(lambda: [ks.smooth() for ks in kss], self.quick)
        self.record("smoother", "statsmodels", timing)
        # the checks, outside the timing (results share the filter's buffers: read each now)
        ll, filtered, smoothed = 0.0, [], []
        for ks in kss:
            res = ks.smooth()
            ll += float(res.llf_obs.sum())
            filtered.append(np.array(res.filtered_state.T))
            smoothed.append(np.array(res.smoothed_state.T))
        self.check("statsmodels", "log-likelihood", ll, self.ref.get("loglik"))
        for key, got in (("filtered_means", filtered), ("smoothed_means", smoothed)):
            if key in self.ref:
                got = np.stack(got).reshape(self.ref[key].shape)
                self.check("statsmodels", key.replace("_", " "), got, self.ref[key])


def dynamax_model(lg):
    """dynamax's LG-SSM with the parameters `lg` (no dynamics bias, an emission bias)."""
    from dynamax.linear_gaussian_ssm import LinearGaussianSSM

    model = LinearGaussianSSM(
        lg.state_dim, lg.obs_dim, has_dynamics_bias=False, has_emissions_bias=True
    )
    params, props = model.initialize(
        initial_mean=lg.mu1,
        initial_covariance=lg.P1,
        dynamics_weights=lg.A,
        dynamics_covariance=lg.Sigma,
        emission_weights=lg.H,
        emission_bias=lg.u,
        emission_covariance=lg.R,
    )
    return model, params, props


def child_main(
    name: str, libs: list[str], quick: bool, slow_limit: float, partial: str | None, skip: dict
) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    prob = next(p for p in PROBLEMS if p.name == name)
    child = Child(prob, quick, slow_limit, partial, skip)
    reset_peak()
    start = time.perf_counter()
    data = make_data(prob)
    child.memory["data"] = peak_mb()
    data_seconds = time.perf_counter() - start
    for lib in libs:
        gc.collect()
        try:
            __import__(lib.removesuffix("-scan"))
        except ImportError as err:
            child.notes.append(f"{lib} not installed ({err}); pip install -e '.[bench]'")
            continue
        need = RESIDENT_BYTES[lib] * prob.d**2 * prob.T * prob.B / 2**30
        if prob.kind != "memory" and need > 0.6 * mem_available_gib():
            for op in child.ops:
                if op in IMPLEMENTED.get(lib, OPERATIONS):
                    child.record(op, lib, status="too big", estimate_gib=need)
                elif lib != "sdessm-scan":
                    child.record(op, lib, status="n/a")
            child.notes.append(f"{lib}: skipped, its results would need about {need:.0f} GiB")
            continue
        reset_peak()
        try:
            getattr(child, "run_" + lib.replace("-", "_"))(data)
        except Exception as err:  # noqa: BLE001  one library's failure is a result
            child.notes.append(f"{lib}: {type(err).__name__}: {err}"[:400])
        child.memory[lib] = peak_mb()
    return dict(child.output(), data_seconds=data_seconds)


# --------------------------------------------------------------------------- parent: the table


def machine_info() -> dict:
    from importlib import metadata

    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_start": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 minutes
    }
    try:
        with open("/proc/cpuinfo") as fh:
            models = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        info["cpu"] = models[0] if models else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    versions = {}
    for pkg in ("sdessm", "jax", "jaxlib", "numpy", "dynamax", "pykalman", "statsmodels"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    info["versions"] = versions
    try:  # whether sdessm's default path (`method="auto"`) runs its compiled kernel
        import sdessm.compiled

        reason = sdessm.compiled.why_unavailable()
        info["sdessm_compiled"] = {"available": reason is None, "why_unavailable": reason}
    except Exception as err:  # noqa: BLE001  an sdessm without the module, or one that fails
        info["sdessm_compiled"] = {"available": False, "why_unavailable": repr(err)[:300]}
    try:  # the sdessm source measured: commit, and whether the working tree differs from it
        git = ["git", "-C", str(HERE)]
        commit = subprocess.run(
            git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            git + ["status", "--porcelain", "--", ":(top)src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["sdessm_commit"] = commit + (" + uncommitted changes in src/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        info["sdessm_commit"] = None
    return info


def fmt_seconds(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.2f}"
    if x >= 1e-3:
        return f"{x:.4f}"
    return f"{x:.1e}"


def cell(entry: dict | None) -> str:
    if entry is None:
        return ""
    if "median" in entry:
        return fmt_seconds(entry["median"])
    return entry.get("status", "")


def ratio_cell(ours: dict | None, theirs: dict | None) -> str:
    if not ours or not theirs or "median" not in ours or "median" not in theirs:
        return ""
    mark = ("*" if theirs.get("on_complete_data") else "") + ("†" if "nan_at" in theirs else "")
    ratio = theirs["median"] / ours["median"]
    return f"{ratio:.1f}{mark}" if ratio >= 0.1 else f"{ratio:.2g}{mark}"


HEADER = [
    "problem",
    "operation",
    "sdessm s",
    "sdessm 1st",
    "sdessm-scan s",
    "ratio",
    "dynamax s",
    "ratio",
    "dynamax 1st",
    "pykalman s",
    "ratio",
    "statsmodels s",
    "ratio",
]
WIDTHS = [20, 14, 9, 10, 13, 7, 9, 7, 11, 10, 7, 13, 7]


def row(cells) -> str:
    return "| " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, WIDTHS, strict=True)) + " |"


def table_rows(res: dict) -> list[str]:
    def first(e: dict | None) -> str:
        return (
            fmt_seconds(e["first_call"])
            if e and e.get("repeats", 1) > 0 and ("first_call" in e) and op != "fit_em_50"
            else ""
        )

    lines = []
    results = res.get("results", {})
    order = {op: i for i, op in enumerate(OPERATIONS)}
    for op in sorted(results, key=lambda op: order.get(op, len(order))):
        s, scan, dx, pk, sm = (results[op].get(lib) for lib in LIBRARIES)
        lines.append(
            row(
                [
                    res["problem"]["name"],
                    op,
                    cell(s),
                    first(s),
                    cell(scan),
                    ratio_cell(s, scan),
                    cell(dx),
                    ratio_cell(s, dx),
                    first(dx),
                    cell(pk),
                    ratio_cell(s, pk),
                    cell(sm),
                    ratio_cell(s, sm),
                ]
            )
        )
    return lines


def memory_rows(results: list[dict]) -> list[str]:
    head = ["problem", "data MB", *(f"{lib} MB" for lib in LIBRARIES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        mem = res.get("peak_rss_mb", {})
        vals = [f"{mem[k]:.0f}" if k in mem else "" for k in ("data", *LIBRARIES)]
        lines.append("| " + " | ".join([res["problem"]["name"], *vals]) + " |")
    return lines


def expected_skips(prob: Problem, done: list[dict], quick: bool) -> dict:
    """Calls expected to exceed the limits: times on the same kind of problem at a smaller T,
    scaled linearly in T (the closest T counts)."""
    skip: dict[str, dict[str, float]] = {}
    for res in sorted(done, key=lambda r: r["problem"]["T"]):
        q = res["problem"]
        if (q["d"], q["B"], q["kind"]) != (prob.d, prob.B, prob.kind) or q["T"] >= prob.T:
            continue
        for op, by_lib in res.get("results", {}).items():
            limit = fit_limit(quick) if op == "fit_em_50" else call_limit(quick)
            for lib, entry in by_lib.items():
                seconds = entry.get("median", entry.get("estimate"))
                if seconds is None:
                    continue
                estimate = seconds * prob.T / q["T"]
                if estimate > limit:
                    skip.setdefault(lib, {})[op] = estimate
                else:
                    skip.get(lib, {}).pop(op, None)
    return skip


def run_problem(prob: Problem, libs: list[str], args, skip: dict | None = None) -> dict:
    """Run one problem in a fresh interpreter; its results, or what it finished before failing."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        partial = os.path.join(tmp, "partial.json")
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            prob.name,
            "--libs",
            ",".join(libs),
            "--slow-limit",
            str(args.slow_limit),
            "--partial",
            partial,
            "--skip",
            json.dumps(skip or {}),
        ]
        if args.quick:
            cmd.append("--quick")
        env, pin = dict(os.environ), None
        if args.cpus:  # pin the child, and size the thread pools of numpy's BLAS to match
            cpus = set(sorted(os.sched_getaffinity(0))[-args.cpus :])
            env.update({k: str(len(cpus)) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
            pin = lambda: os.sched_setaffinity(0, cpus)  # noqa: E731
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=args.timeout, env=env, preexec_fn=pin
            )
            failure = None
        except subprocess.TimeoutExpired:
            proc, failure = None, f"timed out after {args.timeout:.0f} s (--timeout)"
        wall = time.perf_counter() - start
        if proc is not None:
            for line in reversed(proc.stdout.splitlines()):
                if line.startswith("RESULT "):
                    return dict(json.loads(line[len("RESULT ") :]), wall_seconds=wall)
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            failure = f"failed (exit {proc.returncode}): " + " / ".join(tail)
        res = {"problem": dataclasses.asdict(prob)}
        if os.path.exists(partial):
            res = json.loads(Path(partial).read_text())
        res.setdefault("notes", []).append(f"{'+'.join(libs)}: {failure}"[:500])
        return dict(res, wall_seconds=wall)


def merge(parts: list[dict]) -> dict:
    out = dict(parts[0], results={}, peak_rss_mb={}, notes=[], checks=[])
    for part in parts:
        for op, by_lib in part.get("results", {}).items():
            out["results"].setdefault(op, {}).update(by_lib)
        out["peak_rss_mb"].update(part.get("peak_rss_mb", {}))
        out["notes"] += part.get("notes", [])
        out["checks"] += part.get("checks", [])
    out["wall_seconds"] = sum(p.get("wall_seconds", 0.0) for p in parts)
    return out


def report_checks(results: list[dict]) -> list[str]:
    worst, known = {}, {}
    for res in results:
        for c in res.get("checks", []):
            key = (c["library"], c["quantity"])
            worst[key] = max(worst.get(key, 0.0), c["rel_diff"])
            if "known" in c:
                known[key] = c["known"]
    if not worst:
        return []
    lines = [
        "correctness: largest relative difference from sdessm on the same data and "
        "parameters (max |a - b| / max(1, max |b|)):"
    ]
    for (lib, q), diff in sorted(worst.items()):
        flag = ""
        if diff > CHECK_RTOL:
            flag = "   (expected, see below)" if (lib, q) in known else "   <-- WARNING"
        lines.append(f"  {lib:12s} {q:34s} {diff:.1e}{flag}")
    lines += [f"  expected: {reason}" for reason in sorted(set(known.values()))]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="problems: " + ", ".join(p.name for p in PROBLEMS),
    )
    parser.add_argument(
        "--quick", action="store_true", help="a subset, fewer repeats (under 2 minutes on 2 cores)"
    )
    parser.add_argument(
        "--only", metavar="PATTERN", help="the problems whose name matches this regular expression"
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="results as JSON (default benchmarks/results.json, "
        "benchmarks/results-quick.json with --quick)",
    )
    parser.add_argument(
        "--slow-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="skip a pure-Python call estimated to take longer (default 10; 2 with --quick)",
    )
    parser.add_argument(
        "--timeout", type=float, default=900, metavar="SECONDS", help="per problem (default 900)"
    )
    parser.add_argument(
        "--cpus",
        type=int,
        default=1,
        metavar="N",
        help="run each problem on N cores (default 1: the recursions are sequential, and on a "
        "busy machine XLA's thread pool otherwise dominates small-matrix timings); 0: all",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--libs", default=",".join(LIBRARIES), help=argparse.SUPPRESS)
    parser.add_argument("--partial", help=argparse.SUPPRESS)
    parser.add_argument("--skip", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.slow_limit is None:
        args.slow_limit = 2.0 if args.quick else 10.0
    if args.child:
        res = child_main(
            args.child,
            args.libs.split(","),
            args.quick,
            args.slow_limit,
            args.partial,
            json.loads(args.skip),
        )
        print("RESULT " + json.dumps(res))
        return

    problems = [p for p in PROBLEMS if p.quick or not args.quick]
    if args.only:
        problems = [p for p in problems if re.search(args.only, p.name)]
    if not problems:
        parser.error(f"no problem matches {args.only!r}; choose from {[p.name for p in PROBLEMS]}")
    out = (
        Path(args.out)
        if args.out
        else HERE / ("results-quick.json" if args.quick else "results.json")
    )
    info = dict(machine_info(), cpus_per_problem=args.cpus or None)
    v = info["versions"]
    print(
        f"{info['date']}  {info['cpu']}, {info['cpu_count']} CPUs (each problem pinned to "
        f"{args.cpus or 'all'}), load average {info['load_start']}"
    )
    print("  ".join(f"{k} {v[k]}" for k in v if v[k]) + ("  (--quick)" if args.quick else ""))
    kernel = info["sdessm_compiled"]
    print(
        "sdessm's compiled kernel: "
        + ("used" if kernel["available"] else f"NOT used ({kernel['why_unavailable']})")
    )
    print(
        "seconds: median per call after a warm-up call; 1st: the first call, with compilation;\n"
        "ratio: peer / sdessm (> 1: sdessm faster); sdessm-scan: sdessm's pure-JAX path\n"
        '(method="sequential"), its ratio = what the compiled kernel gains;\n'
        "* peer on the complete / uniform-step data;\n"
        "† peer's fit went NaN (see notes); fit_em_50: one call, compilation included\n"
    )
    print(row(HEADER))
    print("|" + "|".join("-" * (w + 2) for w in WIDTHS) + "|")
    start = time.perf_counter()
    results = []
    for prob in problems:
        if prob.kind == "memory":  # one process per library: the peak of each alone
            res = merge([run_problem(prob, [lib], args) for lib in ("sdessm", "dynamax")])
        else:
            res = run_problem(
                prob, list(LIBRARIES), args, expected_skips(prob, results, args.quick)
            )
        results.append(res)
        for line in table_rows(res):
            print(line, flush=True)
        for note in res.get("notes", []):
            print(f"  note ({prob.name}): {note}", flush=True)
        for c in res.get("checks", []):
            if not c["rel_diff"] <= CHECK_RTOL and "known" not in c:
                print(
                    f"  WARNING ({prob.name}): {c['library']} {c['quantity']} differs from "
                    f"sdessm by {c['rel_diff']:.2e} (relative)",
                    flush=True,
                )
    wall = time.perf_counter() - start
    info["load_end"] = [round(x, 2) for x in os.getloadavg()]
    print(
        "\npeak resident memory (MB): after making the data, then the peak during each "
        "library's calls\n"
    )
    print("\n".join(memory_rows(results)))
    print("\n" + "\n".join(report_checks(results)))
    print(
        f"\nwall time {wall:.0f} s (load average at the end {info['load_end']}); results in {out}"
    )
    payload = {"machine": info, "quick": args.quick, "wall_seconds": wall, "problems": results}
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out)


if __name__ == "__main__":
    main()
