"""Simulate the indoor-CO2 model, then fit it by EM (run from the repository root)."""

import jax
import numpy as np
from sdessm.models import load

import sdessm

jax.config.update("jax_enable_x64", True)

co2 = load("docs/examples/exponential_decay.py")  # a path: your own file loads the same way

# 150 readings, one every 2 minutes, simulated at the file's TRUE_PARAMS
truth = co2.TRUE_PARAMS
times = 2.0 * np.arange(150)  # minutes
_, y = sdessm.simulate(jax.random.key(0), co2.to_sde(**truth), times)
y = np.asarray(y)  # (150, 1): one column, in ppm

# maximum likelihood, started at the medians of the priors; `params` is a dict of site values
em = sdessm.fit_em(co2.model, y, times, num_iters=200, progress=False)
se = em.standard_errors()  # from the observed information, same keys
print(f"{em.num_iters} iterations, converged: {em.converged}, log-lik. {em.log_likelihood:.2f}")
for name, value in em.params.items():
    print(f"{name:8s} truth {truth[name]:6.1f}   EM {float(value):6.1f} +- {float(se[name]):.1f}")
