"""NUTS with and without the compiled kernels: the zoo's damped oscillator, T = 1000 steps of
0.1, 20% of the values missing, 1 chain of 500 warm-up and 500 draws. Each setting runs in its
own process (`SDESSM_COMPILED` is read once per process), pinned to one core; prints the wall
time (compilation included), the effective sample size per second, and the posterior means,
which must agree up to Monte Carlo error.

    python benchmarks/nuts_kernel.py
"""

import json
import os
import subprocess
import sys


def run_one() -> None:
    import time

    import arviz as az
    import numpy as np

    import sdessm
    from sdessm import models
    from sdessm.runs import simulate_model

    module = models.load("damped_oscillator")
    truth = {"omega": 2.0, "zeta": 0.1, "sigma": 0.6, "noise": 0.15}
    times, _, y, _ = simulate_model(module, truth, n=1000, dt=0.1, missing=0.2, seed=0)
    start = time.perf_counter()
    idata = sdessm.fit_nuts(
        module.model, y, times, num_warmup=500, num_samples=500, num_chains=1, progress=False
    )
    seconds = time.perf_counter() - start
    summary = az.summary(idata, var_names=list(truth), kind="all")
    ess = float(np.min(summary["ess_bulk"]))
    print(json.dumps({
        "compiled": sdessm.compiled.available(),
        "seconds": seconds,
        "min_ess_bulk": ess,
        "ess_per_second": ess / seconds,
        "means": {k: float(summary.loc[k, "mean"]) for k in truth},
    }))  # fmt: skip


def main() -> None:
    results = {}
    for label, setting in (("scan", "off"), ("compiled", "on")):
        env = dict(os.environ, SDESSM_COMPILED=setting)
        command = ["taskset", "-c", "0", sys.executable, __file__, "--one"]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[label]
        print(f"{label:9s} kernel={r['compiled']!s:5s} {r['seconds']:7.1f} s  "
              f"min ESS {r['min_ess_bulk']:6.0f}  {r['ess_per_second']:6.1f} ESS/s  "
              f"means {r['means']}")  # fmt: skip
    ratio = results["scan"]["seconds"] / results["compiled"]["seconds"]
    print(f"wall time, scan / compiled: {ratio:.1f}x")


if __name__ == "__main__":
    run_one() if "--one" in sys.argv else main()
