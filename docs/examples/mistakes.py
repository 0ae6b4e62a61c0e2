"""Model files that sdessm refuses, one mistake each, for the page "Write your own model".

Each `model_*` function below is the indoor-CO2 model of `exponential_decay.py` with one
mistake; `tests/test_docs.py` checks that each raises the error the page shows.
"""

from pathlib import Path

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from sdessm.models import load

from sdessm.ppl import LTISDE

to_sde = load(Path(__file__).with_name("exponential_decay.py")).to_sde


def priors():
    """The five parameter sites of the CO2 model."""
    tau = numpyro.sample("tau", dist.LogNormal(jnp.log(60.0), 1.0))
    outdoor = numpyro.sample("outdoor", dist.Normal(420.0, 50.0))
    excess0 = numpyro.sample("excess0", dist.HalfNormal(1000.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))
    noise = numpyro.sample("noise", dist.HalfNormal(30.0))
    return tau, outdoor, excess0, sigma, noise


# --8<-- [start:no_ltisde]
def model_no_ltisde(times, y=None):
    tau, outdoor, excess0, sigma, noise = priors()
    curve = outdoor + excess0 * jnp.exp(-(times - times[0]) / tau)  # the deterministic decay
    numpyro.sample("y", dist.Normal(curve[:, None], noise), obs=y)  # not an LTISDE
    # --8<-- [end:no_ltisde]


# --8<-- [start:unobserved]
def model_unobserved(times, y=None):
    numpyro.sample("y", LTISDE(*to_sde(*priors()), times=times))  # obs=y forgotten
    # --8<-- [end:unobserved]


# --8<-- [start:discrete]
def model_discrete(times, y=None):
    tau, outdoor, excess0, sigma, noise = priors()
    people = numpyro.sample("people", dist.Poisson(3.0))  # a count: a discrete site
    excess = excess0 + 40.0 * people
    numpyro.sample("y", LTISDE(*to_sde(tau, outdoor, excess, sigma, noise), times=times), obs=y)
    # --8<-- [end:discrete]


# --8<-- [start:clash]
def model_clash(times, y=None):
    tau, outdoor, excess0, sigma, _ = priors()
    noise = numpyro.sample("sigma", dist.HalfNormal(30.0))  # "sigma" is taken
    numpyro.sample("y", LTISDE(*to_sde(tau, outdoor, excess0, sigma, noise), times=times), obs=y)
    # --8<-- [end:clash]


# --8<-- [start:signature]
def model_signature(t, data=None):  # sdessm calls model(times, y=...)
    numpyro.sample("y", LTISDE(*to_sde(*priors()), times=t), obs=data)
    # --8<-- [end:signature]


# --8<-- [start:scalar_u]
def model_scalar_u(times, y=None):
    tau, outdoor, excess0, sigma, noise = priors()
    params = to_sde(tau, outdoor, excess0, sigma, noise)._replace(u=outdoor)  # u must be (p,)
    numpyro.sample("y", LTISDE(*params, times=times), obs=y)
    # --8<-- [end:scalar_u]
